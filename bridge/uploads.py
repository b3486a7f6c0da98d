"""Reading one photo from a request: a raw body (``curl -T``, ``--data-binary``) or a one-file form."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from bridge.errors import BadRequest, EmptyBody, PayloadTooLarge

RAW_DEFAULT_TYPE = "application/octet-stream"


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than ``max_bytes`` (by Content-Length, or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length must be a non-negative integer")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_photo(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """(photo bytes, content type to forward); a multipart form must carry exactly one file."""
    body = await read_limited(request, max_bytes)
    content_type = request.headers.get("content-type", "").strip()
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        # curl --data-binary @photo.jpg sends this type by default: the body is the photo itself.
        content_type = RAW_DEFAULT_TYPE
    if content_type.lower().startswith("multipart/form-data"):
        request._body = body  # let Starlette parse the form from the bytes already read
        try:
            form = await request.form(max_files=2, max_fields=20)
        except Exception as exc:  # noqa: BLE001 - malformed multipart of any kind is the client's error
            raise BadRequest(f"malformed multipart form: {exc}") from exc
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise BadRequest(f"a multipart form must carry exactly one file; it carried {len(files)}")
        body = await files[0].read()
        content_type = files[0].content_type or RAW_DEFAULT_TYPE
    if not body:
        raise EmptyBody("empty body: send the photo bytes (e.g. curl -T photo.jpg URL)")
    return body, content_type or RAW_DEFAULT_TYPE
