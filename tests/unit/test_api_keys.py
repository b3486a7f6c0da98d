"""API keys (docs/api-keys.md): scopes, origins, rate limits, revocation and the CLI, on a real PostgreSQL."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from fastapi.testclient import TestClient

from bridge.auth import ROUTE_SCOPES, UNLISTED_SCOPE, scope_of
from bridge.keys import KEY_MEASUREMENT, TokenBucket
from ops.cli import main as servingctl
from stack.database.api_keys import SCOPES, KeyRefused, check_request, create_key, key_id, normalise_origin, revoke_key
from tests.databases import fresh_database
from tests.unit.test_bridge_app import PHOTO, FakeTorchServe, bridge_under_test

REPO = Path(__file__).resolve().parents[2]
SHOP = "https://shop.example.com"


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database("keys_test", migrated=True) as dsn:
        yield dsn


def make_key(dsn: str, kind: str = "secret", **options: Any) -> str:
    with closing(psycopg2.connect(dsn)) as conn, conn:
        key, _ = create_key(conn, f"test {kind}", kind, "tests", **options)
    return key


def revoke(dsn: str, key: str) -> None:
    with closing(psycopg2.connect(dsn)) as conn, conn:
        assert revoke_key(conn, key, "tests") is not None


@pytest.fixture
def bridge(tmp_path: Path, dsn: str) -> Iterator[TestClient]:
    with bridge_under_test(tmp_path, FakeTorchServe, pg_dsn=dsn, keys_refresh_s=0.1) as (client, _, _):
        yield client


def refreshed(client: TestClient) -> None:
    """Wait out one refresh of the bridge's key view."""
    time.sleep(0.35)


# --- the rules, without a bridge ------------------------------------------------------------------------------


def test_token_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=2.0, depth=3.0)
    now = bucket.updated
    assert [bucket.take(now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(now) == pytest.approx(0.5)  # one token every half second
    assert bucket.take(now + 0.5) == 0.0
    assert bucket.take(now + 10) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refilled to its depth, no more


@pytest.mark.parametrize(("kind", "options", "why"), [
    ("publishable", {"scopes": ("results",)}, "publishable key"),
    ("secret", {"origins": (SHOP,)}, "secret key has no origins"),
    ("publishable", {"origins": ("shop.example.com",)}, "not an origin"),
    ("publishable", {"origins": ("https://shop.example.com/path",)}, "not an origin"),
    ("secret", {"scopes": ("everything",)}, "unknown scope"),
    ("secret", {"rate_per_s": 0.0}, "positive"),
    ("secret", {"burst": 5}, "burst needs a rate"),
])
def test_keys_that_would_be_unsafe_or_meaningless_are_refused(kind: str, options: dict[str, Any], why: str) -> None:
    request = {"scopes": None, "origins": (), "rate_per_s": None, "burst": None, **options}
    with pytest.raises(KeyRefused, match=why):
        check_request(kind, request["scopes"], request["origins"], request["rate_per_s"], request["burst"])


def test_defaults_publishable_keys_get_predict_and_jobs_secret_keys_everything() -> None:
    assert check_request("publishable", None, (SHOP + "/",), 5.0, None) == (("predict", "jobs"), (SHOP,), 5)
    assert check_request("secret", None, (), None, None) == (tuple(SCOPES), (), None)
    assert normalise_origin("HTTP://Localhost:3000") == "http://localhost:3000"
    assert key_id("pk_abcd1234_" + "x" * 32) == "abcd1234" and key_id("pk_abcd1234") is None


def test_every_keyed_operation_of_the_document_has_a_scope_of_its_own() -> None:
    spec = json.loads((REPO / "bridge" / "openapi.json").read_text())
    keyed = [path for path, ops in spec["paths"].items()
             if any("401" in op.get("responses", {}) for op in ops.values())]
    assert keyed, "no keyed operation in the document"
    unlisted = [p for p in keyed if not any(p.startswith(prefix) for prefix, _ in ROUTE_SCOPES)]
    assert unlisted == [], f"give these paths a scope in bridge.auth.ROUTE_SCOPES (else they need {UNLISTED_SCOPE})"
    assert scope_of("/v1/results") == "results" and scope_of("/v1/reports/compare") == "reports"
    assert scope_of("/v1/new-admin-thing") == UNLISTED_SCOPE


# --- a bridge on its own database -----------------------------------------------------------------------------


def test_without_keys_the_api_is_open_and_a_stored_key_closes_it_within_a_refresh(bridge: TestClient, dsn: str) -> None:
    assert bridge.post("/predictions/m", content=PHOTO).status_code == 200
    key = make_key(dsn)
    refreshed(bridge)
    refused = bridge.post("/predictions/m", content=PHOTO)
    assert refused.status_code == 401 and "missing API key" in refused.json()["message"]
    assert bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key}).status_code == 200


