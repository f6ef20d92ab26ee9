"""A real HTTP S5 portal on 127.0.0.1 for tests: serves files by path and blobs by CID, with
faults scripted per path (404, 500, slow answers, truncated bodies, a killed connection)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class FakePortal:
    files: dict[str, bytes] = field(default_factory=dict)  # path below /s5/fs/
    blobs: dict[str, bytes] = field(default_factory=dict)  # CID -> bytes
    # path or "blob/<cid>" -> faults consumed one per request: "404", "500", "slow:<s>", "truncate"
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def serve(portal: FakePortal) -> Iterator[FakePortal]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = unquote(self.path)
            portal.requests.append(path)
            if path.startswith("/s5/fs/"):
                key, body = path.removeprefix("/s5/fs/"), portal.files.get(path.removeprefix("/s5/fs/"))
            elif path.startswith("/s5/blob/"):
                cid = path.removeprefix("/s5/blob/")
                key, body = f"blob/{cid}", portal.blobs.get(cid)
            else:
                key, body = path, None
            fault = portal.faults.get(key, [None]).pop(0) if portal.faults.get(key) else None
            if fault and fault.startswith("slow:"):
                time.sleep(float(fault.split(":")[1]))
            if fault in ("404", "500") or body is None:
                self.send_response(int(fault or 404))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    portal.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-s5", daemon=True)
    thread.start()
    try:
        yield portal
    finally:
        server.shutdown()
        server.server_close()
