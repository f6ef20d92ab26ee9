"""Run in an import decode worker by tests: what that process has loaded. Imports nothing itself."""

from __future__ import annotations

import sys

WEB_STACK = ("litestar", "asyncpg", "httpx", "sqlalchemy", "uvicorn")


def web_stack_loaded() -> list[str]:
    return sorted(name for name in WEB_STACK if name in sys.modules)
