"""/api/v1/chat/completions (OpenAI-compatible): thin handlers; the rules live in the services.

Streams are Server-Sent Events. Everything that can fail before the first byte (validation, the
model, the queue, the token bucket) is a problem+json answer with its status; a failure after the
stream began is an error event in the stream's own format, never a silently cut stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from service.auth.guards import requires
from service.auth.principal import Permission, TenantPrincipal
from service.errors import (
    AUTHENTICATED,
    OPENAI_COMPATIBLE,
    PROBLEM_TYPE_PREFIX,
    ServiceError,
    problem_responses,
)
from service.inference.chat import Delta
from service.rag.answers import AnswerRun, RagService
from service.rag.models import (
    Answer,
    AnswerRequest,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    Citation,
    CompletionUsage,
    ContextRequest,
    ContextResult,
)
from service.rag.service import GenerationService

log = logging.getLogger("vectorhive.rag")
T = TypeVar("T")

READ = [requires(Permission.READ_ONLY)]
Tenant = NamedDependency[TenantPrincipal]
Generations = NamedDependency[GenerationService]
Answers = NamedDependency[RagService]

_encode = msgspec.json.Encoder().encode


# One Server-Sent Event (the form OpenAPI 3.2 gives itemSchema of text/event-stream).
SSE_EVENT_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="One Server-Sent Event: `event:` (absent: message) and `data:` (a JSON document, or "
    "[DONE] at the end of an OpenAI-compatible stream)",
    properties={
        "event": Schema(type=OpenAPIType.STRING),
        "data": Schema(type=OpenAPIType.STRING),
        "id": Schema(type=OpenAPIType.STRING),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
)


@dataclass
class StreamingOperation(Operation):
    """An operation whose 200 answer is JSON, or Server-Sent Events when the request asks to
    stream: both media types in the OpenAPI document (Litestar's ResponseSpec knows only one)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content["text/event-stream"] = OpenAPIMediaType(schema=SSE_EVENT_SCHEMA)


# Proxies (nginx) must pass each event on as it comes.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await work, cancelled when the client disconnects first (a non-streaming answer whose client
    gave up: the generation stops and the model is freed, as for a stream). The body has been read,
    so the next ASGI message is the disconnect."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


class ClientDisconnected(ServiceError):
    """Nobody is listening any more; the status is for the access log only."""

    status = 499
    code = "client_closed_request"
    title = "The client closed the request"

    def __init__(self) -> None:
        super().__init__("The client disconnected before the answer was complete.")


