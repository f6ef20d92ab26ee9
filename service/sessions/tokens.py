"""EdDSA JWTs (RFC 7519 compact JWS with Ed25519, RFC 8037), and the sealing of private keys.

Only what we issue is accepted: header {"alg": "EdDSA", "typ": "JWT", "kid"}; any other
algorithm (including "none") is refused before anything else is looked at. Two audiences keep
the two kinds of token apart: a delegation token (`<issuer>:delegation`) is only good for
POST /sessions/create, a session token (`<issuer>:session`) only as a bearer credential.

Private signing keys are stored sealed with AES-256-GCM under a key derived (HKDF-SHA256) from
the configured secret, the kid as associated data (a sealed key moved to another kid does not
open). The secret and the private keys never reach a log or an error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DELEGATION = "delegation"
SESSION = "session"
READ_ONLY: Literal["read_only"] = "read_only"
MAX_TOKEN_BYTES = 8192


class TokenError(Exception):
    """A token that is refused; reason is a stable code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Header(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    alg: str
    kid: str
    typ: str = "JWT"


class Claims(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Both kinds of token. tid: tenant; pkid: parent key id (None for a keyless single-tenant
    principal); col: collections; perm: read_only; mq: max queries; sid: the session (session
    tokens); ttl: longest session a delegation may be exchanged for (delegation tokens)."""

    iss: str
    aud: str
    exp: int
    iat: int
    jti: str
    tid: str
    col: list[str]
    perm: Literal["read_only"] = READ_ONLY
    pkid: str | None = None
    mq: int | None = None
    sid: str | None = None
    ttl: int | None = None


_encode = msgspec.json.Encoder().encode
_decode_header = msgspec.json.Decoder(Header).decode
_decode_claims = msgspec.json.Decoder(Claims).decode


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if "=" in text:
        raise ValueError("padding is not allowed")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def looks_like_jwt(token: str) -> bool:
    """Cheap: our API keys (vh_..., vhop_...) never contain a dot; a JWT has exactly two."""
    return token.count(".") == 2 and token.startswith("eyJ")


def new_kid() -> str:
    return "ed25519-" + secrets.token_hex(8)


def new_token_id() -> str:
    return secrets.token_urlsafe(16)


def sign(claims: Claims, key: Ed25519PrivateKey, kid: str) -> str:
    header = b64url(_encode(Header(alg="EdDSA", kid=kid)))
    payload = b64url(_encode(claims))
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


class Unverified(msgspec.Struct, kw_only=True):
    """A token split and decoded, its signature not yet checked."""

    header: Header
    claims: Claims
    signing_input: bytes
    signature: bytes


def parse(token: str) -> Unverified:
    if len(token) > MAX_TOKEN_BYTES or not looks_like_jwt(token):
        raise TokenError("malformed", "The token is not a JWT this service issued.")
    header_part, payload_part, signature_part = token.split(".")
    try:
        header = _decode_header(b64url_decode(header_part))
        claims = _decode_claims(b64url_decode(payload_part))
        signature = b64url_decode(signature_part)
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise TokenError("malformed", "The token is not a JWT this service issued.") from None
    if header.alg != "EdDSA" or header.typ != "JWT":
        raise TokenError("malformed", "The token's algorithm is not EdDSA; no other is accepted.")
    return Unverified(
        header=header,
        claims=claims,
        signing_input=f"{header_part}.{payload_part}".encode("ascii"),
        signature=signature,
    )


def check_signature(token: Unverified, key: Ed25519PublicKey) -> None:
    try:
        key.verify(token.signature, token.signing_input)
    except InvalidSignature:
        raise TokenError("bad_signature", "The token's signature is not valid.") from None


def check_claims(claims: Claims, *, issuer: str, kind: str, now: float) -> None:
    if claims.iss != issuer:
        raise TokenError("wrong_issuer", "The token was issued by someone else.")
    if claims.aud != f"{issuer}:{kind}":
        what = "a session token" if kind == SESSION else "a delegation token"
        raise TokenError("wrong_audience", f"The token's audience is '{claims.aud}'; this needs {what}.")
    if claims.exp <= now:
        raise TokenError("expired", "The token has expired.")
    if claims.iat > now + 60:  # a minute of clock skew between replicas
        raise TokenError("not_yet_valid", "The token was issued in the future.")


# -- sealing private keys ---------------------------------------------------------------------------


def sealing_key(secret: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"vectorhive session signing keys v1"
    ).derive(secret.encode("utf-8"))
    return AESGCM(derived)


def seal(aead: AESGCM, kid: str, key: Ed25519PrivateKey) -> bytes:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, raw, kid.encode("utf-8"))


def unseal(aead: AESGCM, kid: str, sealed: bytes) -> Ed25519PrivateKey | None:
    """None when the key was sealed under another secret (or for another kid)."""
    try:
        raw = aead.decrypt(sealed[:12], sealed[12:], kid.encode("utf-8"))
    except (InvalidTag, ValueError):
        return None
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def jwk(kid: str, public: bytes) -> dict[str, Any]:
    """A public key as RFC 8037 spells it."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(public), "kid": kid, "use": "sig", "alg": "EdDSA"}
