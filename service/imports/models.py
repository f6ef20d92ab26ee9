"""Request and response shapes of the imports API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

import msgspec

from service.pagination import Page


class ImportStatus(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    LOADED = "loaded"
    ERROR = "error"
    CANCELLED = "cancelled"


# The one definition of which statuses are which; the SQL in store.py is built from these.
ACTIVE = (ImportStatus.PENDING, ImportStatus.LOADING)  # still running (or waiting to): cancellable
FINISHED = (ImportStatus.LOADED, ImportStatus.ERROR, ImportStatus.CANCELLED)  # ended for good


class ImportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Import a vector database that an SDK stored on S5. The portal is the server's (s5.portal_url)."""

    source: Literal["s5"]
    manifest_path: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=1024,
            pattern=r"^[^\x00-\x1f]+$",
            description="home/vector-databases/{user_address}/{db_name}/manifest.json",
        ),
    ]
    user_address: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^0[xX][0-9a-fA-F]{40}$",
            description="The owner: 0x + 40 hex digits (any case)",
            extra={"rule": "0x followed by 40 hex digits"},
        ),
    ]
    encryption_key: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=100,
                description="AES-256-GCM key, 64 hex digits or base64; used for this import only, "
                "never stored, logged or returned",
            ),
        ]
        | None
    ) = None
    create_collection: bool = True


class ImportAccepted(msgspec.Struct, kw_only=True):
    import_id: str
    status: ImportStatus


class ImportProblem(msgspec.Struct, kw_only=True):
    """code: manifest_not_found, owner_mismatch, decryption_failed, invalid_manifest,
    dimension_mismatch, download_failed, timeout, quota_exceeded, cancelled, interrupted."""

    code: str
    message: str


class Import(msgspec.Struct, kw_only=True):
    import_id: str
    collection: str
    source: str
    manifest_path: str
    status: ImportStatus
    chunks_done: int
    chunks_total: int | None
    vectors_loaded: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    cached: bool
    error: ImportProblem | None = None


class ImportPage(Page[Import]):
    pass
