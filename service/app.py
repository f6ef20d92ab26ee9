"""create_app(settings): the one place that wires everything."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from prometheus_client import start_http_server

from service import __version__
from service.admin.controller import AdminController
from service.audit import store as audit_store
from service.audit.controller import AuditController, ClusterAuditController
from service.audit.service import AuditBuffer, AuditService
from service.auth.authenticator import Authenticator
from service.auth.cache import KeyCache
from service.auth.controller import KeysController, MeController
from service.auth.guards import PUBLIC_PATHS, BearerAuthMiddleware, provide_principal, provide_tenant
from service.auth.last_used import LastUsedRecorder
from service.auth.service import KeyService
from service.body import decode_body_strictly
from service.cluster.controller import ClusterController
from service.cluster.metrics import MetricsController, StorageGauges
from service.cluster.service import ClusterHealthService, ClusterService
from service.collections.controller import CollectionsController
from service.collections.indexer import IndexBuilder
from service.collections.service import CollectionService
from service.config import Settings
from service.db import Database
from service.db.notify import NotificationHub
from service.documents.controller import DocumentsController
from service.documents.service import DocumentService
from service.embeddings.controller import EmbeddingsController
from service.embeddings.service import EmbeddingService
from service.health import HealthController, Readiness
from service.hivehub.client import HiveHubClient
from service.imports.controller import ImportsController
from service.imports.runner import ImportRunner
from service.imports.service import ImportService
from service.inference.generators import GeneratorRegistry
from service.inference.registry import ModelRegistry
from service.jobs import BackgroundJobs
from service.lean_path import LeanPath
from service.mcp import controller as mcp_controller
from service.mcp.server import McpEndpoint
from service.mcp.service import McpService
from service.mcp.tools import Services as McpServices
from service.middleware import RequestContextMiddleware
from service.problems import problem_details_plugin
from service.query import reject_unknown_query_parameters
from service.quota import store as quota_store
from service.quota.controller import QuotasAdminController, UsageController
from service.quota.limiter import Limiter
from service.quota.middleware import TenantLimitsMiddleware, TenantRequests
from service.quota.service import QuotaService
from service.quota.usage import UsageMeter, UsageReporter, UsageService
from service.rag.answers import RagService
from service.rag.controller import AnswersController, ChatController
from service.rag.service import GenerationService
from service.sessions.controller import SessionKeysAdminController, SessionsController
from service.sessions.service import SessionService
from service.sessions.signing import KeyRing
from service.sessions.verifier import SessionVerifier
from service.tenants import store as tenant_store
from service.tenants.service import TenantService

log = logging.getLogger("vectorhive.app")

T = TypeVar("T")


def provide(value: T) -> Provide:
    """A dependency provider that closes over one object built in create_app."""

    def provider() -> T:
        return value

    return Provide(provider, sync_to_thread=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_request(request: Request[Any, Any, Any]) -> None:
    """before_request: refuse unknown query parameters and bodies that are not strictly the route's JSON."""
    await reject_unknown_query_parameters(request)
    await decode_body_strictly(request)


ASSETS_PATH = "/schema/assets"


def _api_reference_plugins() -> list[SwaggerRenderPlugin]:
    """Swagger UI from the installed swagger-ui-bundle package (ASSETS_PATH), never from a CDN."""
    return [
        SwaggerRenderPlugin(
            path=["/swagger", "/"],
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        )
    ]


def _api_reference_routes() -> list[Any]:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    @get("/docs", include_in_schema=False, sync_to_thread=False)
    def docs() -> Redirect:
        """The conventional address of the browsable API reference."""
        return Redirect("/schema/swagger")

    assets = create_static_files_router(
        path=ASSETS_PATH, directories=[swagger_ui_bundle.swagger_ui_path], include_in_schema=False
    )
    return [docs, assets]


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="vectorhive",
        version=__version__,
        description=(
            "Multi-tenant vector database service. Authenticate with 'Authorization: Bearer <API key>'. "
            "Errors are RFC 9457 application/problem+json."
        ),
        components=Components(
            security_schemes={
                "bearerAuth": SecurityScheme(type="http", scheme="bearer", description="vh_... key")
            }
        ),
        security=[{"bearerAuth": []}],
        use_handler_docstrings=True,
        render_plugins=_api_reference_plugins(),
    )


