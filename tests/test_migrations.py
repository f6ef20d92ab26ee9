"""Alembic revisions on a real, empty database: up, down, up again, and two replicas at once."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from alembic import command

from service.db.migrate import alembic_config, head_revision, upgrade_to_head


@pytest.fixture
async def empty_database(pg_url: str) -> AsyncIterator[str]:
    name = f"migr_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.replace("/postgres?", f"/{name}?")
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    await asyncio.to_thread(upgrade_to_head, url)
    assert {"tenants", "api_keys", "alembic_version"} <= await tables(url)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)
    finally:
        await conn.close()

    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert await tables(url) == {"alembic_version"}
    await asyncio.to_thread(upgrade_to_head, url)
    assert {"tenants", "api_keys"} <= await tables(url)


async def test_replicas_migrating_at_once_are_serialised(empty_database: str, tmp_path: Path) -> None:
    """Three replicas starting at once: the advisory lock makes the later ones find nothing to do."""
    env = {**os.environ, "VECTORHIVE_DATABASE__URL": empty_database}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "migrate",
            cwd=tmp_path,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=120)
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()
        assert f"database at revision {head_revision()}" in stderr.decode()
    assert {"tenants", "api_keys"} <= await tables(empty_database)


async def test_without_startup_migrations_a_replica_waits_for_the_schema(empty_database: str) -> None:
    """database.migrate_on_startup: false (the Helm chart's migration Job migrates): a replica neither
    migrates nor serves an old schema; it waits for the revision, and says what to run if it never comes."""
    from service.config import DatabaseSettings
    from service.db import Database

    impatient = Database(
        DatabaseSettings(
            url=empty_database, migrate_on_startup=False, migrations_wait_seconds=0, pool_min_size=1
        )
    )
    with pytest.raises(RuntimeError, match=r"revision none, this version needs .*vectorhive migrate"):
        await impatient.start()
    assert await tables(empty_database) == set()  # it did not migrate

    patient = Database(
        DatabaseSettings(
            url=empty_database, migrate_on_startup=False, migrations_wait_seconds=60, pool_min_size=1
        )
    )
    starting = asyncio.create_task(patient.start())
    await asyncio.sleep(1)
    assert not starting.done()  # still waiting
    await asyncio.to_thread(upgrade_to_head, empty_database)  # the migration Job
    await asyncio.wait_for(starting, timeout=30)
    try:
        assert await patient.pool.fetchval("SELECT version_num FROM alembic_version") == head_revision()
    finally:
        await patient.stop()
