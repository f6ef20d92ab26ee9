"""The Dockerfile cannot be built here (no base images can be pulled); it is kept in step with the
project: the Python version pyproject requires, the console script it installs, what it copies."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)


def test_base_images_are_slim_python_of_the_required_version() -> None:
    minimum = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum is not None
    assert PYPROJECT["tool"]["mypy"]["python_version"] == minimum.group(1)
    froms = instructions("FROM")
    assert len(froms) >= 2  # multi-stage
    for base in froms:
        assert base.split()[0] == f"python:{minimum.group(1)}-slim", base


def test_entrypoint_is_the_console_script_serving() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["vectorhive"] == "service.cli:main"
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["vectorhive"]
    assert json.loads(instructions("CMD")[-1]) == ["serve"]
    from service.cli import build_parser

    assert build_parser().parse_args(["serve"]).command == "serve"


def test_runs_as_non_root_with_a_healthcheck_on_a_real_route() -> None:
    user = instructions("USER")[-1]
    assert not user.startswith(("root", "0"))
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    # The chart runs as the same uid.
    values = (REPO / "helm" / "vectorhive" / "values.yaml").read_text()
    assert f"runAsUser: {user.split(':')[0]}" in values


def test_llama_cpp_builds_with_portable_flags_in_the_builder() -> None:
    builder = DOCKERFILE.split("FROM ", 2)[1]
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DLLAMA_BUILD_SERVER=OFF"):
        assert flag in builder


def test_copies_what_the_package_needs_and_dockerignore_keeps_the_rest_out() -> None:
    copied = " ".join(instructions("COPY"))
    for needed in ("pyproject.toml", "service", "migrations"):
        assert needed in copied
    # hatch's force-include takes migrations/ into the wheel: it must be in the build context.
    assert "migrations" in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    ignored = (REPO / ".dockerignore").read_text().split()
    for kept_out in (".git", ".venv", "tests", "data"):
        assert kept_out in ignored
    for kept_in in ("service", "migrations", "pyproject.toml", "README.md"):
        assert kept_in not in ignored
