"""Runs the Alembic revisions in migrations/ against a database URL."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def migrations_dir() -> Path:
    """migrations/ at the top of a checkout, or the copy a built wheel carries in the package."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(f"cannot find the migrations folder next to {package}")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["database_url"] = url
    return cfg


# Alembic's `context` is a module-level proxy, so two upgrades in one process must not overlap.
# Across processes (replicas) env.py serialises them with a PostgreSQL advisory lock.
_in_process = threading.Lock()


def upgrade_to_head(url: str) -> None:
    """Blocking (env.py runs its own event loop): call it from a worker thread inside async code."""
    with _in_process:
        command.upgrade(alembic_config(url), "head")


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    """Every revision this version's migrations folder knows, head included."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return {r.revision for r in script.walk_revisions()}
