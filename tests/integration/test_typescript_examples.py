"""The TypeScript client's examples, compiled and run by node against the live bridge, as a web or app developer
would run them: the customer's "sell an item" flow (a job, long-polled) and a prediction looked up in the history."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests

from archive_scripts.specs import CAT_LABELS
from tests.integration.conftest import LiveStack
from tests.unit.test_typescript_client import STAMP, TS, tools  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def compiled(tools: Path) -> Path:  # noqa: F811 - the imported fixture
    subprocess.run([str(tools / "tsc"), "-p", "tsconfig.json"], cwd=TS, check=True, capture_output=True, timeout=300)
    return TS / "dist" / "examples"


def run(example: Path, *args: str) -> dict:
    result = subprocess.run(["node", str(example), *args], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_sell_an_item_fills_in_category_price_and_similar_items(
    live_stack: LiveStack, compiled: Path, photos: dict[str, bytes], tmp_path: Path,
) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    answer = run(compiled / "sell_an_item.js", str(photo), live_stack.bridge)
    assert answer["category"] in CAT_LABELS
    price = answer["price"]
    assert price["currency"] == "EUR" and price["low"] <= price["value"] <= price["high"] and 45 <= price["value"] <= 180
    assert answer["similar"][0] == "chelsea-01" and len(answer["similar"]) == 5
    job = requests.get(f"{live_stack.bridge}/v1/jobs/{answer['job']}", timeout=10).json()
    assert job["status"] == "succeeded" and sorted(job["results"]) == ["classifier", "price", "similar"]
    for result in job["results"].values():  # each model's answer is on record
        assert live_stack.row(result["request_id"]) is not None


def test_a_prediction_is_found_in_the_history_through_the_typed_routes(
    live_stack: LiveStack, compiled: Path, photos: dict[str, bytes], tmp_path: Path,
) -> None:
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photos["coffee"])
    answer = run(compiled / "predict_and_look_up.js", str(photo), live_stack.bridge)
    assert answer["version"] == "1.0" and answer["request_id"]
    assert answer["recorded"]["status"] == 200
    assert answer["recorded"]["top_label"] == answer["answer"]["predictions"][0]["label"]
    assert answer["latency_rows"] >= 1
