"""A chat model served by an OpenAI-compatible server (vLLM, llama.cpp server, a hosted API).

Always asked to stream (`stream: true` with `stream_options.include_usage`), so a streaming and a
non-streaming client cost the server the same and both can be stopped: closing the connection is
how an OpenAI-compatible server learns that its client went away. The request is sent, and its
status checked, in start() (connection failures and 5xx are retried there with jittered backoff),
so a server that is down is a 503 before any response began; a stream that breaks later is an
error out of the stream. httpx's timeout bounds connecting and each wait between two pieces; the
request's deadline (generation.request_timeout_seconds) bounds the whole.

Tokens are counted approximately on this side (4 bytes of UTF-8 a token) for the window check;
the usage the server reports is what is metered, when it reports one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from service.config import GenerationModelSettings, GenerationSettings
from service.errors import InvalidRequest
from service.inference.base import ModelUnavailable
from service.inference.chat import (
    ChatMessage,
    ContextTooLong,
    Delta,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationParams,
)
from service.inference.openai_http import OpenAIEndpoint
from service.metrics import (
    GENERATION_FIRST_TOKEN_SECONDS,
    GENERATION_REJECTED,
    GENERATION_SECONDS,
    GENERATION_TOKENS,
)

log = logging.getLogger("vectorhive.inference")

_RETRIES = 2


def approximate_tokens(text: str) -> int:
    return len(text.encode("utf-8")) // 4 + 1


def approximate_prompt_tokens(messages: list[ChatMessage]) -> int:
    # Each message also costs its role and the template's markers: a few tokens.
    return sum(approximate_tokens(m.content) + 4 for m in messages) + 2


class RemoteStream:
    def __init__(
        self,
        owner: RemoteGenerator,
        response: httpx.Response,
        prompt_tokens: int,
        admitted: float,
        deadline: float,
    ) -> None:
        self._owner = owner
        self._response = response
        self.prompt_tokens = prompt_tokens
        self._admitted = admitted
        self._deadline = deadline
        self._iterator = self._events()
        self._generated = 0

    @property
    def generated_tokens(self) -> int:
        return self._generated

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        try:
            async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                return await anext(self._iterator)
        except TimeoutError:
            await self.aclose()
            GENERATION_REJECTED.labels(self._owner.name, "timeout").inc()
            raise ModelUnavailable(
                f"Remote model '{self._owner.name}' did not finish within "
                f"generation.request_timeout_seconds ({self._owner.limits.request_timeout_seconds:g} s).",
                retry_after=5,
                code="model_timeout",
            ) from None

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self._response.aclose()

    def _broken(self, problem: str) -> ModelUnavailable:
        log.warning("remote chat model stream broke", extra={"model": self._owner.name, "problem": problem})
        return ModelUnavailable(
            f"Remote model '{self._owner.name}' broke off its answer: {problem} "
            f"(generation.models.{self._owner.name}.url).",
            retry_after=10,
        )

    async def _events(self) -> Any:
        name = self._owner.name
        pieces: list[str] = []
        reason: FinishReason = "stop"
        usage: dict[str, Any] | None = None
        first: float | None = None
        generated_bytes = 0
        done = False
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments (": keep-alive"), event names, blank separators
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise self._broken("a piece that is not JSON") from None
                if not isinstance(chunk, dict):
                    raise self._broken("a piece that is not a JSON object")
                if "error" in chunk:
                    raise self._broken(f"error {str(chunk['error'])[:300]}")
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first is None:
                            first = time.monotonic() - self._admitted
                        pieces.append(text)
                        generated_bytes += len(text.encode("utf-8"))
                        self._generated = generated_bytes // 4 + 1
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        reason = "length" if choice["finish_reason"] == "length" else "stop"
        except httpx.HTTPError as exc:
            raise self._broken(type(exc).__name__) from None
        if not done:
            raise self._broken("the stream ended without [DONE]")
        prompt = int((usage or {}).get("prompt_tokens") or self.prompt_tokens)
        completion_value = (usage or {}).get("completion_tokens")
        completion = (
            int(completion_value) if completion_value is not None else approximate_tokens("".join(pieces))
        )
        self._generated = completion
        total = time.monotonic() - self._admitted
        GENERATION_TOKENS.labels(name, "prompt").inc(prompt)
        GENERATION_TOKENS.labels(name, "completion").inc(completion)
        GENERATION_SECONDS.labels(name, reason).observe(total)
        if first is not None:
            GENERATION_FIRST_TOKEN_SECONDS.labels(name).observe(first)
        yield Finished(reason, prompt, completion, first, total)


class RemoteGenerator(OpenAIEndpoint):
    def __init__(self, name: str, model: GenerationModelSettings, limits: GenerationSettings) -> None:
        assert model.url is not None
        super().__init__(
            name,
            model.url,
            "/chat/completions",
            api_key=model.api_key,
            remote_model=model.remote_model,
            timeout=limits.remote_timeout_seconds,
        )
        self.n_ctx = model.n_ctx
        self.limits = limits

    async def count_tokens(self, texts: list[str]) -> list[int]:
        return [approximate_tokens(t) for t in texts]

    async def prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return approximate_prompt_tokens(messages)

    async def start(self, messages: list[ChatMessage], params: GenerationParams) -> RemoteStream:
        admitted = time.monotonic()
        prompt_tokens = approximate_prompt_tokens(messages)
        if prompt_tokens >= self.n_ctx:
            raise ContextTooLong(
                prompt_tokens=prompt_tokens,
                limit=self.n_ctx,
                model=self.name,
                option=f"generation.models.{self.name}.n_ctx",
            )
        payload: dict[str, Any] = {
            "model": self._remote_name,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max(1, min(params.max_tokens, self.n_ctx - prompt_tokens)),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.seed is not None:
            payload["seed"] = params.seed
        response = await self._open(payload)
        return RemoteStream(
            self, response, prompt_tokens, admitted, admitted + self.limits.request_timeout_seconds
        )

    async def _open(self, payload: dict[str, Any]) -> httpx.Response:
        attempts = _RETRIES + 1
        retry_after = 10
        problem = "no attempt"
        for attempt in range(attempts):
            request = self._client.build_request("POST", self._url, json=payload)
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                body = (await response.aread()).decode("utf-8", "replace")[:300]
                await response.aclose()
                if response.status_code == 429:
                    # The server's own queue is full: its Retry-After is passed on, no retry here.
                    GENERATION_REJECTED.labels(self.name, "remote_busy").inc()
                    wait = response.headers.get("retry-after", "")
                    raise ModelUnavailable(
                        f"Remote model '{self.name}' is busy (429); retry shortly.",
                        retry_after=int(wait) if wait.isdigit() else 5,
                        code="model_busy",
                    )
                if response.status_code < 500:
                    raise InvalidRequest(
                        f"Remote model '{self.name}' refused the request ({response.status_code}): {body}",
                        code="model_refused",
                    )
                problem = f"status {response.status_code}"
            if attempt + 1 < attempts:
                await self.pause_before_retry(attempt)
        log.warning("remote chat model failed", extra={"model": self.name, "problem": problem})
        raise ModelUnavailable(
            f"Remote model '{self.name}' ({self._url}) is unavailable: {problem} after {attempts} attempts "
            f"(generation.models.{self.name}.url).",
            retry_after=retry_after,
        )
