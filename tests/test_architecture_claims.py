"""docs/architecture.md keeps its word: the claims a security review relies on, read from the
document's *checked* tables and compared with the migrated database and the code.

Change the design and the document together: a table here that no longer matches what PostgreSQL
or the code says fails this test, in either direction (a table, channel or job the document does
not list fails it too)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.db import Database
from service.quota.limiter import Limiter
from tests.conftest import MakeTenant, bearer
from tests.test_documents import make_text_collection

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SERVICE = ROOT / "service"

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
TABLE_ROW_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE"}
PER_COLLECTION = re.compile(r"(vectors|documents)_\d+")
TENANT_GROUP = "vectorhive_tenant"


def doc_tables() -> dict[str, list[dict[str, str]]]:
    """Every markdown table of the document, by the name of its first column; cells without
    their backticks."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = DOC.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|( *-+ *\|)+", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().replace("`", "") for c in lines[i].strip("|").split("|")]
                rows.append(dict(zip(header, cells, strict=True)))
                i += 1
            assert header[0] not in tables, f"two tables start with the column {header[0]!r}"
            tables[header[0]] = rows
        else:
            i += 1
    return tables


TABLES = doc_tables()


def privileges(cell: str) -> set[str]:
    return set() if cell.startswith("none") else {p.strip() for p in cell.split(",")}


def documented_shared_tables() -> dict[str, dict[str, str]]:
    return {row["table"]: row for row in TABLES["table"] if not row["table"].startswith("vectors_")}


async def test_shared_tables_have_the_documented_privileges_and_row_level_security(db: Database) -> None:
    documented = documented_shared_tables()
    rows = await db.pool.fetch(
        """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"""
    )
    actual = {r["relname"]: r for r in rows if not PER_COLLECTION.fullmatch(r["relname"])}
    assert set(actual) == set(documented), "the document lists exactly the shared tables"
    for name, claim in documented.items():
        granted = {
            p
            for p in PRIVILEGES
            if await db.pool.fetchval("SELECT has_table_privilege($1, $2, $3)", TENANT_GROUP, name, p)
        }
        assert granted == privileges(claim["tenant group privileges"]), name
        rls = claim["row-level security"]
        assert rls in ("off", "enabled, not forced", "enabled, forced"), rls
        assert actual[name]["relrowsecurity"] == (rls != "off"), name
        assert actual[name]["relforcerowsecurity"] == (rls == "enabled, forced"), name
        policies = await db.pool.fetch(
            """SELECT policyname, roles::text[] AS roles, qual, with_check
               FROM pg_policies WHERE tablename = $1""",
            name,
        )
        if rls == "off":
            assert policies == [], name
            continue
        # One policy, for the tenant group, comparing the row's tenant with the transaction's.
        assert [(p["policyname"], p["roles"]) for p in policies] == [("tenant_isolation", [TENANT_GROUP])]
        for clause in (policies[0]["qual"], policies[0]["with_check"]):
            assert "tenant_id" in clause and "current_setting('app.tenant_id'" in clause, clause


async def test_a_collections_tables_have_no_tenant_column_and_belong_to_its_tenants_role_alone(
    client: AsyncTestClient[Litestar], db: Database, make_tenant: MakeTenant
) -> None:
    owner, other = await make_tenant(), await make_tenant()
    assert (
        await client.post(
            "/api/v1/collections", json={"name": "plain", "dimension": 3}, headers=bearer(owner.admin)
        )
    ).status_code == 201
    await make_text_collection(client, owner.admin, "text")
    ids = await db.pool.fetch(
        "SELECT name, id FROM collections WHERE tenant_id = $1 ORDER BY name", owner.tenant_id
    )
    tables = [f"vectors_{r['id']}" for r in ids]
    tables += [f"documents_{r['id']}" for r in ids if r["name"] == "text"]
    claim = next(row for row in TABLES["table"] if row["table"].startswith("vectors_"))
    assert privileges(claim["tenant group privileges"]) == set()
    assert claim["row-level security"] == "off"
    assert "the tenant's own role: SELECT, INSERT, UPDATE, DELETE" in claim["tenant group privileges"]
    service_login = await db.pool.fetchval("SELECT current_user")
    owner_role, other_role = db.tenant_role(owner.tenant_id), db.tenant_role(other.tenant_id)
    for table in tables:
        columns = {
            r["column_name"]
            for r in await db.pool.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
            )
        }
        assert "id" in columns and "tenant_id" not in columns, (table, columns)
        info = await db.pool.fetchrow(
            "SELECT pg_get_userbyid(relowner) AS owner, relrowsecurity FROM pg_class WHERE relname = $1",
            table,
        )
        assert info["owner"] == service_login and not info["relrowsecurity"], table
        # The ACL names the owner and the tenant's role, and nobody else (not PUBLIC, not the group).
        acl = await db.pool.fetch(
            """SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee,
                      a.privilege_type
               FROM pg_class c, aclexplode(c.relacl) a WHERE c.relname = $1""",
            table,
        )
        granted: dict[str, set[str]] = {}
        for entry in acl:
            granted.setdefault(entry["grantee"], set()).add(entry["privilege_type"])
        assert set(granted) == {service_login, owner_role}, (table, granted)
        assert granted[owner_role] == TABLE_ROW_PRIVILEGES, (table, granted)
        for role, allowed in ((owner_role, True), (other_role, False), (TENANT_GROUP, False)):
            for privilege in PRIVILEGES:
                has = await db.pool.fetchval("SELECT has_table_privilege($1, $2, $3)", role, table, privilege)
                assert has == (allowed and privilege in TABLE_ROW_PRIVILEGES), (table, role, privilege)
    # And so PostgreSQL refuses the other tenant's transactions whatever their SQL says.
    for table in tables:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with db.tenant_transaction(other.tenant_id) as conn:
                await conn.fetch(f"SELECT * FROM {table}")
        async with db.tenant_transaction(owner.tenant_id) as conn:
            await conn.fetch(f"SELECT * FROM {table}")


