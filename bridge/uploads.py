"""Reading one photo from a request: a raw body (``curl -T``, ``--data-binary``) or a one-file form."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from bridge.errors import BadRequest, EmptyBody, PayloadTooLarge, RequestTimeout

RAW_DEFAULT_TYPE = "application/octet-stream"
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
MAX_PARAMS = 8
MAX_PARAM_LENGTH = 200


async def read_limited(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s``, refusing more than ``max_bytes`` (by Content-Length, or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from exc
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection before the body was complete") from exc
    return b"".join(chunks)


@dataclass(frozen=True)
class Upload:
    """One photo and the model parameters that came with it (query string or form fields)."""

    photo: bytes
    content_type: str
    params: dict[str, str]


def model_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Validated model parameters (e.g. ``k=3``, ``embedding=true``) passed through to the handler."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if not PARAM_NAME.fullmatch(name) or len(value) > MAX_PARAM_LENGTH:
            raise BadRequest(f"invalid parameter {name[:40]!r}: names are identifiers, values ≤ {MAX_PARAM_LENGTH} chars")
        params[name] = value
    if len(params) > MAX_PARAMS:
        raise BadRequest(f"at most {MAX_PARAMS} parameters per request")
    return params


async def read_photo(
    request: Request, max_bytes: int, timeout_s: float = 10.0, own: frozenset[str] = frozenset()
) -> Upload:
    """The photo (raw body, or the one file of a multipart form), its content type, and its parameters: the query
    string's (but the route's ``own`` parameters, e.g. a job's ``models``) and the form's other fields."""
    body = await read_limited(request, max_bytes, timeout_s)
    content_type = request.headers.get("content-type", "").strip()
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in own]
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        # curl --data-binary @photo.jpg sends this type by default: the body is the photo itself.
        content_type = RAW_DEFAULT_TYPE
    if content_type.lower().startswith("multipart/form-data"):
        request._body = body  # let Starlette parse the form from the bytes already read
        try:
            form = await request.form(max_files=2, max_fields=MAX_PARAMS + 1)
        except Exception as exc:
            raise BadRequest(f"malformed multipart form: {exc}") from exc
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise BadRequest(f"a multipart form must carry exactly one file; it carried {len(files)}")
        pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        body = await files[0].read()
        content_type = files[0].content_type or RAW_DEFAULT_TYPE
    if not body:
        raise EmptyBody("empty body: send the photo bytes (e.g. curl -T photo.jpg URL)")
    if not content_type.isascii() or not content_type.isprintable():
        raise BadRequest("Content-Type must be printable ASCII")
    return Upload(body, content_type or RAW_DEFAULT_TYPE, model_params(pairs))
