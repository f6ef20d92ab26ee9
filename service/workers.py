"""`vectorhive serve` with server.workers > 1: one parent process, N uvicorn workers on one port.

The parent starts the embedded PostgreSQL (when database.url is not set), runs the migrations and
prepares the default models (download and conversion), once; it then hands every worker the same
settings, with the database's URL, through the environment (SETTINGS_ENV, a JSON document: it
holds secrets, and a process's environment is readable only by its own OS user). Each worker
builds its own app with create_app: its own pool, caches (kept coherent by LISTEN/NOTIFY, as
across replicas), models and background jobs (usage flushes, retention, index builds and imports
claim their rows, so they are safe per process).

Prometheus metrics are summed over the workers: prometheus_client's multiprocess mode, in a
private temporary folder. /metrics on the API port reads all workers' figures; metrics.port, if
set, is served by the parent, the one process that can bind it. This process's own collectors
(service.pool's cache statistics) are not in that aggregate; GET /api/v1/cluster/health shows them
for the worker that answers.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from service.config import Settings

SETTINGS_ENV = "VECTORHIVE_WORKER_SETTINGS"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it

log = logging.getLogger("vectorhive.workers")


def app_from_environment() -> Any:
    """uvicorn's factory in each worker: the settings the parent wrote into SETTINGS_ENV."""
    from service.app import create_app
    from service.logs import configure_logging

    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    configure_logging(settings.server.log_level)
    if os.environ.get(METRICS_DIR_ENV):
        from prometheus_client import multiprocess

        # Drops this worker's live gauges (queue lengths, active generations) when it exits.
        pid = os.getpid()
        atexit.register(lambda: multiprocess.mark_process_dead(pid))  # type: ignore[no-untyped-call]
    # metrics.port belongs to the parent: a worker never binds it.
    return create_app(settings, bind_metrics_port=False)


def serve_workers(settings: Settings, make_config: Callable[..., Any]) -> int:
    """Run settings.server.workers worker processes until SIGINT/SIGTERM; make_config(app, **options)
    is the uvicorn.Config every server uses (service.commands.serve.uvicorn_config)."""
    from uvicorn.supervisors import Multiprocess

    from service.collections.indexer import embedded_maintenance_workers
    from service.db.embedded import EmbeddedPostgres
    from service.db.migrate import upgrade_to_head

    worker = msgspec.convert(msgspec.to_builtins(settings), Settings)  # a copy the workers get
    embedded: EmbeddedPostgres | None = None
    stop_supervising = threading.Event()
    metrics_dir: str | None = None
    metrics_server: Any = None
    try:
        url = settings.database.url
        if url is None:
            embedded = EmbeddedPostgres(Path(settings.database.data_dir))
            url = embedded.start()
            worker.database.url = url
            if worker.index_builds.parallel_workers is None:
                worker.index_builds.parallel_workers = embedded_maintenance_workers()
            threading.Thread(
                target=_supervise, args=(embedded, stop_supervising), name="embedded-pg", daemon=True
            ).start()
        if settings.database.migrate_on_startup:
            upgrade_to_head(url)
        worker.database.migrate_on_startup = False  # done, once, here
        _prepare_models(settings)
        if settings.metrics.enabled:
            metrics_dir = tempfile.mkdtemp(prefix="vectorhive-metrics-")
            os.environ[METRICS_DIR_ENV] = metrics_dir
            if settings.metrics.port is not None:
                from prometheus_client import start_http_server

                from service.metrics import exposition_registry

                metrics_server, _ = start_http_server(
                    settings.metrics.port, addr=settings.metrics.host, registry=exposition_registry()
                )
        os.environ[SETTINGS_ENV] = msgspec.json.encode(worker).decode()
        config = make_config(
            "service.workers:app_from_environment", factory=True, workers=settings.server.workers
        )
        sockets = [config.bind_socket()]
        log.info("starting worker processes", extra={"workers": settings.server.workers})
        Multiprocess(config, sockets=sockets).run()
        return 0
    finally:
        os.environ.pop(SETTINGS_ENV, None)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if metrics_dir is not None:
            os.environ.pop(METRICS_DIR_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        stop_supervising.set()
        if embedded is not None:
            embedded.stop()


def _prepare_models(settings: Settings) -> None:
    """Download and convert the default models once, here, before the workers load them (each
    worker preparing them at the same time would race on the same files). A failure is left to the
    workers to report, as a single server does (their model endpoints answer 503)."""
    from service.inference.base import local_model_path
    from service.inference.minilm import prepare_default as prepare_embedding
    from service.inference.smollm2 import prepare_default as prepare_chat

    sections: list[tuple[bool, Mapping[str, Any], str, Callable[[Path], Path]]] = [
        (
            settings.embeddings.enabled,
            settings.embeddings.models,
            settings.embeddings.cache_dir,
            prepare_embedding,
        ),
        (
            settings.generation.enabled,
            settings.generation.models,
            settings.generation.cache_dir,
            prepare_chat,
        ),
    ]
    for enabled, models, cache_dir, prepare in sections:
        for name, model in models.items() if enabled else ():
            if model.url is None and model.path == "default":
                try:
                    local_model_path(model.path, cache_dir, prepare)
                except Exception as exc:
                    log.warning("could not prepare a model", extra={"model": name, "error": str(exc)})


def _supervise(embedded: Any, stop: threading.Event) -> None:
    """The embedded PostgreSQL is restarted when it dies, as a single server's Database.supervise does."""
    while not stop.wait(1.0):
        try:
            if embedded.restart_if_down():
                log.warning("the embedded PostgreSQL had stopped; restarted it")
        except Exception:
            log.warning("could not restart the embedded PostgreSQL yet; retrying", exc_info=True)
