"""A GGUF embedding model run in this process by llama.cpp.

A `Llama` object is not thread-safe (two threads on one object abort the process), so each model
has one worker thread that alone touches it, and the event loop never waits on a model call.
Concurrent requests are micro-batched: whatever is queued when the worker becomes free goes into
one hop to the thread (up to embeddings.batch_max_texts texts). Inside that hop every text is
decoded as its own sequence: measured on MiniLM, one sequence per decode is both faster (about
440 texts/s against 240 for 256 texts packed in one batch, whose attention spans the whole batch)
and exact, so a text embedded alone or inside a batch gets the very same vector.

Tokenising for the length check happens in the same hop; chunking documents uses a second,
vocabulary-only instance on its own thread, so splitting a long document never holds up searches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.config import EmbeddingModelSettings, EmbeddingsSettings
from service.inference.base import Embeddings, ModelUnavailable, TextTooLong, keep_stderr, route_llama_logs
from service.metrics import (
    MODEL_BATCH_TEXTS,
    MODEL_CALL_SECONDS,
    MODEL_EMBEDDINGS,
    MODEL_QUEUE_TEXTS,
    MODEL_REJECTED,
    MODEL_TOKENS,
)

log = logging.getLogger("vectorhive.inference")

# ggml would attach gdb to print a backtrace when it aborts: never in a server.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

_POOLING = {"mean": 1, "cls": 2, "last": 3}  # llama_cpp.LLAMA_POOLING_TYPE_*
T = TypeVar("T")


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[Embeddings]
    # Set when the caller gave up (timeout, client gone): the worker skips the job. A plain flag,
    # read by the worker thread, written by the event loop.
    abandoned: bool = field(default=False)


class LocalEmbedder:
    def __init__(
        self, name: str, model: EmbeddingModelSettings, limits: EmbeddingsSettings, path: Path
    ) -> None:
        self.name = name
        self.path = path
        self.max_tokens = model.max_tokens
        self.dimension = model.dimension or 0
        self._model = model
        self._limits = limits
        self._llama: Any = None
        self._vocab: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenizer-{name}")
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._queue_gauge = MODEL_QUEUE_TEXTS.labels(name)

    # -- lifecycle ----------------------------------------------------------------------------------

    def _load(self) -> None:
        from llama_cpp import Llama

        keep_stderr()
        route_llama_logs()  # loads run in threads: no process-wide /dev/null (see base.keep_stderr)

        # n_batch and n_ubatch cover the whole window: a non-causal model needs a text's tokens in
        # one micro-batch, and llama.cpp would otherwise cut longer texts silently.
        window = self.max_tokens
        self._llama = Llama(
            model_path=str(self.path),
            embedding=True,
            n_ctx=window,
            n_batch=window,
            n_ubatch=window,
            n_threads=self._model.n_threads,
            n_threads_batch=self._model.n_threads,
            pooling_type=_POOLING[self._model.pooling],
            verbose=False,
        )
        self._vocab = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        dimension = int(self._llama.n_embd())
        if self._model.dimension is not None and dimension != self._model.dimension:
            raise ValueError(
                f"{self.path} makes {dimension}-d vectors; embeddings.models.{self.name}.dimension "
                f"says {self._model.dimension}"
            )
        self.dimension = dimension

    async def load(self) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._load)
        self._runner = asyncio.create_task(self._run(), name=f"model-{self.name}")
        log.info(
            "embedding model loaded",
            extra={"model": self.name, "path": str(self.path), "dimension": self.dimension,
                   "seconds": round(time.perf_counter() - started, 3)},
        )  # fmt: skip

    async def close(self) -> None:
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(
                    ModelUnavailable(f"Model '{self.name}' is shutting down.", retry_after=5)
                )
        for executor in (self._worker, self._tokenizer):  # off the event loop: a load may be running
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._llama = self._vocab = None

    # -- embedding ----------------------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Embeddings:
        if self._closed or self._runner is None:
            raise ModelUnavailable(f"Model '{self.name}' is not loaded.", retry_after=5)
        if self._queued_texts + len(texts) > self._limits.queue_max_texts:
            MODEL_REJECTED.labels(self.name, "queue_full").inc()
            raise ModelUnavailable(
                f"Model '{self.name}' has {self._queued_texts} texts queued (embeddings.queue_max_texts: "
                f"{self._limits.queue_max_texts}); retry shortly.",
                retry_after=1,
                code="model_busy",
            )
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_texts += len(texts)
        self._queue_gauge.set(self._queued_texts)
        self._wake.set()
        try:
            async with asyncio.timeout(self._limits.request_timeout_seconds):
                return await asyncio.shield(job.future)
        except TimeoutError:
            MODEL_REJECTED.labels(self.name, "timeout").inc()
            raise ModelUnavailable(
                f"Model '{self.name}' did not answer within embeddings.request_timeout_seconds "
                f"({self._limits.request_timeout_seconds:g} s); retry later.",
                retry_after=5,
                code="model_timeout",
            ) from None
        finally:
            job.abandoned = not job.future.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft()]
                size = len(batch[0].texts)
                while self._queue and size + len(self._queue[0].texts) <= self._limits.batch_max_texts:
                    job = self._queue.popleft()
                    batch.append(job)
                    size += len(job.texts)
                try:
                    outcomes = await loop.run_in_executor(self._worker, self._embed_batch, batch)
                except Exception as exc:  # the model itself failed: every job of the batch is told
                    log.error("embedding model call failed", extra={"model": self.name}, exc_info=exc)
                    error = ModelUnavailable(
                        f"Model '{self.name}' failed: {type(exc).__name__}", retry_after=5
                    )
                    outcomes = [error] * len(batch)
                finally:
                    self._queued_texts -= size
                    self._queue_gauge.set(self._queued_texts)
                for job, outcome in zip(batch, outcomes, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(outcome, Exception):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)

    def _embed_batch(self, batch: list[_Job]) -> list[Embeddings | Exception]:
        """In the worker thread: the only code that touches self._llama."""
        started = time.perf_counter()
        outcomes: list[Embeddings | Exception] = []
        texts_done = tokens_done = 0
        for job in batch:
            if job.abandoned:
                outcomes.append(ModelUnavailable("abandoned", retry_after=1))
                continue
            counts = [
                len(self._llama.tokenize(t.encode("utf-8"), add_bos=True, special=False)) for t in job.texts
            ]
            too_long = next((i for i, n in enumerate(counts) if n > self.max_tokens), None)
            if too_long is not None:
                outcomes.append(
                    TextTooLong(
                        index=too_long, tokens=counts[too_long], limit=self.max_tokens, model=self.name
                    )
                )
                continue
            vectors = np.empty((len(job.texts), self.dimension), dtype=np.float32)
            for i, text in enumerate(job.texts):
                vectors[i] = self._llama.embed(text, normalize=False, truncate=False)
            if self._model.normalize:
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                np.divide(vectors, norms, out=vectors, where=norms > 0)
            outcomes.append(Embeddings(vectors, counts))
            texts_done += len(job.texts)
            tokens_done += sum(counts)
        MODEL_CALL_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        MODEL_BATCH_TEXTS.labels(self.name).observe(sum(len(j.texts) for j in batch))
        MODEL_EMBEDDINGS.labels(self.name).inc(texts_done)
        MODEL_TOKENS.labels(self.name).inc(tokens_done)
        return outcomes

    # -- tokenising (documents) -----------------------------------------------------------------------

    def _count_sync(self, texts: list[str]) -> list[int]:
        return [len(self._vocab.tokenize(t.encode("utf-8"), add_bos=True, special=False)) for t in texts]

    async def count_tokens(self, texts: list[str]) -> list[int]:
        return await self.with_tokenizer(lambda count: count(texts))

    async def with_tokenizer(self, work: Callable[[Callable[[list[str]], list[int]]], T]) -> T:
        """Run work(count_tokens) on the tokenizer thread (for chunking, which counts many pieces)."""
        if self._vocab is None:
            raise ModelUnavailable(f"Model '{self.name}' is not loaded.", retry_after=5)
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, work, self._count_sync)
