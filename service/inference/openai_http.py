"""What the remote backends share: a model behind an OpenAI-compatible server (vLLM, llama.cpp
server, a hosted API), reached through httpx with a timeout per call, and the jittered backoff
between their bounded retries."""

from __future__ import annotations

import asyncio
import random

import httpx


class OpenAIEndpoint:
    def __init__(
        self, name: str, url: str, path: str, *, api_key: str | None, remote_model: str | None, timeout: float
    ) -> None:
        self.name = name
        self._remote_name = remote_model or name
        self._url = url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=False
        )

    async def load(self) -> None:
        """Nothing to load; the first call shows whether the server is there."""

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    async def pause_before_retry(attempt: int) -> None:
        """Jittered exponential backoff: about 0.1 s, 0.2 s, 0.4 s ... at most 2 s (times 0.5 to 1.5)."""
        await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))  # noqa: S311
