"""Generation for a tenant: the model chosen and admitted, the token bucket charged, the usage
metered, whether the answer is streamed or not (one implementation; the controller only shapes).

Charging: a generation is admitted first (a full queue costs the tenant nothing), then charged up
front for its prompt and its max_tokens (QuotaService.charge_generation); a tenant whose bucket is
short gets 429 and the admitted generation is closed before it produced anything worth keeping.
Metering: the tokens actually read and generated, also for a stream whose client went away.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from service.auth.principal import TenantPrincipal
from service.config import GenerationSettings
from service.inference.chat import (
    ChatMessage,
    Delta,
    Finished,
    GenerationEvent,
    GenerationParams,
    GenerationStream,
)
from service.inference.generators import GeneratorRegistry
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter
from service.rag.models import (
    ChatCompletionRequest,
    ChatMessageIn,
)

log = logging.getLogger("vectorhive.rag")


def to_chat_messages(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    return [ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in messages]


@dataclass(eq=False)
class Generation:
    """An admitted, charged generation: iterate events() once; always ends by metering it."""

    id: str
    created: int
    model: str
    tenant_id: str
    operation: str
    stream: GenerationStream
    meter: UsageMeter | None
    finished: Finished | None = None
    _metered: bool = field(default=False)

    @property
    def prompt_tokens(self) -> int:
        return self.stream.prompt_tokens

    async def events(self) -> AsyncIterator[GenerationEvent]:
        try:
            async for event in self.stream:
                if isinstance(event, Finished):
                    self.finished = event
                yield event
        finally:
            await self.close()

    async def text(self) -> tuple[str, Finished]:
        pieces = [event.text async for event in self.events() if isinstance(event, Delta)]
        assert self.finished is not None
        return "".join(pieces), self.finished

    async def close(self) -> None:
        """Stop the model (if it still runs) and meter what it read and generated, once."""
        # Shielded: this runs when a client went away and the response's task is being cancelled
        # (Litestar cancels a stream on http.disconnect); the model must still be told to stop.
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()
        if self._metered:
            return
        self._metered = True
        if self.meter is not None:
            completion = (
                self.finished.completion_tokens if self.finished is not None else self.stream.generated_tokens
            )
            self.meter.record(self.tenant_id, "prompt_tokens", self.stream.prompt_tokens, self.operation)
            self.meter.record(self.tenant_id, "completion_tokens", completion, self.operation)


class GenerationService:
    def __init__(
        self,
        generators: GeneratorRegistry,
        settings: GenerationSettings,
        *,
        quotas: QuotaService | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self.generators = generators
        self.settings = settings
        self.quotas = quotas
        self.meter = meter

    def params(
        self,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None = None,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
    ) -> GenerationParams:
        return GenerationParams(
            max_tokens=max_tokens or self.settings.max_tokens,
            temperature=self.settings.temperature if temperature is None else temperature,
            top_p=0.95 if top_p is None else top_p,
            stop=stop,
            seed=seed,
        )

    async def generate(
        self,
        principal: TenantPrincipal,
        messages: list[ChatMessage],
        params: GenerationParams,
        *,
        model: str | None,
        operation: str,
    ) -> Generation:
        """Admit and charge a generation (errors here are the request's status: 400, 429, 503)."""
        generator = self.generators.generator(model)
        stream = await generator.start(messages, params)
        try:
            if self.quotas is not None:
                room = max(1, generator.n_ctx - stream.prompt_tokens)
                await self.quotas.charge_generation(
                    principal.tenant_id, stream.prompt_tokens, min(params.max_tokens, room)
                )
        except BaseException:
            await stream.aclose()
            raise
        return Generation(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=generator.name,
            tenant_id=principal.tenant_id,
            operation=operation,
            stream=stream,
            meter=self.meter,
        )

    async def chat(self, principal: TenantPrincipal, request: ChatCompletionRequest) -> Generation:
        """POST /chat/completions without grounding: the messages as they are."""
        messages = to_chat_messages(request.messages)
        params = self.chat_params(request)
        return await self.generate(principal, messages, params, model=request.model, operation="chat")

    def chat_params(self, request: ChatCompletionRequest) -> GenerationParams:
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        return self.params(
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=stop,
            seed=request.seed,
        )
