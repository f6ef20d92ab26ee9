"""A real HTTP HiveHub stand-in on 127.0.0.1 for tests (the contract is docs/hivehub.md).

Keys: `keys` maps a key to its validation answer (unknown keys are {"valid": false}). Quotas per
tenant. A usage sink that records every report it got (`reports`) and the idempotency keys it has
seen (`seen`), as a real hub would to drop duplicates. Outages and slow answers: `down` answers
every call with 503, `delay` sleeps before every answer, and `faults` are consumed one per call of
an endpoint ("validate", "quotas", "usage"): "500", "503", "slow:<seconds>", "drop" (the connection
is closed without an answer), "lost-ack" (the report is recorded, but the answer is a 500);
`lose_ack_for` does the same for the next usage batch that names a given tenant.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "hub-secret-for-tests"


@dataclass
class FakeHub:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    quotas: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    faults: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, auth header)
    reject_tenants: set[str] = field(default_factory=set)  # usage batches naming one of them get 422
    # The next usage batch naming this tenant is recorded but answered 500 (then it is cleared).
    lose_ack_for: str | None = None
    down: bool = False
    delay: float = 0.0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_key(
        self,
        key: str,
        tenant_id: str,
        *,
        permission: str = "admin",
        tenant_name: str | None = None,
        collections: list[str] | None = None,
        expires_at: str | None = None,
        quotas: dict[str, Any] | None = None,
    ) -> None:
        answer: dict[str, Any] = {
            "valid": True,
            "tenant_id": tenant_id,
            "tenant_name": tenant_name or f"Tenant {tenant_id}",
            "permission": permission,
            "quotas": quotas if quotas is not None else self.quotas.get(tenant_id, {}),
        }
        if collections is not None:
            answer["collections"] = collections
        if expires_at is not None:
            answer["expires_at"] = expires_at
        self.keys[key] = answer

    def calls_to(self, path_prefix: str) -> int:
        return sum(1 for _, path, _ in self.calls if path.startswith(path_prefix))

    def unique_reports(self) -> list[dict[str, Any]]:
        """What a hub that drops duplicates by idempotency key would bill."""
        by_key: dict[str, dict[str, Any]] = {}
        for report in self.reports:
            by_key.setdefault(report["idempotency_key"], report)
        return list(by_key.values())


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, without a delayed-ACK stall

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: Any = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path
            with hub.lock:
                hub.calls.append((method, path, self.headers.get("Authorization")))
            endpoint = (
                "validate"
                if path == "/api/v1/keys/validate"
                else "usage"
                if path == "/api/v1/usage"
                else "quotas"
                if path.endswith("/quotas")
                else "other"
            )
            with hub.lock:
                queue = hub.faults.get(endpoint)
                fault = queue.pop(0) if queue else None
            if hub.delay:
                time.sleep(hub.delay)
            if fault and fault.startswith("slow:"):
                time.sleep(float(fault.split(":", 1)[1]))
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if hub.down or fault in ("500", "503"):
                self._answer(int(fault or 503), {"error": "unavailable"})
                return
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                self._answer(401, {"error": "bad service credential"})
                return
            if method == "POST" and endpoint == "validate":
                key = json.loads(raw)["key"]
                self._answer(200, hub.keys.get(key, {"valid": False}))
            elif method == "GET" and endpoint == "quotas":
                tenant_id = path.split("/")[-2]
                self._answer(200, hub.quotas.get(tenant_id, {}))
            elif method == "POST" and endpoint == "usage":
                reports = json.loads(raw)["reports"]
                if any(r["tenant_id"] in hub.reject_tenants for r in reports):
                    self._answer(422, {"error": "unknown tenant in this batch"})
                    return
                with hub.lock:
                    hub.reports.extend(reports)
                    duplicates = sum(1 for r in reports if r["idempotency_key"] in hub.seen)
                    hub.seen.update(r["idempotency_key"] for r in reports)
                    if hub.lose_ack_for is not None and any(
                        r["tenant_id"] == hub.lose_ack_for for r in reports
                    ):
                        hub.lose_ack_for, fault = None, "lost-ack"
                if fault == "lost-ack":
                    self._answer(500, {"error": "recorded, but the answer is lost"})
                    return
                self._answer(200, {"accepted": len(reports) - duplicates, "duplicates": duplicates})
            elif method == "GET" and path == "/api/v1/health":
                self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": "no such endpoint"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a "drop" fault closes the connection under the handler on purpose

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-hivehub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
