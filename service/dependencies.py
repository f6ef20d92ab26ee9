"""Litestar dependency providers: the principal and the services, from the app's state."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import Provide

from service.auth.principal import Principal
from service.auth.service import KeyService
from service.collections.service import CollectionService
from service.documents.service import DocumentService
from service.embeddings.service import EmbeddingService
from service.imports.service import ImportService
from service.quota.service import QuotaService
from service.quota.usage import UsageService
from service.rag.answers import RagService
from service.rag.service import GenerationService
from service.sessions.service import SessionService
from service.tenants.service import TenantService


def _principal(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal = request.user
    return principal


def _keys(request: Request[Any, Any, Any]) -> KeyService:
    service: KeyService = request.app.state.key_service
    return service


def _collections(request: Request[Any, Any, Any]) -> CollectionService:
    service: CollectionService = request.app.state.collection_service
    return service


def _embeddings(request: Request[Any, Any, Any]) -> EmbeddingService:
    service: EmbeddingService = request.app.state.embedding_service
    return service


def _documents(request: Request[Any, Any, Any]) -> DocumentService:
    service: DocumentService = request.app.state.document_service
    return service


def _imports(request: Request[Any, Any, Any]) -> ImportService:
    service: ImportService = request.app.state.import_service
    return service


def _tenants(request: Request[Any, Any, Any]) -> TenantService:
    service: TenantService = request.app.state.tenant_service
    return service


def _quotas(request: Request[Any, Any, Any]) -> QuotaService:
    service: QuotaService = request.app.state.quota_service
    return service


def _usage(request: Request[Any, Any, Any]) -> UsageService:
    service: UsageService = request.app.state.usage_service
    return service


def _generation(request: Request[Any, Any, Any]) -> GenerationService:
    service: GenerationService = request.app.state.generation_service
    return service


def _rag(request: Request[Any, Any, Any]) -> RagService:
    service: RagService = request.app.state.rag_service
    return service


def _sessions(request: Request[Any, Any, Any]) -> SessionService:
    service: SessionService = request.app.state.session_service
    return service


DEPENDENCIES = {
    "quotas": Provide(_quotas, sync_to_thread=False),
    "usage": Provide(_usage, sync_to_thread=False),
    "principal": Provide(_principal, sync_to_thread=False),
    "keys": Provide(_keys, sync_to_thread=False),
    "tenants": Provide(_tenants, sync_to_thread=False),
    "collections": Provide(_collections, sync_to_thread=False),
    "imports": Provide(_imports, sync_to_thread=False),
    "embeddings": Provide(_embeddings, sync_to_thread=False),
    "documents": Provide(_documents, sync_to_thread=False),
    "generation": Provide(_generation, sync_to_thread=False),
    "rag": Provide(_rag, sync_to_thread=False),
    "sessions": Provide(_sessions, sync_to_thread=False),
}
