"""Every query of every Grafana panel returns data from the real InfluxDB after real traffic.

Grafana cannot run here, so the dashboard is proven the way Grafana would use it: each panel's InfluxQL
(with Grafana's macros expanded) against the live database, after traffic through the bridge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from stack.services import REPO_ROOT
from tests.integration.conftest import INFLUX, LiveStack

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "serving.json"
NO_CACHE = {"Cache-Control": "no-cache"}


def expand(query: str) -> str:
    """Grafana's macros and the dashboard's variable, as Grafana would expand them for the last hour."""
    return (
        query.replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "10s")
        .replace("$model", ".*")
    )


def influx(query: str) -> list[dict]:
    result = requests.get(f"{INFLUX}/query", params={"db": "serving", "q": query}, timeout=10).json()
    statement = result["results"][0]
    assert "error" not in statement, f"{statement['error']} in {query}"
    return statement.get("series", [])


def has_values(series: list[dict]) -> bool:
    return any(any(v is not None for row in s["values"] for v in row[1:]) for s in series)


@pytest.fixture(scope="module")
def traffic(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    """Good and bad predictions on both models and a job, in two rounds with a telemetry round between.

    TorchServe's counters for a model appear with its first request, and per-request figures are derived
    between two scrapes: so a scrape must see the counters once, then again after more traffic.
    """

    def send_round() -> None:
        for model in ("classifier", "resnet18"):
            for body in (photos["chelsea"], photos["coffee"], b"not a photo"):
                requests.put(f"{live_stack.bridge}/predictions/{model}", data=body, headers=NO_CACHE, timeout=30)
        requests.put(f"{live_stack.bridge}/predictions/classifier", data=photos["flower"], timeout=30)  # cache

    def wait_for_scrapes(count: int) -> None:
        target = _scrapes() + count
        deadline = time.monotonic() + 60
        while _scrapes() < target and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _scrapes() >= target, f"the bridge's telemetry loop did not run {count} more time(s) within 60 s"

    send_round()
    wait_for_scrapes(1)  # counters seen once
    send_round()
    requests.post(f"{live_stack.bridge}/v1/jobs", params={"models": "classifier"}, data=photos["rocket"], timeout=30)
    wait_for_scrapes(2)  # and again after more traffic: per-request figures derived


def _scrapes() -> int:
    series = influx('SELECT last("scrapes") FROM "bridge" WHERE time > now() - 1h')
    return int(series[0]["values"][0][1]) if series else 0


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    return [(panel["title"], target["query"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_refers_to_the_provisioned_data_source() -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    provisioned = (REPO_ROOT / "deploy/grafana/provisioning/datasources/influxdb.yaml").read_text()
    assert uids == {"influxdb-serving"} and "uid: influxdb-serving" in provisioned
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("inferences", "latency", "errors", "batch", "queue", "workers"):
        assert topic in titles


@pytest.mark.parametrize("title,query", panel_queries(), ids=[t for t, _ in panel_queries()])
def test_every_panel_query_returns_data(traffic: None, title: str, query: str) -> None:
    series = influx(expand(query))
    assert has_values(series), f"panel {title!r} shows no data: {expand(query)}"


def test_variable_query_lists_the_models(traffic: None) -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    (variable,) = dashboard["templating"]["list"]
    values = {row[1] for s in influx(variable["query"]) for row in s["values"]}
    assert {"classifier", "resnet18"} <= values
