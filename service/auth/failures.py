"""Refused authentications: the messages, the metric and the audit record, for every key path."""

from __future__ import annotations

from service.audit.service import AuditBuffer
from service.errors import Unauthorized
from service.metrics import AUTH_FAILURES

INVALID_KEY = "The API key is not valid."
BAD_ID_MESSAGES = {
    "unknown": INVALID_KEY,
    "revoked": "The API key has been revoked.",
    "expired": "The API key has expired.",
}


def refused(
    audit: AuditBuffer, reason: str, message: str, *, key_id: str | None = None, tenant_id: str | None = None
) -> Unauthorized:
    """The 401 to raise for a failed authentication, counted and written to the audit log."""
    AUTH_FAILURES.labels(reason).inc()
    audit.auth_failure(reason, key_id=key_id, tenant_id=tenant_id)
    return Unauthorized(message)
