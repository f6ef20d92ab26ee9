"""The API key format and its hashing.

    vh_<key id>_<secret>     tenant keys
    vhop_<key id>_<secret>   operator keys

The key id (12 base32 characters) is public: it names the key in lists, logs and revocations.
The secret is 32 random bytes (256 bits) in URL-safe base64; only its argon2id hash is stored.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TENANT_PREFIX = "vh"
OPERATOR_PREFIX = "vhop"
KEY_ID_LENGTH = 12
_KEY_RE = re.compile(r"(vh|vhop)_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")

# argon2-cffi's defaults are RFC 9106's second recommended profile (argon2id, t=3, 64 MiB, p=4).
_hasher = PasswordHasher()


class KeyKind(StrEnum):
    TENANT = "tenant"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: KeyKind
    key_id: str
    secret: str


def new_key_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:KEY_ID_LENGTH]


def new_key(kind: KeyKind) -> tuple[str, ParsedKey]:
    """Return (the full key to show once, its parts)."""
    parsed = ParsedKey(kind=kind, key_id=new_key_id(), secret=secrets.token_urlsafe(32))
    prefix = TENANT_PREFIX if kind is KeyKind.TENANT else OPERATOR_PREFIX
    return f"{prefix}_{parsed.key_id}_{parsed.secret}", parsed


def parse_key(token: str) -> ParsedKey | None:
    match = _KEY_RE.fullmatch(token)
    if match is None:
        return None
    kind = KeyKind.TENANT if match.group(1) == TENANT_PREFIX else KeyKind.OPERATOR
    return ParsedKey(kind=kind, key_id=match.group(2), secret=match.group(3))


def hash_secret(secret: str) -> str:
    """argon2id; slow on purpose (tens of ms): call it off the event loop."""
    return _hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    """argon2id verification; slow on purpose: call it off the event loop."""
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False


def fingerprint(token: str) -> bytes:
    """The fast hash that keys the verified-key cache: never the key itself in memory maps."""
    return hashlib.blake2b(token.encode("utf-8", "surrogateescape"), digest_size=32).digest()
