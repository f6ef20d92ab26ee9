"""A TCP proxy on 127.0.0.1 in front of the test PostgreSQL: the network between the service and its
database, which a test can break the two ways a real one breaks.

- refuse(): every connection is cut and nothing listens any more (PostgreSQL down or restarting:
  clients get "connection refused" at once);
- drop(): every connection stays open but nothing passes any more, and new connections are
  accepted but never answered (a network partition, a host that vanished: clients wait);
- restore(): back to normal; connections that were held by drop() are cut, as TCP timeouts would.

It forwards bytes only, so the service's asyncpg talks real PostgreSQL protocol to the real server
(the session's embedded PostgreSQL, reached by its unix socket). A connection the service closes is
closed upstream too, so its backend (and any advisory lock it holds) ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class DatabaseProxy:
    def __init__(self, pg_url: str) -> None:
        parts = urlsplit(pg_url)
        socket_dir = parse_qs(parts.query)["host"][0]
        self.target = str(Path(socket_dir) / f".s.PGSQL.{parts.port or 5432}")
        self.user = parts.username or "postgres"
        self.database = parts.path.lstrip("/") or "postgres"
        self.port = 0
        self.mode = "up"  # up | refused | dropped
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="db-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def refuse(self) -> None:
        """Like a database that is down: no listener, every connection cut."""

        async def refuse() -> None:
            self.mode = "refused"
            await self._stop_listening()
            await self._cut_all()

        self._call(refuse())

    def drop(self) -> None:
        """Like a network partition: connections stay open, nothing passes either way."""

        async def drop() -> None:
            self.mode = "dropped"
            self._release = asyncio.Event()

        self._call(drop())

    def restore(self) -> None:
        async def restore() -> None:
            held = self.mode == "dropped"
            self.mode = "up"
            if held:
                self._release.set()
                await self._cut_all()
            if self._server is None:
                await self._listen()

        self._call(restore())

    # -- in the proxy's own event loop -------------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _cut_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    async def _shutdown(self) -> None:
        await self._stop_listening()
        await self._cut_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "dropped":
                await self._hold(reader)
                return
            up_reader, upstream = await asyncio.open_unix_connection(self.target)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._links.discard(task)
            for side in (writer, upstream):
                if side is not None:
                    with contextlib.suppress(Exception):
                        side.transport.abort()

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Swallow what the client sends, answer nothing, until it goes away or restore()."""
        while not self._release.is_set():
            if not await reader.read(65536):
                return

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            data = await source.read(65536)
            if not data:
                break  # one side closed: close the other (the task's finally aborts both)
            if self.mode == "dropped":
                await self._hold(source)
                break
            sink.write(data)
            await sink.drain()
        raise ConnectionResetError  # ends the gather, so both directions close together


@contextmanager
def database_proxy(pg_url: str) -> Iterator[DatabaseProxy]:
    proxy = DatabaseProxy(pg_url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
