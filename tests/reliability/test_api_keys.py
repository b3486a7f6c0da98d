"""API keys across two bridges (docs/api-keys.md): scopes, a burst over a key's rate, and a revocation.

Two private bridges share one PostgreSQL and InfluxDB database of their own (keys made there with servingctl) and
the shared TorchServe; they split each key's rate (BRIDGE_RATE_LIMIT_BRIDGES=2), as two bridges behind one balancer.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from ops.cli import main as servingctl
from stack.services import InfluxDB, TorchServe
from stack.settings import StackSettings
from tests.integration.conftest import LiveStack
from tests.reliability import payloads as p
from tests.reliability.instances import SHARED_TORCHSERVE_PORTS, PrivateBridge, private_databases

SETTINGS_KEY = "reliability-settings-key"
RATE_PER_S, BURST = 2.0, 10
BURST_REQUESTS = 60


@dataclass
class KeyedStack:
    bridges: list[PrivateBridge]
    dsn: str
    influx_db: str
    publishable: str
    secret: str


def keys_cli(dsn: str, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = servingctl([*argv, "--pg-dsn", dsn, "--actor", "reliability"], stdout=out, stderr=err, environ={})
    assert code == 0, f"servingctl {' '.join(argv)} → {code}: {err.getvalue()}"
    return out.getvalue()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, live_stack: LiveStack) -> Iterator[KeyedStack]:
    with private_databases("serving_reliability_keys") as (dsn, influx_db):
        publishable = keys_cli(dsn, "keys", "create", "burst test", "--publishable", "--rate", str(RATE_PER_S),
                               "--burst", str(BURST)).strip()
        secret = keys_cli(dsn, "keys", "create", "reports").strip()
        bridges = [
            PrivateBridge(
                home=tmp_path_factory.mktemp(f"keys-bridge-{n}"), torchserve_url=live_stack.torchserve,
                management_url=f"http://127.0.0.1:{SHARED_TORCHSERVE_PORTS.management}",
                metrics_url=f"http://127.0.0.1:{SHARED_TORCHSERVE_PORTS.metrics}/metrics",
                key_file=TorchServe().key_file, pg_dsn=dsn, influx_database=influx_db,
                env={"BRIDGE_API_KEYS": SETTINGS_KEY, "BRIDGE_RATE_LIMIT_BRIDGES": "2",
                     "BRIDGE_TELEMETRY_INTERVAL_S": "1", "BRIDGE_JOB_MODELS": "resnet18"},
            )
            for n in range(2)
        ]
        try:
            for bridge in bridges:
                bridge.start(ready_path="/ping")
            yield KeyedStack(bridges, dsn, influx_db, publishable, secret)
        finally:
            for bridge in bridges:
                bridge.stop()


def known_everywhere(keyed: KeyedStack, key: str, path: str, status: int) -> None:
    """Wait until every bridge answers ``path`` with ``status`` under the new ``key`` (within a second)."""
    deadline = time.monotonic() + 5
    for bridge in keyed.bridges:
        while requests.get(bridge.url + path, headers={"X-API-Key": key}, timeout=10).status_code != status:
            assert time.monotonic() < deadline, f"a new key was not accepted within 5 s by {bridge.url}"
            time.sleep(0.05)


def test_a_publishable_key_is_refused_results_and_reports_on_every_bridge(
    keyed: KeyedStack, report: Callable[..., None]
) -> None:
    photo = p.fuzz_seeds()["JPEG"]
    statuses: Counter[str] = Counter()
    for bridge in keyed.bridges:
        served = requests.post(f"{bridge.url}/predictions/resnet18", data=photo,
                               headers={"X-API-Key": keyed.publishable}, timeout=60)
        assert served.status_code == 200, served.text
        for path in ("/v1/results?limit=5", "/v1/reports/latency?model=resnet18", "/v1/rollouts"):
            refused = requests.get(bridge.url + path, headers={"X-API-Key": keyed.publishable}, timeout=30)
            assert refused.status_code == 403, f"{path}: {refused.status_code} {refused.text[:200]}"
            assert refused.json()["type"] == "Forbidden"
            statuses[f"publishable {path.split('?')[0]}"] = refused.status_code
            for key in (keyed.secret, SETTINGS_KEY):
                allowed = requests.get(bridge.url + path, headers={"X-API-Key": key}, timeout=30)
                assert allowed.status_code == 200, f"{path} with a secret key: {allowed.status_code} {allowed.text[:200]}"
    report("a publishable key gets 403 on results, reports and administration; secret keys get 200",
           publishable_results_status=statuses["publishable /v1/results"],
           publishable_reports_status=statuses["publishable /v1/reports/latency"],
           publishable_rollouts_status=statuses["publishable /v1/rollouts"])


def test_a_burst_over_a_keys_rate_is_answered_429_with_retry_after_and_counted(
    keyed: KeyedStack, report: Callable[..., None]
) -> None:
    photo = p.fuzz_seeds()["JPEG"]
    key = keys_cli(keyed.dsn, "keys", "create", "burst", "--publishable", "--rate", str(RATE_PER_S),
                   "--burst", str(BURST)).strip()  # its own: a full bucket
    known_everywhere(keyed, key, "/v1/jobs/00000000-0000-4000-8000-000000000000", 404)  # takes a token each
    started = time.monotonic()

    def send(n: int) -> requests.Response:
        bridge = keyed.bridges[n % 2]  # the balancer's round robin
        return requests.post(f"{bridge.url}/predictions/resnet18", data=photo, headers={"X-API-Key": key}, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(BURST_REQUESTS)))
    elapsed = time.monotonic() - started
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 429}, statuses
    limited = [a for a in answers if a.status_code == 429]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert all(a.json()["type"] == "TooManyRequests" for a in limited)
    # Each bridge: half the burst and half the rate; the probe above took a token from each.
    allowed = BURST - 2 + RATE_PER_S * elapsed + 2
    assert statuses[200] <= allowed, f"{statuses[200]} served in {elapsed:.1f} s; the key allows {allowed:.0f}"
    assert statuses[200] >= BURST - 2, f"only {statuses[200]} served: the burst of {BURST} should pass"

    influx = InfluxDB(StackSettings())
    counted = 0
    deadline = time.monotonic() + 15  # the bridges write their counts each telemetry round (1 s here)
    while time.monotonic() < deadline and counted < len(limited):
        result = influx.query(
            "SELECT sum(requests) FROM api_key_requests WHERE outcome = 'limited'", keyed.influx_db
        )["results"][0]
        counted = int(result["series"][0]["values"][0][1]) if "series" in result else 0
        time.sleep(0.5)
    assert counted == len(limited), f"InfluxDB counted {counted} limited requests, the clients saw {len(limited)}"
    report("a burst of requests over a publishable key's rate across two bridges",
           sent=BURST_REQUESTS, seconds=round(elapsed, 2), served=statuses[200], limited_429=len(limited),
           key=f"{RATE_PER_S:g} requests/s, bursts of {BURST}",
           retry_after_s=sorted({int(a.headers["Retry-After"]) for a in limited}),
           counted_in_influxdb=counted)


def test_a_revoked_key_is_refused_by_every_bridge_within_a_second(
    keyed: KeyedStack, report: Callable[..., None]
) -> None:
    victim = keys_cli(keyed.dsn, "keys", "create", "to revoke").strip()
    known_everywhere(keyed, victim, "/v1/results?limit=1", 200)
    refused_after: dict[int, float] = {}
    revoked = threading.Event()
    revoked_at = [0.0]

    def watch(n: int) -> None:
        url = f"{keyed.bridges[n].url}/v1/results?limit=1"
        revoked.wait(10)
        while time.monotonic() - revoked_at[0] < 5:
            if requests.get(url, headers={"X-API-Key": victim}, timeout=10).status_code == 401:
                refused_after[n] = time.monotonic() - revoked_at[0]
                return
            time.sleep(0.02)

    watchers = [threading.Thread(target=watch, args=(n,)) for n in range(len(keyed.bridges))]
    for watcher in watchers:
        watcher.start()
    key_id = victim.split("_")[1]
    out = keys_cli(keyed.dsn, "keys", "revoke", key_id)  # committed when it returns
    revoked_at[0] = time.monotonic()
    revoked.set()
    for watcher in watchers:
        watcher.join(15)
    assert "revoked" in out
    assert sorted(refused_after) == list(range(len(keyed.bridges))), f"refused by bridges {sorted(refused_after)} only"
    slowest = max(refused_after.values())
    assert slowest < 1.0, f"a bridge accepted the revoked key for {slowest:.2f} s"
    listed = json.loads(keys_cli(keyed.dsn, "keys", "list", "--all", "--json"))
    assert any(k["id"] == key_id and k["revoked_by"] == "reliability" for k in listed)
    report("a revoked key is refused by every bridge", bridges=len(keyed.bridges),
           refused_within_s=[round(refused_after[n], 3) for n in sorted(refused_after)])
