"""Strict JSON request bodies, decoded once with msgspec before Litestar sees them.

Litestar converts bodies with msgspec's lax mode (strict=False), which turns `"top_k": "5"` into 5
and `"vector": ["1", 0, 0]` into floats, and it parses any Content-Type as JSON. This before_request
hook decodes the body of every route that declares one straight into the route's type, strictly,
and hands the result to Litestar (which passes an already-typed value through unchanged), so the
body is decoded once and every type error is refused alike. A refusal names the first problem in
`detail`, with its field, in words (allowed enum values, what a name may contain) rather than a
regex or a type tag.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import msgspec
from litestar import Request
from litestar.handlers.base import BaseRouteHandler
from litestar.utils.scope.state import ScopeState

from service.errors import InvalidRequest, UnsupportedMediaType


class BodySpec(msgspec.Struct, frozen=True):
    decoder: msgspec.json.Decoder[Any]
    type: Any
    name: str


# Kept on the handler itself (its opt mapping): an id()-keyed table handed a gone app's spec to a
# later app's handler that reused the id (the tests build many apps); handlers take no weakrefs.
_SPEC = "_vectorhive_body_spec"


def body_spec(handler: BaseRouteHandler) -> BodySpec | None:
    """How a handler's `data` is decoded (None: the handler takes no body)."""
    if _SPEC not in handler.opt:
        field = handler.parsed_fn_signature.parameters.get("data")
        if field is None:
            handler.opt[_SPEC] = None
        else:
            annotation = field.annotation
            handler.opt[_SPEC] = BodySpec(
                decoder=msgspec.json.Decoder(annotation, strict=True),
                type=annotation,
                name=getattr(annotation, "__name__", "JSON"),
            )
    spec: BodySpec | None = handler.opt[_SPEC]
    return spec


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def decode_body_strictly(request: Request[Any, Any, Any]) -> None:
    """A before_request hook: decode the body into the route's type, or refuse it (400/415)."""
    spec = body_spec(request.route_handler)
    if spec is None:
        return
    content_type = request.headers.get("content-type")
    check_content_type(content_type)
    ScopeState.from_scope(request.scope).json = decode_strictly(spec, await request.body())


def check_content_type(content_type: str | None) -> None:
    """No Content-Type at all is read as JSON (RFC 9110 lets the recipient decide); any other type
    than JSON is refused rather than guessed at."""
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType(
            "The request body must be JSON (Content-Type: application/json), "
            f"not {content_type.split(';')[0]}. With curl, use --json or -H 'Content-Type: application/json'."
        )


def decode_strictly(spec: BodySpec, body: bytes) -> Any:
    """The body as the route's type, or a 400 naming the first problem."""
    if not body.strip():
        raise InvalidRequest.field(
            None, "empty body", f"The request needs a JSON body (a {spec.name} object); it was empty."
        )
    try:
        return spec.decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_problem(exc, spec.type) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest.field(None, str(exc), f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        # msgspec recurses per level of nesting; Python's recursion limit (about 1,000) ends it.
        raise InvalidRequest.field(
            None,
            "nested too deeply",
            "The request body nests arrays and objects too deeply (about 1,000 levels or more).",
        ) from None


# --- msgspec's messages in words --------------------------------------------------------------------

_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _path_parts(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(path):
        parts.append(name if name else (int(index) if index.isdigit() else -1))
    return parts


def _unwrap(info: Any) -> Any:
    """Optional[T] -> T (the member that is not None); Annotated metadata is kept for its rule."""
    if isinstance(info, msgspec.inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(members) == 1:
            return members[0]
    return info


def _type_at(root: Any, parts: list[str | int]) -> Any:
    """The msgspec.inspect type at a path of struct fields and list/dict items, or None."""
    info: Any = msgspec.inspect.type_info(root)
    for part in parts:
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.Metadata):
            info = _unwrap(info.type)
        if isinstance(info, msgspec.inspect.StructType) and isinstance(part, str):
            info = next((f.type for f in info.fields if f.encode_name == part), None)
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType)) and isinstance(part, int):
            info = info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        else:
            return None
        if info is None:
            return None
    return _unwrap(info)


def _rule(info: Any) -> str | None:
    if isinstance(info, msgspec.inspect.Metadata) and info.extra:
        rule = info.extra.get("rule")
        return str(rule) if rule else None
    return None


def _field_name(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]" if part >= 0 else "[...]"
        else:
            text += f".{part}" if text else part
    return text


def _words(problem: str, parts: list[str | int], root: Any) -> tuple[list[str | int], str]:
    """(path of the offending field, a sentence about it) for one msgspec message."""
    missing = re.fullmatch(r"Object missing required field `(.+)`", problem)
    if missing:
        return [*parts, missing.group(1)], "is required"
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", problem)
    if unknown:
        info = _unwrap(_type_at(root, parts))
        if isinstance(info, msgspec.inspect.Metadata):
            info = _unwrap(info.type)
        known = (
            f"; known fields: {', '.join(f.encode_name for f in info.fields)}"
            if isinstance(info, msgspec.inspect.StructType)
            else ""
        )
        return [*parts, unknown.group(1)], f"is not a known field{known}"
    info = _type_at(root, parts)
    enum = re.fullmatch(r"Invalid enum value (.+)", problem)
    if enum:
        target = info.type if isinstance(info, msgspec.inspect.Metadata) else info
        if isinstance(target, msgspec.inspect.EnumType) and issubclass(target.cls, Enum):
            allowed = ", ".join(str(member.value) for member in target.cls)
            return parts, f"{enum.group(1)} is not one of the allowed values: {allowed}"
        return parts, problem
    rule = _rule(info)
    if rule and re.match(r"Expected `str` (matching|of length)", problem):
        return parts, f"must be {rule}"
    return parts, problem


def validation_problem(error: msgspec.ValidationError, root: Any) -> InvalidRequest:
    """A 400 whose detail names the first problem of a body that decoded but did not fit its type."""
    problem, _, path = str(error).partition(" - at `")
    parts, message = _words(problem, _path_parts(path.rstrip("`").removeprefix("$")), root)
    field = _field_name(parts) or None
    if field is None:
        detail = message
    elif message.startswith(("is ", "must ")):
        detail = f"{field} {message}"
    else:
        detail = f"{field}: {message}"
    return InvalidRequest.field(field, message, detail)
