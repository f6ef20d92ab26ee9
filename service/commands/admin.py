"""The commands on the service's data, on the configured database whether or not the server runs:
`migrate`, `tenants create|list|suspend|resume`, `keys create|list|revoke`."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from service.commands.common import CliError, describe_database, json_line, run_on_database
from service.config import Settings

if TYPE_CHECKING:
    from service.db import Database

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """'30d', '12h', '90m' from now, or an ISO 8601 time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--expires: '{text}' is neither a duration like 30d/12h/90m nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def action(db: Database) -> str:
        revision: str = await db.pool.fetchval("SELECT version_num FROM alembic_version")
        return revision

    settings.database.migrate_on_startup = True
    revision = run_on_database(settings, action, create=True)
    print(f"database at revision {revision}: {describe_database(settings)}", file=sys.stderr)
    return 0


def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    from service.tenants.models import TenantStatus
    from service.tenants.service import TenantService

    async def action(db: Database) -> int:
        tenants = TenantService(db)
        if args.tenants_command == "create":
            print(json_line(await tenants.create(args.id, args.name)))
        elif args.tenants_command == "list":
            cursor = None
            while True:
                page = await tenants.list_page(cursor=cursor, limit=500)
                for tenant in page.items:
                    print(json_line(tenant))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            if cursor is None and not page.items:
                print(f"no tenants in {describe_database(settings)}", file=sys.stderr)
        elif args.tenants_command in ("suspend", "resume"):
            status = TenantStatus.SUSPENDED if args.tenants_command == "suspend" else TenantStatus.ACTIVE
            print(json_line(await tenants.set_status(args.id, status)))
        return 0

    return run_on_database(settings, action)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from service.auth.models import CreateKeyRequest
    from service.auth.principal import Permission
    from service.auth.service import KeyService

    if args.keys_command == "create":
        if args.operator == (args.tenant is not None):
            raise CliError("keys create: give either --tenant ID (with --permission) or --operator")
        if args.tenant is not None and args.permission is None:
            raise CliError("keys create --tenant: --permission admin|read_write|read_only|mcp is required")
        if args.operator and (args.permission or args.collections):
            raise CliError("keys create --operator: operator keys take no --permission or --collections")
        collections = (
            [c.strip() for c in args.collections.split(",") if c.strip()] if args.collections else None
        )
        try:
            request = msgspec.convert(
                {
                    "permission": args.permission or Permission.ADMIN.value,
                    "name": args.name or ("operator key" if args.operator else f"{args.permission} key"),
                    "collections": collections,
                    "expires_at": parse_expiry(args.expires) if args.expires else None,
                },
                CreateKeyRequest,
            )
        except msgspec.ValidationError as exc:
            raise CliError(f"keys create: {exc}") from None
    if args.keys_command == "list" and args.operator == (args.tenant is not None):
        raise CliError("keys list: give either --tenant ID or --operator")

    async def action(db: Database) -> int:
        keys = KeyService(db)
        if args.keys_command == "create":
            created = await keys.create(args.tenant, request)
            owner = f"tenant '{created.tenant_id}'" if created.tenant_id else "operators"
            print(
                f"created key {created.key_id} for {owner}"
                + (f" with permission {created.permission}" if created.permission else "")
                + "; it is shown once, below",
                file=sys.stderr,
            )
            print(created.key)
        elif args.keys_command == "list":
            cursor = None
            while True:
                page = await keys.list_page(args.tenant, cursor=cursor, limit=500)
                for key in page.items:
                    print(json_line(key))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        elif args.keys_command == "revoke":
            revoked = await keys.revoke(None, args.key_id, any_tenant=True)
            print(f"revoked key {revoked.key_id} at {revoked.revoked_at}", file=sys.stderr)
        return 0

    return run_on_database(settings, action)
