"""The web page at ``/``: "sell an item" in a browser, a phone's included.

A photo (the camera, or one chosen) goes to a job for the page's models (``POST /v1/jobs``), long-polled until it
is done; the category, the price with its interval and the similar catalogue items fill in, each model's refusal
in its own panel. The page is static files (``bridge/web/``: HTML, CSS and an ES module, no build step) that call
the public API like any client; ``GET /web/config.json`` tells it what it needs from the settings: the publishable
key it sends (``web_key``, never a secret one), the body limit it checks before uploading, and the models.

Nothing here is an API operation: the routes stay out of the OpenAPI document and need no key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from bridge.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_MODELS = ("classifier", "price", "similar")  # the panels of the page, in order
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page talks to its own origin only; the preview is a blob: URL of the chosen photo.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag): a new version of the page is seen at once
}

router = APIRouter(include_in_schema=False)


def _files() -> dict[str, Path]:
    """The files the page may load, by name: only those in ``bridge/web/`` itself, of a known type."""
    if not WEB_DIR.is_dir():
        return {}
    return {path.name: path for path in WEB_DIR.iterdir() if path.is_file() and path.suffix in MEDIA_TYPES}


FILES = _files()


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
async def page() -> FileResponse:
    """The page itself."""
    return await static_file("index.html")


@router.get("/web/config.json")
async def config(request: Request) -> JSONResponse:
    """What the page needs from the settings."""
    settings = request.app.state.settings
    body = {"api_key": settings.web_key or None, "max_body_bytes": settings.max_body_bytes, "models": list(PAGE_MODELS)}
    return JSONResponse(body, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@router.get("/web/{name}")
async def static_file(name: str) -> FileResponse:
    """One of the page's files; any other name (a path included) is a 404."""
    path = FILES.get(name)
    if path is None:
        raise NotFound(f"no such file of the web page: {name[:100]!r}")
    return _file(path)
