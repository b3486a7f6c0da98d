"""The SDK's examples (sdk/examples) run against the real stack, their printed output checked."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from serving_client import Client

from archive_scripts.specs import CAT_LABELS
from tests.integration.conftest import LiveStack

EXAMPLES = Path(__file__).resolve().parents[2] / "sdk" / "examples"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CAT = "|".join(re.escape(label) for label in CAT_LABELS)


def example(name: str) -> ModuleType:
    """Load ``sdk/examples/<name>.py`` (scripts, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"sdk_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_classify_folder_labels_each_photo_and_reports_a_corrupt_one(
    live_stack: LiveStack, photos: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("chelsea", "coffee", "rocket"):
        (tmp_path / f"{name}.jpg").write_bytes(photos[name])
    (tmp_path / "corrupt.jpg").write_bytes(photos["coffee"][:600])  # a truncated JPEG
    (tmp_path / "notes.txt").write_text("not an image: skipped")

    code = example("classify_folder").main([str(tmp_path), "--model", "classifier", "--url", live_stack.bridge])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(rf"^chelsea\.jpg → ({CAT}) \(0\.\d\d\)$", out, re.MULTILINE), out
    assert re.search(r"^coffee\.jpg → (espresso|cup|coffee mug) ", out, re.MULTILINE), out
    assert re.search(r"^rocket\.jpg → \S", out, re.MULTILINE), out
    assert re.search(rf"^corrupt\.jpg → ERROR 400 InvalidImage: .+ \(request id {UUID}\)$", out, re.MULTILINE), out
    assert "notes.txt" not in out
    assert re.search(r"^4 files in [\d.]+ s: 3 classified, 1 failed$", out, re.MULTILINE), out
    assert "4/4" in err, "the progress bar ran on stderr"


def test_classify_folder_exits_1_when_the_bridge_is_down(
    tmp_path: Path, photos: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea"])
    code = example("classify_folder").main([str(tmp_path), "--url", "http://127.0.0.1:9", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "bridge not reachable at http://127.0.0.1:9" in err and "`make up`" in err


def test_submit_and_poll_prints_one_result_per_model(
    live_stack: LiveStack, photos: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])

    code = example("submit_and_poll").main(
        [str(photo), "--models", "classifier,resnet18", "--url", live_stack.bridge, "--timeout", "120"]
    )

    out, err = capsys.readouterr()
    assert code == 0, out + err
    job_id = re.search(rf"^job ({UUID}) submitted: (queued|running|succeeded), models classifier, resnet18$",
                       out, re.MULTILINE)
    assert job_id, out
    assert re.search(rf"^job {job_id.group(1)} succeeded in [\d.]+ s$", out, re.MULTILINE), out
    assert re.search(rf"^  classifier  200  1\.0\s+({CAT}) \(0\.\d\d\)$", out, re.MULTILINE), out
    assert re.search(r"^  resnet18    200  \S+\s+\S", out, re.MULTILINE), out  # untrained: any label


def test_report_prints_the_labels_table(
    live_stack: LiveStack, photos: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(live_stack.bridge) as client:
        prediction = client.predict("classifier", photos["chelsea"])
    assert prediction.top_label in CAT_LABELS and prediction.request_id
    assert live_stack.row(prediction.request_id) is not None, "the prediction was recorded"
    report = example("report")

    code = report.main(["--model", "classifier", "--kind", "labels", "--bucket", "hour", "--url", live_stack.bridge])

    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert re.match(r"^labels report for classifier, by hour: \S+ \S+ → \S+ \S+ UTC$", lines[0]), out
    assert re.match(r"^bucket\s+label\s+count$", lines[1]), out
    assert set(lines[2]) <= {"-", " "}
    rows = [re.match(r"^(\d{4}-\d\d-\d\d \d\d:00)  (.+?)\s+(\d+)$", line) for line in lines[3:]]
    assert rows and all(rows), out
    assert {row.group(2) for row in rows if row} & set(CAT_LABELS), out


def test_report_of_a_bad_range_exits_1(
    live_stack: LiveStack, capsys: pytest.CaptureFixture[str]
) -> None:
    code = example("report").main(["--model", "classifier", "--since", "2026-01-02T00:00:00Z",
                                   "--until", "2026-01-01T00:00:00Z", "--url", live_stack.bridge])
    assert code == 1
    assert re.search(r"400 BadRequest: .*since.* \(request id " + UUID + r"\)", capsys.readouterr().err)
