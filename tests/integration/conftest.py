"""The real stack for integration tests: started here when not running, stopped again afterwards."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest
import requests

from archive_scripts.photos import sample_photo
from stack.__main__ import build_archives
from stack.services import Service, TorchServe, all_services
from stack.settings import DATABASE, StackSettings

BRIDGE = "http://127.0.0.1:8000"
TORCHSERVE = "http://127.0.0.1:8080"
INFLUX = "http://127.0.0.1:8086"
PG_DSN = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class LiveStack:
    """Addresses and helpers for the running stack."""

    bridge: str = BRIDGE
    torchserve: str = TORCHSERVE

    def inference_headers(self) -> dict[str, str]:
        """TorchServe's current inference token (for tests that bypass the bridge)."""
        key = TorchServe().inference_key()
        assert key, "TorchServe's key file is missing"
        return {"Authorization": f"Bearer {key}"}

    def row(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The PostgreSQL row of ``request_id``, waiting for the recorder to write it."""
        deadline = time.monotonic() + timeout_s
        with psycopg2.connect(PG_DSN) as conn:
            conn.autocommit = True
            while True:
                with conn.cursor() as cur:
                    cur.execute("SELECT row_to_json(i) FROM inferences i WHERE request_id = %s", (request_id,))
                    found = cur.fetchone()
                if found or time.monotonic() > deadline:
                    return found[0] if found else None
                time.sleep(0.1)

    def rows_count(self, request_ids: list[str]) -> int:
        """How many of ``request_ids`` have a row."""
        with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM inferences WHERE request_id = ANY(%s::uuid[])", (request_ids,))
            return cur.fetchone()[0]

    def point(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The InfluxDB point of ``request_id`` (a field, not a tag), waiting for it."""
        query = f"SELECT * FROM inference WHERE request_id = '{uuid.UUID(request_id)}'"
        deadline = time.monotonic() + timeout_s
        while True:
            result = requests.get(f"{INFLUX}/query", params={"db": DATABASE, "q": query}, timeout=5).json()
            series = result["results"][0].get("series")
            if series:
                columns, values = series[0]["columns"], series[0]["values"]
                return dict(zip(columns, values[0]))
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def live_stack() -> Iterator[LiveStack]:
    """Bring up what is not running (archives, PostgreSQL, InfluxDB, TorchServe, bridge)."""
    settings = StackSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    build_archives()
    started: list[Service] = [s for s in all_services(settings) if s.up()]
    yield LiveStack()
    for service in reversed(started):
        service.down()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos with known answers, as JPEG bytes."""
    return {name: sample_photo(name) for name in ("chelsea", "coffee", "flower", "rocket", "china")}


def json_body(response: requests.Response) -> Any:
    """The JSON body, with the raw text in the assertion message when it is not JSON."""
    try:
        return response.json()
    except json.JSONDecodeError:
        pytest.fail(f"not JSON ({response.status_code}): {response.text[:300]}")
