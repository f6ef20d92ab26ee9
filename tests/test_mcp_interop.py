"""Interoperability: the official MCP TypeScript SDK's client (npm @modelcontextprotocol/sdk), a
client other than our own SDK's, against a live server. It speaks the handshake revisions
(2025-11-25), so this also proves the server still answers clients of the previous revision.

The pinned package is installed by the test itself (`npm ci --prefix tests/interop`); skipped,
with the reason, where node or npm is missing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, MakeTenant, TenantKeys, bearer

INTEROP = Path(__file__).parent / "interop"
SDK = INTEROP / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"


@pytest.fixture(scope="module")
def typescript_sdk() -> Path:
    """The pinned SDK (tests/interop/package-lock.json), installed with npm on first use; skipped,
    with the reason, where node or npm is missing or the npm registry cannot be reached."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the TypeScript client cannot run here")
    if not SDK.is_file():
        installed = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(INTEROP)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0 or not SDK.is_file():
            last = (installed.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm ci --prefix {INTEROP} failed: {last}")
    return SDK


async def test_typescript_sdk_client(
    live_server: LiveServer, make_tenant: MakeTenant, typescript_sdk: Path
) -> None:
    tenant: TenantKeys = await make_tenant("mcp")
    async with httpx.AsyncClient(base_url=live_server.url) as rest:
        made = await rest.post(
            "/api/v1/collections", json={"name": "ts", "dimension": 3}, headers=bearer(tenant.admin)
        )
        assert made.status_code == 201, made.text
        node = await asyncio.create_subprocess_exec(
            "node",
            str(INTEROP / "client.mjs"),
            f"{live_server.url}/mcp",
            tenant.key("mcp"),
            "ts",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(node.communicate(), timeout=60)
        assert node.returncode == 0, stderr.decode()
        out = json.loads(stdout)

        assert out["server"]["name"] == "vectorhive"
        assert out["protocolVersion"] == "2025-11-25"
        tools = {t["name"]: t["annotations"] for t in out["tools"]}
        assert set(tools) == {
            "list_collections",
            "describe_collection",
            "search",
            "get_documents",
            "answer",
            "context",
            "upsert_vectors",
            "delete",
            "add_documents",
        }
        assert tools["search"]["readOnlyHint"] is True and tools["delete"]["destructiveHint"] is True

        assert out["upsert"]["structuredContent"] == {"upserted": 2} and not out["upsert"].get("isError")
        hits = out["search"]["structuredContent"]["results"]
        assert [(h["id"], h["metadata"]) for h in hits] == [("ts-1", {"from": "typescript"})]
        assert out["dryRun"]["structuredContent"] == {"dry_run": True, "matched": 1, "deleted": 0}
        assert [c["name"] for c in out["listed"]["structuredContent"]["items"]] == ["ts"]
        assert out["described"]["structuredContent"]["vector_count"] == 2
        assert out["missing"]["isError"] is True
        problem = json.loads(out["missing"]["content"][0]["text"])
        assert problem["code"] == "not_found" and problem["detail"] == "Collection 'no-such' does not exist."

        # What the TypeScript client wrote is there for REST, and the dry run deleted nothing.
        page = await rest.get("/api/v1/collections/ts/vectors", headers=bearer(tenant.admin))
        assert [v["id"] for v in page.json()["items"]] == ["ts-1", "ts-2"]