def create_app(settings: Settings, *, bind_metrics_port: bool = True) -> Litestar:
    """bind_metrics_port=False: metrics.port is served by another process (server.workers > 1)."""
    db = Database(settings.database)
    cache = KeyCache(
        ttl=settings.auth.api_key_cache_ttl,
        max_size=settings.auth.api_key_cache_size,
        negative_ttl=settings.auth.api_key_negative_cache_ttl,
        max_per_tenant=settings.auth.api_key_cache_per_tenant,
    )
    # Changes committed by any process on the database (revocations, suspensions, quotas) reach
    # this one's caches through LISTEN/NOTIFY; features subscribe here before the app starts.
    notifications = NotificationHub(lambda: db.url)
    cache.attach(notifications)
    recorder = LastUsedRecorder(db)
    indexer = IndexBuilder(db, settings.collections, parallel_workers=settings.index_builds.parallel_workers)
    hub = (
        HiveHubClient(settings.cluster)
        if settings.cluster.enabled and settings.cluster.hivehub_api_url is not None
        else None
    )
    limiter = Limiter(settings.rate_limiting.storage_uri)
    quotas = QuotaService(db, settings, limiter, hub)
    quotas.attach(notifications)
    meter = UsageMeter(db)
    audit_buffer = AuditBuffer(db)
    reporter = (
        UsageReporter(
            db, hub, settings.cluster.usage_report_interval, settings.cluster.usage_report_batch_size
        )
        if hub is not None
        else None
    )
    jobs = BackgroundJobs()
    metrics_port = settings.metrics.port if settings.metrics.enabled else None
    storage_gauges = StorageGauges(db)
    import_runner = ImportRunner(db, settings, indexer, quotas=quotas, meter=meter)
    generators = GeneratorRegistry(settings.generation)
    models = ModelRegistry(settings.embeddings)
    embeddings = EmbeddingService(models, settings.embeddings, quotas=quotas, meter=meter)
    collections = CollectionService(
        db,
        settings.collections,
        indexer,
        quotas=quotas,
        meter=meter,
        embeddings=embeddings,
        documents=settings.documents,
    )
    collections.attach(notifications)
    generation = GenerationService(generators, settings.generation, quotas=quotas, meter=meter)
    rag = RagService(db, collections, embeddings, generation, settings.rag)
    authenticator = Authenticator(
        db,
        settings.auth,
        cache,
        recorder,
        hub=hub,
        quotas=quotas,
        audit_buffer=audit_buffer,
        limiter=limiter,
        trusted_proxies=settings.server.trusted_proxies,
    )
    keys = KeyService(db, cache)
    tenants = TenantService(db, cache)
    documents = DocumentService(collections, embeddings, settings.documents)
    imports = ImportService(db, settings.s5, import_runner)
    usage = UsageService(db, meter)
    tenant_requests = TenantRequests(quotas, meter)

    # MCP tools call the same services as REST (service/mcp); the SDK's manager runs in the lifespan.
    mcp = (
        McpEndpoint(
            settings,
            authenticator,
            McpService(
                McpServices(
                    collections=collections,
                    documents=documents,
                    rag=rag,
                    generation=settings.generation.enabled,
                ),
                tenant_requests,
            ),
        )
        if settings.mcp.enabled
        else None
    )
    # Sessions: their tokens are accepted on every bearer path (the Authenticator hands them to the
    # verifier), and end with their session, parent key or tenant through the notification hub.
    keyring = KeyRing(db, settings.sessions)
    session_verifier = SessionVerifier(db, settings.sessions, keyring)
    session_verifier.attach(notifications, cache)
    authenticator.sessions = session_verifier
    session_service = SessionService(
        db,
        settings.sessions,
        keyring,
        session_verifier,
        collections,
        keys,
        tenants,
        quotas,
        imports,
    )
    session_service.attach(notifications)

    async def flush_usage() -> None:
        await meter.flush()
        await audit_buffer.flush()

    async def prune_old_rows() -> None:
        while True:
            async with db.transaction() as conn:
                usage_rows = await quota_store.prune_usage(conn, days=settings.usage.retention_days)
                audit_rows = await audit_store.prune(conn, days=settings.usage.audit_retention_days)
            if max(usage_rows, audit_rows) < 10_000:
                return

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await db.start()
        db.supervise()  # the embedded PostgreSQL, if any, is restarted when it dies
        await notifications.start()
        if settings.single_tenant:
            async with db.transaction() as conn:
                await tenant_store.ensure(conn, settings.auth.default_tenant_id, "Default tenant")
                await db.ensure_tenant_role(conn, settings.auth.default_tenant_id)
            if not _is_loopback(settings.server.host):
                log.warning(
                    "authentication is off (auth.require_authentication: false) and the server listens on "
                    "a non-loopback address: anyone who can reach it has ADMIN on the default tenant",
                    extra={"host": settings.server.host},
                )
        jobs.start("last-used-recorder", recorder.interval, recorder.flush)
        jobs.start("usage-flush", settings.usage.flush_interval, flush_usage)
        jobs.start("retention", 3600.0, prune_old_rows)
        jobs.start("rag-cache-prune", 60.0, rag.prune_cache)
        if reporter is not None:
            jobs.start("usage-report", reporter.interval, reporter.report_all)
        metrics_server = None
        if metrics_port is not None:
            jobs.start("storage-gauges", 30.0, storage_gauges.refresh)
            if bind_metrics_port:
                metrics_server, _ = start_http_server(metrics_port, addr=settings.metrics.host)
        await keyring.start()
        jobs.start("session-sweep", settings.sessions.sweep_interval_seconds, session_service.sweep)
        await indexer.recover()
        await import_runner.start()
        # Models load in the background (the default one is prepared on first start): the server
        # answers at once, and model endpoints say 503 model_loading until their model is ready.
        models.start()
        generators.start()  # chat models likewise
        try:
            yield
        finally:
            await generators.close()
            await models.close()
            # An unreachable database (down, or a partition that answers nothing) must not hold
            # the shutdown: checked once, and every database step below is bounded or skipped.
            await db.check_before_shutdown()
            await import_runner.close()
            await indexer.close()
            db.abandon(await jobs.stop(grace=1.0 if db.unreachable_at_shutdown else 10.0))
            await db.final_write("recording session uses (lost)", session_service.close)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            # Usage counted in memory and authentication failures reach the database before exit.
            await db.final_write("writing usage counts and authentication failures (lost)", flush_usage)
            await db.final_write("writing keys' last-used times (lost)", recorder.flush)
            await quotas.close()
            await limiter.close()
            if hub is not None:
                await hub.close()
            await notifications.close()
            await db.stop()

    app = Litestar(
        route_handlers=[
            HealthController,
            MeController,
            KeysController,
            CollectionsController,
            DocumentsController,
            EmbeddingsController,
            ImportsController,
            AdminController,
            QuotasAdminController,
            UsageController,
            AuditController,
            ClusterController,
            ClusterAuditController,
            ChatController,
            AnswersController,
            SessionsController,
            SessionKeysAdminController,
            *([MetricsController] if settings.metrics.enabled and metrics_port is None else []),
            *_api_reference_routes(),
            *(mcp_controller.route_handlers(mcp) if mcp is not None else []),
        ],
        # The one wiring place: every dependency a handler names, each closing over its object.
        dependencies={
            "principal": Provide(provide_principal, sync_to_thread=False),
            "tenant": Provide(provide_tenant, sync_to_thread=False),
            "readiness": provide(Readiness(db)),
            "keys": provide(keys),
            "tenants": provide(tenants),
            "collections": provide(collections),
            "imports": provide(imports),
            "embeddings": provide(embeddings),
            "documents": provide(documents),
            "quotas": provide(quotas),
            "usage": provide(usage),
            "audit": provide(AuditService(db, audit_buffer)),
            "cluster": provide(ClusterService(tenants, usage, quotas, authenticator)),
            "cluster_health": provide(ClusterHealthService(db, settings, limiter, jobs, import_runner, hub)),
            "storage_gauges": provide(storage_gauges),
            "generation": provide(generation),
            "rag": provide(rag),
            "sessions": provide(session_service),
        },
        middleware=[
            DefineMiddleware(BearerAuthMiddleware, authenticator=authenticator, exclude=PUBLIC_PATHS),
            DefineMiddleware(TenantLimitsMiddleware, requests=tenant_requests),
        ],
        before_request=check_request,
        plugins=[problem_details_plugin(max_body_bytes=settings.collections.max_batch_bytes)],
        lifespan=[lifespan, *([mcp.lifespan] if mcp is not None else [])],
        # Not read by the service (handlers get their objects from the providers above): the
        # built objects, for tests that reach into a running app.
        state=State(
            {
                "settings": settings,
                "db": db,
                "key_cache": cache,
                "indexer": indexer,
                "collection_service": collections,
                "embedding_service": embeddings,
                "import_runner": import_runner,
                "rag_service": rag,
                "session_service": session_service,
            }
        ),
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
        # Room for a full upsert batch plus JSON punctuation; larger bodies get 413.
        request_max_body_size=settings.collections.max_batch_bytes,
    )
    # Litestar builds its middleware per route, so routing failures (404, 405) never pass through it.
    # The request id and the access log must cover every response: wrap the outermost handler.
    inner = app.asgi_handler
    if settings.server.lean_path:
        # The hot collection routes without Litestar's per-request machinery, same checks.
        inner = LeanPath(
            app,
            inner,
            authenticator=authenticator,
            requests=tenant_requests,
            max_body_bytes=settings.collections.max_batch_bytes,
        )
    app.asgi_handler = RequestContextMiddleware(inner, access_log_enabled=settings.server.access_log)
    return app