def test_a_publishable_key_predicts_and_submits_but_reads_no_results(bridge: TestClient, dsn: str) -> None:
    key = make_key(dsn, "publishable")
    secret = make_key(dsn)
    refreshed(bridge)
    headers = {"X-API-Key": key}
    assert bridge.post("/predictions/m", content=PHOTO, headers=headers).status_code == 200
    assert bridge.post("/v2/models/m/infer", headers=headers, json={"inputs": []}).status_code not in (401, 403)
    for path in ("/v1/results", "/v1/reports/latency?model=m", "/v1/rollouts"):
        response = bridge.get(path, headers=headers)
        assert response.status_code == 403, f"{path}: {response.status_code} {response.text}"
        assert response.json()["type"] == "Forbidden" and "secret key" in response.json()["message"]
    forbidden = bridge.post("/v1/feedback", headers=headers, json={"request_id": "x", "truth": "y"})
    assert forbidden.status_code == 403
    assert bridge.get("/v1/results", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_a_scoped_secret_key_gets_only_its_scopes(bridge: TestClient, dsn: str) -> None:
    key = make_key(dsn, scopes=("reports",))
    refreshed(bridge)
    assert bridge.get("/v1/reports/latency?model=m", headers={"X-API-Key": key}).status_code == 200
    assert bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key}).status_code == 403


def test_a_key_over_its_rate_gets_429_with_retry_after_and_is_counted(bridge: TestClient, dsn: str) -> None:
    key = make_key(dsn, "publishable", rate_per_s=0.5, burst=3)
    other = make_key(dsn, "publishable", rate_per_s=0.5, burst=3)
    refreshed(bridge)
    statuses = [bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key}).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    limited = bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key})
    assert limited.status_code == 429 and limited.json()["type"] == "TooManyRequests"
    assert limited.headers["retry-after"] == "2"  # a token every 2 s
    assert bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": other}).status_code == 200  # its own
    refreshed(bridge)
    points = [p for p in bridge.app.state.outbox.drain() if p["measurement"] == KEY_MEASUREMENT]  # type: ignore[attr-defined]
    counts = {(p["tags"]["key"], p["tags"]["outcome"]): p["fields"]["requests"] for p in points}
    assert counts[(key_id(key), "served")] == 3 and counts[(key_id(key), "limited")] == 3
    assert counts[(key_id(other), "served")] == 1


def test_a_revoked_key_is_refused_within_a_refresh_and_settings_keys_keep_working(
    tmp_path: Path, dsn: str
) -> None:
    key = make_key(dsn)
    with bridge_under_test(tmp_path, FakeTorchServe, pg_dsn=dsn, keys_refresh_s=0.1, api_keys=("from-settings",)) as (
        client, _, _
    ):
        assert client.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key}).status_code == 200
        revoke(dsn, key)
        refreshed(client)
        refused = client.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key})
        assert refused.status_code == 401 and "revoked" in refused.json()["message"]
        headers = {"X-API-Key": "from-settings"}
        assert client.get("/v1/results", headers=headers).status_code == 200
        assert client.post("/predictions/m", content=PHOTO, headers=headers).status_code == 200


def test_browsers_may_use_a_publishable_key_only_from_its_origins(bridge: TestClient, dsn: str) -> None:
    key = make_key(dsn, "publishable", origins=(SHOP,))
    secret = make_key(dsn)
    refreshed(bridge)
    preflight = bridge.options("/v1/jobs", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "x-api-key"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == SHOP
    assert "X-API-Key" in preflight.headers["access-control-allow-headers"]
    stranger = bridge.options("/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers

    answered = bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key, "Origin": SHOP})
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == SHOP
    assert "Retry-After" in answered.headers["access-control-expose-headers"]
    elsewhere = bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key, "Origin": "https://evil.example"})
    assert elsewhere.status_code == 403 and "access-control-allow-origin" not in elsewhere.headers
    from_a_page = bridge.get("/v1/results", headers={"X-API-Key": secret, "Origin": SHOP})
    assert from_a_page.status_code == 403 and "browser" in from_a_page.json()["message"]
    same_origin = bridge.post("/predictions/m", content=PHOTO, headers={"X-API-Key": key, "Origin": "http://testserver"})
    assert same_origin.status_code == 200  # the bridge's own page at /


# --- servingctl keys -------------------------------------------------------------------------------------------


def run_cli(dsn: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = servingctl([*argv, "--pg-dsn", dsn, "--actor", "alice"], stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def test_cli_creates_lists_and_revokes_keys_showing_a_secret_only_once(dsn: str) -> None:
    code, out, err = run_cli(dsn, "keys", "create", "web shop", "--publishable", "--origin", SHOP, "--rate", "5",
                             "--burst", "20")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("pk_") and "Keep it now" in err and "predict, jobs" in err
    code, out, _ = run_cli(dsn, "keys", "list", "--json")
    listed = json.loads(out)
    assert [k["id"] for k in listed] == [key_id(key)] and key not in out and "sha256" not in out
    assert listed[0]["origins"] == [SHOP] and listed[0]["rate_per_s"] == 5 and listed[0]["created_by"] == "alice"
    assert run_cli(dsn, "keys", "revoke", key_id(key) or "")[0] == 0
    assert run_cli(dsn, "keys", "list", "--json")[1].strip() == "[]"
    code, out, _ = run_cli(dsn, "keys", "list", "--all")
    assert "revoked" in out and "alice" in out
    code, _, err = run_cli(dsn, "keys", "revoke", key_id(key) or "")
    assert code == 4 and "no active API key" in err
    code, _, err = run_cli(dsn, "keys", "create", "leaky", "--publishable", "--scope", "results")
    assert code == 2 and "secret key" in err