async def test_each_tenant_has_a_nologin_role_in_the_tenant_group(
    db: Database, make_tenant: MakeTenant
) -> None:
    text = DOC.read_text()
    assert "`vh_t_<24 hex>`" in text and "sha256 of `<database>:<tenant id>`" in text
    tenant = await make_tenant()
    database = await db.pool.fetchval("SELECT current_database()")
    role = db.tenant_role(tenant.tenant_id)
    assert role == "vh_t_" + hashlib.sha256(f"{database}:{tenant.tenant_id}".encode()).hexdigest()[:24]
    roles = {
        r["rolname"]: r["rolcanlogin"]
        for r in await db.pool.fetch(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY($1::text[])", [role, TENANT_GROUP]
        )
    }
    assert roles == {role: False, TENANT_GROUP: False}  # both exist, neither can log in
    groups = await db.pool.fetch(
        """SELECT pg_get_userbyid(roleid) AS grp FROM pg_auth_members WHERE member = (
               SELECT oid FROM pg_roles WHERE rolname = $1)""",
        role,
    )
    assert [g["grp"] for g in groups] == [TENANT_GROUP]


async def test_tenant_and_service_transactions_run_as_documented(
    db: Database, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    async with db.tenant_transaction(tenant.tenant_id) as conn:
        row = await conn.fetchrow("SELECT current_user AS role, current_setting('app.tenant_id') AS tenant")
    assert (row["role"], row["tenant"]) == (db.tenant_role(tenant.tenant_id), tenant.tenant_id)
    async with db.transaction() as service:
        row = await service.fetchrow(
            "SELECT current_user AS role, current_setting('app.tenant_id', true) AS tenant"
        )
    # The role and the tenant were transaction-local: the next transaction is the service's.
    assert row["role"] == await db.pool.fetchval("SELECT session_user")
    assert row["tenant"] in (None, "")


async def test_rate_windows_use_the_documented_strategies() -> None:
    windows = {row["window"]: row for row in TABLES["window"]}
    assert set(windows) == {"requests_per_minute", "requests_per_hour"}
    limiter = Limiter("memory://")
    try:
        assert type(limiter.minute_window).__name__ == windows["requests_per_minute"]["strategy"]
        assert type(limiter.hour_window).__name__ == windows["requests_per_hour"]["strategy"]
    finally:
        await limiter.close()
    assert windows["requests_per_minute"]["count"].startswith("exact")
    assert windows["requests_per_hour"]["count"].startswith("approximate")


def service_sources() -> str:
    return "\n".join(path.read_text() for path in sorted(SERVICE.rglob("*.py")))


async def test_notification_channels_are_the_documented_ones(db: Database) -> None:
    documented = {row["channel"] for row in TABLES["channel"]}
    in_code = set(re.findall(r'^[A-Z_]*CHANNEL = "(vectorhive_\w+)"', service_sources(), re.M))
    assert in_code == documented
    # The collections channel is a trigger's (every writer, whoever it is).
    trigger = await db.pool.fetchval(
        """SELECT p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
           WHERE t.tgname = 'collections_changed' AND t.tgrelid = 'collections'::regclass"""
    )
    assert trigger is not None and "vectorhive_collections" in trigger


def test_background_jobs_are_the_documented_ones() -> None:
    documented = {row["job"] for row in TABLES["job"]}
    started = set(re.findall(r'jobs\.start\(\s*"([a-z0-9-]+)"', service_sources()))
    assert started == documented


def test_every_path_in_the_layout_exists() -> None:
    for row in TABLES["path"]:
        for path in re.findall(r"(?:service|migrations)/[\w/.]*", row["path"]):
            assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