def sse_data(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def _finish_reason(reason: str) -> Any:
    return "length" if reason == "length" else "stop"


async def openai_chunks(run: AnswerRun, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's chat.completion.chunk events, then `data: [DONE]`. Grounded: the chunk with the
    finish_reason also carries the citations."""
    generation = run.generation
    assert generation is not None
    pieces: list[str] = []

    def chunk(
        choices: list[ChunkChoice],
        usage: CompletionUsage | None = None,
        citations: list[Citation] | None = None,
    ) -> bytes:
        return sse_data(
            ChatCompletionChunk(
                id=generation.id,
                created=generation.created,
                model=generation.model,
                choices=choices,
                usage=usage,
                citations=citations,
            )
        )

    yield chunk([ChunkChoice(index=0, delta=ChunkDelta(role="assistant", content=""))])
    try:
        async for event in generation.events():
            if isinstance(event, Delta):
                pieces.append(event.text)
                yield chunk([ChunkChoice(index=0, delta=ChunkDelta(content=event.text))])
                continue
            reason = _finish_reason(event.finish_reason)
            citations = run.citations("".join(pieces)) if run.grounded is not None else None
            end = ChunkChoice(index=0, delta=ChunkDelta(), finish_reason=reason)
            yield chunk([end], citations=citations)
            if include_usage:
                total = event.prompt_tokens + event.completion_tokens
                usage = CompletionUsage(
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    total_tokens=total,
                )
                yield chunk([], usage)
    except ServiceError as exc:
        yield sse_data({"error": {"message": exc.detail, "type": exc.code, "code": exc.code}})
    except Exception:
        log.exception("generation failed after its stream began")
        message = "An unexpected error occurred during generation."
        yield sse_data({"error": {"message": message, "type": "internal_error", "code": "internal_error"}})
    yield b"data: [DONE]\n\n"


class ChatController(Controller):
    """Generation with the tenant's own key; READ_ONLY keys may ask."""

    path = "/api/v1/chat"
    tags = ["generation"]

    @post(
        "/completions",
        operation_id="createChatCompletion",
        operation_class=StreamingOperation,
        opt={OPENAI_COMPATIBLE: True},
        guards=READ,
        status_code=200,
        responses={
            200: ResponseSpec(
                data_container=ChatCompletion,
                description="The completion; with stream: true, text/event-stream of `data: "
                "<chat.completion.chunk>` events (ChatCompletionChunk) ending with `data: [DONE]`",
                generate_examples=False,
            ),
            **problem_responses(*AUTHENTICATED, 429, 503),
        },
        summary="OpenAI-compatible chat completion; SSE chunks ending in [DONE] with stream: true",
    )
    async def create_chat_completion(
        self,
        request: Request[Any, Any, Any],
        tenant: Tenant,
        rag: Answers,
        data: JSONBody[ChatCompletionRequest],
    ) -> Response[ChatCompletion] | Stream:
        answer_run = await rag.chat(tenant, data)
        run = answer_run.generation
        assert run is not None
        if data.stream:
            include_usage = data.stream_options is not None and data.stream_options.include_usage
            chunks = openai_chunks(answer_run, include_usage)
            return Stream(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        text, finished = await unless_disconnected(request, run.text())
        citations = answer_run.citations(text) if answer_run.grounded is not None else None
        return Response(
            ChatCompletion(
                id=run.id,
                created=run.created,
                model=run.model,
                citations=citations,
                choices=[
                    ChatChoice(
                        index=0,
                        message=AssistantMessage(content=text),
                        finish_reason=_finish_reason(finished.finish_reason),
                    )
                ],
                usage=CompletionUsage(
                    prompt_tokens=finished.prompt_tokens,
                    completion_tokens=finished.completion_tokens,
                    total_tokens=finished.prompt_tokens + finished.completion_tokens,
                ),
            )
        )


def sse_event(event: str, payload: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def _problem_payload(exc: ServiceError) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_PREFIX + exc.code,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "code": exc.code,
    }


async def answer_events(run: AnswerRun, rag: RagService) -> AsyncIterator[bytes]:
    """message_start, content (deltas), citation (one per cited passage), message_end; or error."""
    if run.cached is not None:
        answer = run.shown(run.cached)
        yield sse_event("message_start", {"model": answer.model, "cached": True})
        yield sse_event("content", {"delta": answer.answer})
        for citation in answer.citations:
            yield sse_event("citation", citation)
        if answer.context is not None:
            yield sse_event("context", answer.context)
        end = {"usage": answer.usage, "finish_reason": answer.finish_reason, "cached": True}
        yield sse_event("message_end", end)
        return
    assert run.generation is not None
    yield sse_event("message_start", {"id": run.generation.id, "model": run.model, "cached": False})
    pieces: list[str] = []
    try:
        async for event in run.generation.events():
            if isinstance(event, Delta):
                pieces.append(event.text)
                yield sse_event("content", {"delta": event.text})
        finished = run.generation.finished
        assert finished is not None
        answer = run.answer("".join(pieces), finished)
        for citation in answer.citations:
            yield sse_event("citation", citation)
        if run.include_context:
            yield sse_event("context", answer.context)
        await rag.remember(run, answer)
        end = {"usage": answer.usage, "finish_reason": answer.finish_reason, "cached": False}
        yield sse_event("message_end", end)
    except ServiceError as exc:
        yield sse_event("error", _problem_payload(exc))
    except Exception:
        log.exception("answer failed after its stream began")
        yield sse_event(
            "error", _problem_payload(ServiceError("An unexpected error occurred.", code="internal_error"))
        )


class AnswersController(Controller):
    """Grounded answers and retrieval for a collection of the caller's tenant (READ_ONLY keys may
    ask). Another tenant's collections are not found."""

    path = "/api/v1/collections"
    tags = ["rag"]

    @post(
        "/{name:str}/answer",
        operation_id="answerQuestion",
        guards=READ,
        status_code=200,
        operation_class=StreamingOperation,
        responses={
            200: ResponseSpec(
                data_container=Answer,
                description="The answer with citations; with stream: true, text/event-stream of "
                "message_start, content, citation, message_end (or error) events. X-Cache: hit | miss.",
                generate_examples=False,
            ),
            **problem_responses(*AUTHENTICATED, 404, 429, 503),
        },
        summary="Answer a question from the collection's documents, citing the passages used",
    )
    async def answer(
        self,
        request: Request[Any, Any, Any],
        tenant: Tenant,
        rag: Answers,
        name: FromPath[str],
        data: JSONBody[AnswerRequest],
    ) -> Response[Answer] | Stream:
        run = await rag.answer(tenant, name, data)
        headers = {"X-Cache": "hit" if run.cached is not None else "miss"}
        if data.stream:
            return Stream(
                answer_events(run, rag), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
            )
        if run.cached is not None:
            return Response(run.shown(run.cached), headers=headers)
        assert run.generation is not None
        text, finished = await unless_disconnected(request, run.generation.text())
        answer = run.answer(text, finished)
        await rag.remember(run, answer)
        return Response(run.shown(answer), headers=headers)

    @post(
        "/{name:str}/context",
        operation_id="retrieveContext",
        guards=READ,
        status_code=200,
        responses=problem_responses(*AUTHENTICATED, 404, 429, 503),
        summary="The passages an answer would be given, within a token budget (for your own LLM)",
    )
    async def context(
        self, tenant: Tenant, rag: Answers, name: FromPath[str], data: JSONBody[ContextRequest]
    ) -> ContextResult:
        return await rag.context(tenant, name, data)
