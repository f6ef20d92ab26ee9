"""/api/v1/embeddings and /api/v1/models: OpenAI's shapes, so OpenAI clients work unchanged."""

from __future__ import annotations

import base64

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from service.auth.guards import requires
from service.auth.principal import Permission, TenantPrincipal
from service.embeddings.models import (
    EmbeddingItem,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    ModelList,
    chat_model_card,
    model_card,
)
from service.embeddings.service import EmbeddingService
from service.errors import AUTHENTICATED, OPENAI_COMPATIBLE, InvalidRequest, problem_responses
from service.rag.service import GenerationService

Service = NamedDependency[EmbeddingService]
Tenant = NamedDependency[TenantPrincipal]
READ = [requires(Permission.READ_ONLY)]


def _texts(request: EmbeddingsRequest) -> list[str]:
    if isinstance(request.input, str):
        return [request.input]
    if not request.input:
        raise InvalidRequest.field(
            "input", "empty", "input: is an empty list; give a text or a list of texts"
        )
    if not all(isinstance(item, str) for item in request.input):
        raise InvalidRequest.field(
            "input",
            "a string or a list of strings",
            "input: token arrays are not accepted; send the texts themselves",
        )
    return [item for item in request.input if isinstance(item, str)]


async def _embed(
    tenant: TenantPrincipal, embeddings: EmbeddingService, data: EmbeddingsRequest
) -> EmbeddingsResponse:
    texts = _texts(data)
    model = embeddings.model(data.model)
    if data.dimensions is not None and data.dimensions != model.dimension:
        raise InvalidRequest.field(
            "dimensions",
            f"must be {model.dimension} (or omitted)",
            f"dimensions: model '{model.name}' makes {model.dimension}-d vectors and does not shorten them",
        )
    result = await embeddings.embed(tenant, texts, model.name)
    if data.encoding_format == "base64":
        vectors: list[list[float] | str] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in result.vectors
        ]
    else:
        vectors = [row.tolist() for row in result.vectors]
    return EmbeddingsResponse(
        object="list",
        data=[EmbeddingItem(object="embedding", embedding=v, index=i) for i, v in enumerate(vectors)],
        model=model.name,
        usage=EmbeddingsUsage(prompt_tokens=result.total_tokens, total_tokens=result.total_tokens),
    )


class EmbeddingsController(Controller):
    """Text embeddings from the server's models (all-MiniLM-L6-v2 by default)."""

    path = "/api/v1"
    tags = ["embeddings"]

    @post(
        "/embeddings",
        operation_id="createEmbeddings",
        guards=READ,
        status_code=200,
        opt={OPENAI_COMPATIBLE: True},
        responses=problem_responses(*AUTHENTICATED, 429, 503),
        summary="Embed texts (OpenAI-compatible)",
    )
    async def create_embeddings(
        self, tenant: Tenant, embeddings: Service, data: JSONBody[EmbeddingsRequest]
    ) -> EmbeddingsResponse:
        return await _embed(tenant, embeddings, data)

    @post(
        "/embeddings/generate",
        operation_id="generateEmbeddings",
        guards=READ,
        status_code=200,
        opt={OPENAI_COMPATIBLE: True},
        responses=problem_responses(*AUTHENTICATED, 429, 503),
        summary="Embed texts (alias of POST /embeddings)",
    )
    async def generate_embeddings(
        self, tenant: Tenant, embeddings: Service, data: JSONBody[EmbeddingsRequest]
    ) -> EmbeddingsResponse:
        return await _embed(tenant, embeddings, data)

    @get(
        "/models",
        operation_id="listModels",
        guards=READ,
        opt={OPENAI_COMPATIBLE: True},
        responses=problem_responses(*AUTHENTICATED),
        summary="The embedding and chat models this server offers, with their state",
    )
    async def list_models(
        self, embeddings: Service, generation: NamedDependency[GenerationService]
    ) -> ModelList:
        """Embedding models, then chat models (what `model` of /embeddings and /chat/completions takes)."""
        registry, chat = embeddings.registry, generation.generators
        cards = [model_card(s, registry.default_model) for s in registry.states()]
        if chat.settings.enabled:
            cards += [chat_model_card(s, chat.default_model) for s in chat.states()]
        return ModelList(object="list", data=cards)
