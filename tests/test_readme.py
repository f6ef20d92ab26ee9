"""The README's two Quick start commands are the product's front door; .ci/run runs the second."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("vectorhive serve")
    assert commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_the_import_example_is_accepted_as_written() -> None:
    """The README's `vectorhive import s5` example parses, and its address is one the API accepts
    (0x + 40 hex digits) and owns the manifest's folder: a reader can adapt it, not debug it."""
    import shlex

    from service.cli import build_parser
    from service.imports.formats import OWNER_RE

    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) if "vectorhive import s5" in b]
    assert len(blocks) == 1
    lines = blocks[0].replace("\\\n", " ").splitlines()
    command = next(line for line in lines if line.startswith("vectorhive import s5"))
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert OWNER_RE.fullmatch(args.user), args.user
    assert args.manifest == f"home/vector-databases/{args.user}/{args.collection}/manifest.json"
    assert args.key is None and args.encryption_key is None  # the secrets come from the environment
