"""The web page's routes (bridge/web.py): the page at / and its files need no key, /web/config.json says what the
page needs from the settings, nothing else of the disk is served, and none of it is in the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from bridge import web
from bridge.app import create_app
from bridge.settings import Settings


def client(**settings: Any) -> TestClient:
    """The app without its lifespan: the page's routes use nothing but the settings."""
    return TestClient(create_app(Settings(**settings)))


def test_the_page_needs_no_key_even_when_the_api_has_keys() -> None:
    response = client(api_keys=("secret-key",), web_key="publishable-key").get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "Sell an item" in response.text
    assert 'capture="environment"' in response.text and 'accept="image/*"' in response.text
    assert "secret-key" not in response.text and "publishable-key" not in response.text  # the key is fetched, not baked
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_config_tells_the_page_its_key_limit_and_models() -> None:
    response = client(api_keys=("secret-key",), web_key="publishable-key", max_body_bytes=1234).get("/web/config.json")
    assert response.status_code == 200
    assert response.json() == {"api_key": "publishable-key", "max_body_bytes": 1234,
                               "models": ["classifier", "price", "similar"]}
    assert response.headers["cache-control"] == "no-store"


def test_config_without_a_web_key_gives_none_and_never_the_secret_keys() -> None:
    response = client(api_keys=("secret-key",)).get("/web/config.json")
    assert response.json()["api_key"] is None
    assert "secret-key" not in response.text


@pytest.mark.parametrize(("name", "content_type"), [
    ("app.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("index.html", "text/html; charset=utf-8"),
])
def test_the_page_files_have_their_content_types(name: str, content_type: str) -> None:
    response = client().get(f"/web/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (web.WEB_DIR / name).read_bytes()


def test_the_module_sends_the_web_key_and_checks_the_limit() -> None:
    """What the page does with its config (the browser test runs it; this keeps the names in step)."""
    script = (web.WEB_DIR / "app.js").read_text()
    assert '"/web/config.json"' in script
    assert 'headers["X-API-Key"] = config.api_key' in script
    assert "config.max_body_bytes" in script
    assert "/v1/jobs?models=" in script and "?wait=" in script


def asgi_get(app: Any, raw_path: str) -> int:
    """The status of a GET whose path is sent as it is (an HTTP client would resolve the ``..`` first)."""
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": unquote(raw_path),
             "raw_path": raw_path.encode(), "root_path": "", "query_string": b"", "headers": [(b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.mark.parametrize("path", [
    "/web/../settings.py", "/web/..%2Fsettings.py", "/web/%2e%2e/settings.py", "/web/..", "/web/web.py",
    "/web/../../bridge/settings.py", "/web/%2Fetc%2Fpasswd", "/web/.env", "/web/", "/web/APP.JS",
])
def test_nothing_but_the_page_files_is_served(path: str) -> None:
    assert asgi_get(create_app(Settings()), path) == 404


def test_a_traversal_through_an_http_client_is_a_404_too() -> None:
    response = client().get("/web/../settings.py")
    assert response.status_code == 404
    assert response.json()["code"] == 404  # the bridge's envelope


def test_the_page_is_no_api_operation() -> None:
    paths = create_app(Settings()).openapi()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/web")]


@pytest.mark.parametrize("web_key", ["sk_abcd1234_" + "x" * 32, "secret-key"])
def test_a_secret_key_is_never_given_to_the_page(web_key: str) -> None:
    with pytest.raises(ValueError, match="publishable key"):
        Settings(api_keys=("secret-key",), web_key=web_key)
