"""A GGUF chat model run in this process by llama.cpp.

A `Llama` object is not thread-safe, so each model has one worker thread that alone touches it:
one generation at a time, in admission order. In front of it a bounded queue (admitted
generations beyond generation.queue_max_requests + the one running get 503 model_busy at once,
never a hang), and a deadline per request that covers the wait and the generation.

The worker iterates `create_chat_completion(stream=True)` and hands each piece of text to the
event loop (call_soon_threadsafe into the request's own asyncio.Queue). Between two pieces it
looks at the request's cancelled flag: a client that went away, a consumer that stopped reading,
or a passed deadline frees the model after at most one more token.

The prompt is put through the model's own chat template (the GGUF's tokenizer.chat_template,
rendered by llama-cpp-python's Jinja2 formatter) and counted on a second, vocabulary-only instance
on its own thread, so checking a prompt against the window never waits behind a generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import GenerationModelSettings, GenerationSettings
from service.inference.base import ModelUnavailable, keep_stderr, route_llama_logs
from service.inference.chat import (
    ChatMessage,
    ContextTooLong,
    Delta,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationParams,
)
from service.metrics import (
    GENERATION_FIRST_TOKEN_SECONDS,
    GENERATION_REJECTED,
    GENERATION_REQUESTS_ACTIVE,
    GENERATION_SECONDS,
    GENERATION_TOKENS,
)

log = logging.getLogger("vectorhive.inference")

os.environ.setdefault("GGML_NO_BACKTRACE", "1")

# The chat handler llama-cpp-python registers for the GGUF's own template: named explicitly, so it
# never swaps in a built-in format it guessed from the template (the prompt counted here would then
# differ from the prompt generated from).
_TEMPLATE_HANDLER = "chat_template.default"


class _Ended(Exception):
    """The worker's last word to the stream when the model itself failed."""


