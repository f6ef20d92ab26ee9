"""What the commands share: the error a command reports, and the database a command opens.

Commands that touch data work whether or not the server runs: on the embedded database they attach
to the running instance or start it for the duration of the command.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from service.config import Settings

if TYPE_CHECKING:
    from service.db import Database

T = TypeVar("T")


class CliError(Exception):
    """A message for the user; exit status 1."""


def json_line(value: Any) -> str:
    return msgspec.json.encode(value).decode()


_POINT_ELSEWHERE = (
    "run the command from the server's folder, or point at the right database with --config PATH, "
    "--data-dir DIR or VECTORHIVE_DATABASE__URL=postgresql://...; `vectorhive migrate` (or `serve`) "
    "creates a new one"
)


def describe_database(settings: Settings) -> str:
    """Where the data lives, for messages: the embedded folder, or the URL without its password."""
    url = settings.database.url
    if url is None:
        return f"the embedded PostgreSQL in {settings.database.data_dir}"
    return "PostgreSQL at " + re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


@asynccontextmanager
async def open_database(settings: Settings, *, create: bool) -> AsyncIterator[Database]:
    from service.db import Database

    embedded = settings.database.url is None
    if not create and embedded and not (Path(settings.database.data_dir) / "PG_VERSION").exists():
        # Commands other than serve and migrate never initialise a database: an empty one made in
        # the wrong folder would answer "no tenants" and hide the real one.
        raise CliError(
            f"there is no database at {settings.database.data_dir} (database.data_dir); {_POINT_ELSEWHERE}"
        )
    # A CLI command needs a connection or two, not the server's pool.
    db_settings = msgspec.structs.replace(
        settings.database,
        pool_min_size=1,
        pool_max_size=2,
        migrate_on_startup=settings.database.migrate_on_startup if create else False,
    )
    db = Database(db_settings)
    await db.start()
    try:
        if not create and not await db.pool.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            raise CliError(f"{describe_database(settings)} has no vectorhive tables; {_POINT_ELSEWHERE}")
        yield db
    finally:
        await db.stop()


def run_on_database(
    settings: Settings, action: Callable[[Database], Awaitable[T]], *, create: bool = False
) -> T:
    async def main() -> T:
        async with open_database(settings, create=create) as db:
            return await action(db)

    return asyncio.run(main())
