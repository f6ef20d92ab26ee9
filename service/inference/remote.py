"""An embedding model served by an OpenAI-compatible server (vLLM, llama.cpp server, a hosted API).

Reached through httpx with a timeout per call and bounded retries with jittered backoff on
timeouts, broken connections and 5xx answers (never on 4xx). The server's own queue and window
apply; this side counts tokens approximately (4 bytes of UTF-8 a token, plus the two special
tokens), which is what splits documents for a remote model.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import numpy as np

from service.config import EmbeddingModelSettings, EmbeddingsSettings
from service.errors import InvalidRequest
from service.inference.base import Embeddings, ModelUnavailable, TokenCounter
from service.inference.openai_http import OpenAIEndpoint
from service.metrics import MODEL_BATCH_TEXTS, MODEL_CALL_SECONDS, MODEL_EMBEDDINGS, MODEL_TOKENS

log = logging.getLogger("vectorhive.inference")
T = TypeVar("T")


def approximate_tokens(texts: list[str]) -> list[int]:
    return [len(t.encode("utf-8")) // 4 + 3 for t in texts]


class RemoteEmbedder(OpenAIEndpoint):
    def __init__(self, name: str, model: EmbeddingModelSettings, limits: EmbeddingsSettings) -> None:
        assert model.url is not None and model.dimension is not None  # checked when settings load
        super().__init__(
            name,
            model.url,
            "/embeddings",
            api_key=model.api_key,
            remote_model=model.remote_model,
            timeout=limits.remote_timeout_seconds,
        )
        self.dimension = model.dimension
        self.max_tokens = model.max_tokens
        self._limits = limits

    async def count_tokens(self, texts: list[str]) -> list[int]:
        return approximate_tokens(texts)

    async def with_tokenizer(self, work: Callable[[TokenCounter], T]) -> T:
        return await asyncio.to_thread(work, approximate_tokens)

    async def embed(self, texts: list[str]) -> Embeddings:
        started = time.perf_counter()
        vectors_out: list[np.ndarray[Any, Any]] = []
        prompt_tokens = 0
        # One call per batch_max_texts texts, so a remote server's own input limit is respected.
        step = self._limits.batch_max_texts
        for start in range(0, len(texts), step):
            part = texts[start : start + step]
            body = await self._post({"model": self._remote_name, "input": part, "encoding_format": "float"})
            vectors, tokens = self._parse(body, len(part))
            vectors_out.append(vectors)
            prompt_tokens += tokens
            MODEL_BATCH_TEXTS.labels(self.name).observe(len(part))
        MODEL_CALL_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        MODEL_EMBEDDINGS.labels(self.name).inc(len(texts))
        MODEL_TOKENS.labels(self.name).inc(prompt_tokens)
        # The server reports tokens for the whole call; spread them over the texts by length.
        counts = approximate_tokens(texts)
        return Embeddings(np.concatenate(vectors_out), counts)

    async def _post(self, payload: dict[str, Any]) -> Any:
        attempts = self._limits.remote_retries + 1
        for attempt in range(attempts):
            try:
                response = await self._client.post(self._url, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        problem = "an answer that is not JSON"
                elif response.status_code < 500:
                    raise InvalidRequest(
                        f"Remote model '{self.name}' refused the input ({response.status_code}): "
                        f"{response.text[:300]}",
                        code="model_refused",
                    )
                else:
                    problem = f"status {response.status_code}"
            if attempt + 1 < attempts:
                await self.pause_before_retry(attempt)
        log.warning("remote embedding model failed", extra={"model": self.name, "problem": problem})
        raise ModelUnavailable(
            f"Remote model '{self.name}' ({self._url}) is unavailable: {problem} after {attempts} attempts "
            f"(embeddings.models.{self.name}.url).",
            retry_after=10,
        )

    def _parse(self, body: Any, expected: int) -> tuple[np.ndarray[Any, Any], int]:
        try:
            items = sorted(body["data"], key=lambda item: int(item["index"]))
            if len(items) != expected:
                raise ValueError(f"{len(items)} embeddings for {expected} inputs")
            rows = []
            for item in items:
                value = item["embedding"]
                if isinstance(value, str):
                    rows.append(np.frombuffer(base64.b64decode(value), dtype="<f4"))
                else:
                    rows.append(np.asarray(value, dtype=np.float32))
            vectors = np.stack(rows).astype(np.float32, copy=False)
            if vectors.shape[1] != self.dimension:
                raise ValueError(f"{vectors.shape[1]}-d vectors; configured dimension {self.dimension}")
            if not np.isfinite(vectors).all():
                raise ValueError("non-finite values")
            tokens = int((body.get("usage") or {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelUnavailable(
                f"Remote model '{self.name}' answered outside the OpenAI embeddings format: {exc}",
                retry_after=10,
            ) from None
        return vectors, tokens