@dataclass(eq=False)
class _Job:
    messages: list[dict[str, str]]
    params: GenerationParams
    prompt_tokens: int
    admitted: float
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[GenerationEvent | BaseException] = field(default_factory=asyncio.Queue)
    # Written by the event loop, read by the worker thread between two tokens: a plain flag.
    cancelled: bool = False
    # Written by the worker thread (tokens sampled so far), read by the event loop for metering.
    generated: int = 0

    def put(self, item: GenerationEvent | BaseException) -> None:
        """From the worker thread: hand an event to the request's queue on the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class LocalStream:
    def __init__(self, owner: LocalGenerator, job: _Job) -> None:
        self._owner = owner
        self._job = job
        self.prompt_tokens = job.prompt_tokens
        self._done = False

    @property
    def generated_tokens(self) -> int:
        return self._job.generated

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self._done:
            raise StopAsyncIteration
        job = self._job
        remaining = job.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                item = await job.events.get()
        except TimeoutError:
            self._done = True
            job.cancelled = True
            GENERATION_REJECTED.labels(self._owner.name, "timeout").inc()
            raise ModelUnavailable(
                f"Model '{self._owner.name}' did not finish within generation.request_timeout_seconds "
                f"({self._owner.limits.request_timeout_seconds:g} s); retry later or ask for fewer tokens.",
                retry_after=5,
                code="model_timeout",
            ) from None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if isinstance(item, Finished):
            self._done = True
        return item

    async def aclose(self) -> None:
        """Stop the generation (if it is still running or waiting): the model is free again after
        at most one more token."""
        self._done = True
        self._job.cancelled = True


class LocalGenerator:
    def __init__(
        self, name: str, model: GenerationModelSettings, limits: GenerationSettings, path: Path
    ) -> None:
        self.name = name
        self.path = path
        self.n_ctx = model.n_ctx
        self.limits = limits
        self._model = model
        self._llama: Any = None
        self._vocab: Any = None
        self._formatter: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chat-{name}")
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chat-tokenizer-{name}")
        self._active = 0  # admitted and not finished: waiting, plus the one generating
        self._active_gauge = GENERATION_REQUESTS_ACTIVE.labels(name)
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        keep_stderr()
        route_llama_logs()

        vocab = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        template = vocab.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.path} has no chat template (tokenizer.chat_template); not a chat model")
        eos_id, bos_id = vocab.token_eos(), vocab.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=vocab._model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        self._vocab = vocab
        self._llama = Llama(
            model_path=str(self.path),
            n_ctx=self.n_ctx,
            n_batch=min(512, self.n_ctx),
            n_threads=self._model.n_threads,
            n_threads_batch=self._model.n_threads,
            chat_format=_TEMPLATE_HANDLER,
            verbose=False,
        )

    async def load(self) -> None:
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)
        log.info(
            "chat model loaded",
            extra={"model": self.name, "path": str(self.path), "n_ctx": self.n_ctx,
                   "seconds": round(time.perf_counter() - started, 3)},
        )  # fmt: skip

    async def close(self) -> None:
        """Waits, off the event loop, for the call in progress (a load or the current token) and
        frees the model: never left to the interpreter's exit, where a model freed by a late
        thread can take the process down."""
        self._closed = True
        for executor in (self._worker, self._tokenizer):
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._llama = self._vocab = None

    # -- counting -------------------------------------------------------------------------------------

    def _prompt_tokens_sync(self, messages: list[dict[str, str]]) -> int:
        prompt = self._formatter(messages=messages).prompt
        # As llama-cpp-python's template handler does: the template wrote the special tokens itself.
        return len(self._vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    def _count_sync(self, texts: list[str]) -> list[int]:
        return [len(self._vocab.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in texts]

    def _require_loaded(self) -> None:
        if self._closed or self._vocab is None:
            raise ModelUnavailable(f"Model '{self.name}' is not loaded.", retry_after=5)

    async def prompt_tokens(self, messages: list[ChatMessage]) -> int:
        self._require_loaded()
        rendered = [{"role": m.role, "content": m.content} for m in messages]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._tokenizer, self._prompt_tokens_sync, rendered)
        except Exception as exc:  # a template that refuses these messages (e.g. roles out of order)
            from service.errors import InvalidRequest

            if isinstance(exc, InvalidRequest):
                raise
            raise InvalidRequest.field(
                "messages", str(exc), f"Model '{self.name}''s chat template refused the messages: {exc}"
            ) from None

    async def count_tokens(self, texts: list[str]) -> list[int]:
        self._require_loaded()
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, self._count_sync, texts)

    # -- generating -----------------------------------------------------------------------------------

    async def start(self, messages: list[ChatMessage], params: GenerationParams) -> LocalStream:
        self._require_loaded()
        admitted = time.monotonic()
        prompt_tokens = await self.prompt_tokens(messages)
        if prompt_tokens >= self.n_ctx:
            raise ContextTooLong(
                prompt_tokens=prompt_tokens,
                limit=self.n_ctx,
                model=self.name,
                option=f"generation.models.{self.name}.n_ctx",
            )
        if self._active > self.limits.queue_max_requests:
            GENERATION_REJECTED.labels(self.name, "queue_full").inc()
            raise ModelUnavailable(
                f"Model '{self.name}' is generating with {self._active - 1} requests waiting "
                f"(generation.queue_max_requests: {self.limits.queue_max_requests}); retry shortly.",
                retry_after=2,
                code="model_busy",
            )
        # The completion never runs past the window: what the prompt leaves, at most.
        params = GenerationParams(
            max_tokens=min(params.max_tokens, self.n_ctx - prompt_tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
            seed=params.seed,
        )
        job = _Job(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            params=params,
            prompt_tokens=prompt_tokens,
            admitted=admitted,
            deadline=admitted + self.limits.request_timeout_seconds,
            loop=asyncio.get_running_loop(),
        )
        self._active += 1
        self._active_gauge.set(self._active)
        self._worker.submit(self._run, job)
        return LocalStream(self, job)

    def _release(self) -> None:
        self._active -= 1
        self._active_gauge.set(self._active)

    def _run(self, job: _Job) -> None:
        """In the worker thread. The model is released before the last event is handed over, so a
        client that read its answer to the end finds the model free for its next request."""
        try:
            outcome = self._generate(job)
        finally:
            # RuntimeError: the event loop is gone (shutdown), nothing is waiting.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(self._release)
        if outcome is not None:
            job.put(outcome)

    def _generate(self, job: _Job) -> Finished | ModelUnavailable | None:
        """In the worker thread: the only code that touches self._llama."""
        if job.cancelled or self._llama is None:
            return None
        if time.monotonic() > job.deadline:
            job.cancelled = True
            return None
        calls = 0

        def count(_ids: Any, scores: Any) -> Any:
            # One call per sampled token: the completion's token count (the stream's pieces are not
            # tokens: llama-cpp-python holds text back while it may be a stop string).
            nonlocal calls
            calls += 1
            job.generated = calls
            return scores

        first: float | None = None
        reason: FinishReason = "stop"
        p = job.params
        try:
            chunks = self._llama.create_chat_completion(
                messages=job.messages,
                max_tokens=p.max_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                stop=list(p.stop),
                seed=p.seed,
                stream=True,
                logits_processor=[count],
            )
            try:
                for chunk in chunks:
                    if job.cancelled or time.monotonic() > job.deadline:
                        reason = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        if first is None:
                            first = time.monotonic() - job.admitted
                        job.put(Delta(text))
                    if choice.get("finish_reason"):
                        reason = "length" if choice["finish_reason"] == "length" else "stop"
            finally:
                chunks.close()
        except Exception as exc:
            log.error("chat model failed", extra={"model": self.name}, exc_info=exc)
            return ModelUnavailable(f"Model '{self.name}' failed: {type(exc).__name__}", retry_after=5)
        # The end-of-generation token is sampled but is not part of the answer.
        completion = max(0, calls - 1) if reason == "stop" else calls
        job.generated = completion
        total = time.monotonic() - job.admitted
        GENERATION_TOKENS.labels(self.name, "prompt").inc(job.prompt_tokens)
        GENERATION_TOKENS.labels(self.name, "completion").inc(completion)
        GENERATION_SECONDS.labels(self.name, reason).observe(total)
        if first is not None:
            GENERATION_FIRST_TOKEN_SECONDS.labels(self.name).observe(first)
        return Finished(reason, job.prompt_tokens, completion, first, total)
