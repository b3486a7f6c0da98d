"""price: the interval math, the head file, the demo head's training, and the handler through a worker."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from archive_scripts.inprocess import LocalWorker
from archive_scripts.photos import sample_photo
from archive_scripts.price_model import (
    SUBJECTS,
    HeadInfo,
    augment,
    build_price_head,
    subject_photos,
)
from archive_scripts.specs import find_spec
from archive_scripts.weights import LITE0_INPUT as TENSOR
from handlers.price_head import HeadFileError, PriceHead, load_head, price_interval, save_head, z_for
from tests.unit.conftest import HANDLERS_DIR

PRICE_FILES = ("price_handler.py", *find_spec("price").modules)

PriceDir = Callable[..., Path]


def jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of a PIL image."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_head(tmp_path_factory: pytest.TempPathFactory) -> HeadInfo:
    """The default head, trained exactly as a build trains it."""
    return build_price_head(tmp_path_factory.mktemp("head") / "price_head.pt")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained EfficientNet-Lite0 weights the archive ships as its serialized file."""
    from archive_scripts.weights import efficientnet_lite0_imagenet

    return efficientnet_lite0_imagenet(tmp_path_factory.mktemp("backbone") / "weights.pt").path


@pytest.fixture(scope="module")
def make_price_dir(tmp_path_factory: pytest.TempPathFactory, backbone: Path) -> PriceDir:
    """Lay out an unpacked `price` archive (as the build would) around ``head``; handler keys overridable."""

    def make(head: Path, **handler: Any) -> Path:
        model_dir = tmp_path_factory.mktemp("price")
        for filename in PRICE_FILES:
            shutil.copyfile(HANDLERS_DIR / filename, model_dir / filename)
        (model_dir / "weights.pt").symlink_to(backbone)
        shutil.copyfile(head, model_dir / "price_head.pt")
        section = {
            "architecture": "efficientnet_lite0",
            "threads": 1,
            "resize": TENSOR.resize,
            "crop": TENSOR.crop,
            "mean": list(TENSOR.mean),
            "std": list(TENSOR.std),
            "price_head_file": "price_head.pt",
            "currency": "EUR",
            "interval": 0.8,
            **handler,
        }
        config = {"batchSize": 8, "maxBatchDelay": 10, "handler": section, "metadata": {"description": "price"}}
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (model_dir / "MAR-INF").mkdir()
        manifest = {
            "runtime": "python",
            "model": {
                "modelName": "price",
                "serializedFile": "weights.pt",
                "handler": "price_handler.py",
                "modelVersion": "1.0",
                "configFile": "model-config.yaml",
            },
        }
        (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
        return model_dir

    return make


@pytest.fixture(scope="module")
def worker(make_price_dir: PriceDir, demo_head: HeadInfo) -> LocalWorker:
    """The `price` handler with the demo head, loaded as a TorchServe worker loads it."""
    return LocalWorker.from_model_dir(make_price_dir(demo_head.path))


def user_head_file(path: Path, mu: float, log_sigma: float, metadata: dict[str, Any] | None = None) -> Path:
    """A head that ignores the image: every answer is exp(mu) with spread exp(log_sigma)."""
    head = PriceHead()
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([mu, log_sigma]))
    if metadata is None:
        torch.save(head.state_dict(), path)  # a bare state_dict, as a user would save it
    else:
        save_head(head, path, metadata)
    return path


# --- interval math ---------------------------------------------------------------------------------------


def test_z_is_the_two_sided_normal_quantile() -> None:
    assert z_for(0.8) == pytest.approx(1.28155, abs=1e-4)
    assert z_for(0.95) == pytest.approx(1.95996, abs=1e-4)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="coverage"):
            z_for(bad)


def test_interval_is_positive_ordered_and_widens_with_coverage() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(500, generator=generator) * 5
    log_sigma = torch.randn(500, generator=generator) * 2
    narrow, wide = price_interval(mu, log_sigma, 0.5), price_interval(mu, log_sigma, 0.95)
    for price, low, high in (narrow, wide):
        assert (low > 0).all() and (low <= price).all() and (price <= high).all()
    assert torch.equal(narrow[0], wide[0])  # the estimate does not depend on the coverage asked for
    assert (wide[1] <= narrow[1]).all() and (wide[2] >= narrow[2]).all()
    extreme = price_interval(torch.tensor([-1e6, 0.0, 1e6]), torch.tensor([50.0, 50.0, -50.0]), 0.99)
    assert all(torch.isfinite(t).all() and (t > 0).all() for t in extreme)


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.95])
def test_interval_covers_its_stated_share_of_log_normal_prices(coverage: float) -> None:
    generator = torch.Generator().manual_seed(1)
    mu, log_sigma = torch.full((20_000,), math.log(40.0)), torch.full((20_000,), math.log(0.6))
    prices = torch.exp(mu + log_sigma.exp() * torch.randn(20_000, generator=generator))
    price, low, high = price_interval(mu, log_sigma, coverage)
    assert price[0].item() == pytest.approx(40.0)
    assert ((low <= prices) & (prices <= high)).double().mean().item() == pytest.approx(coverage, abs=0.015)


# --- head files -------------------------------------------------------------------------------------------


def test_head_file_round_trips_weights_and_metadata(tmp_path: Path) -> None:
    head = PriceHead()
    save_head(head, tmp_path / "head.pt", {"currency": "EUR", "demo": True, "heldout_mae_log": 0.3})
    loaded, metadata = load_head(tmp_path / "head.pt")
    assert metadata == {"currency": "EUR", "demo": True, "heldout_mae_log": 0.3}
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_bare_state_dict_is_a_valid_user_head(tmp_path: Path) -> None:
    info = build_price_head(tmp_path / "price_head.pt", user_head_file(tmp_path / "mine.pt", 4.0, -1.0))
    head, metadata = load_head(info.path)
    assert metadata["source"] == "user file mine.pt" and metadata["demo"] is False
    assert head.linear.bias.tolist() == [4.0, -1.0]


@pytest.mark.parametrize(
    "state, problem",
    [
        ({"linear.weight": torch.zeros(2, 512), "linear.bias": torch.zeros(2)}, "does not fit"),
        ({"linear.weight": torch.zeros(2, 1280)}, "does not fit"),
        ({"weight": torch.zeros(2, 1280), "bias": torch.zeros(2)}, "does not fit"),
        ({"linear.weight": torch.zeros(2, 1280), "linear.bias": torch.tensor([0.0, math.nan])}, "NaN"),
        ([torch.zeros(2)], "expected a state_dict"),
    ],
)
def test_a_user_head_that_does_not_fit_is_refused(tmp_path: Path, state: Any, problem: str) -> None:
    torch.save(state, tmp_path / "mine.pt")
    with pytest.raises(HeadFileError, match=problem):
        build_price_head(tmp_path / "price_head.pt", tmp_path / "mine.pt")
    assert not (tmp_path / "price_head.pt").exists()


def test_a_user_head_in_another_currency_is_refused(tmp_path: Path) -> None:
    user = user_head_file(tmp_path / "usd.pt", 4.0, -1.0, {"currency": "USD"})
    with pytest.raises(HeadFileError, match="USD"):
        build_price_head(tmp_path / "price_head.pt", user, currency="EUR")


def test_not_a_torch_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.pt").write_bytes(b"not a torch file")
    with pytest.raises(HeadFileError, match="not a readable"):
        build_price_head(tmp_path / "price_head.pt", tmp_path / "mine.pt")


# --- the demo head ----------------------------------------------------------------------------------------


def test_demo_head_metadata_is_honest(demo_head: HeadInfo) -> None:
    _, metadata = load_head(demo_head.path)
    assert metadata["demo"] is True and "not market data" in metadata["note"] and "not market data" in demo_head.source
    assert metadata["photos_per_split"] == {"train": 24, "calibrate": 24, "evaluate": 24}
    assert metadata["heldout_mae_log"] == pytest.approx(demo_head.heldout_mae_log, abs=1e-4)
    assert metadata["heldout_mae_log"] < 0.5 and metadata["heldout_mae_log_vs_reference"] < 0.25
    assert metadata["interval_coverage_heldout"] == pytest.approx(demo_head.coverage, abs=1e-4)
    assert metadata["interval_coverage_heldout"] == pytest.approx(metadata["interval_coverage_target"], abs=0.07)
    # It knows six subjects, nothing else: recorded, and far worse than on the subjects it saw.
    assert metadata["unseen_subject_mae_log"] > 3 * metadata["heldout_mae_log_vs_reference"]


def test_building_the_demo_head_twice_gives_the_same_bytes(demo_head: HeadInfo, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)  # the caller's thread count must not leak into the floats
    try:
        again = build_price_head(tmp_path / "price_head.pt")
    finally:
        torch.set_num_threads(threads)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (demo_head.path, again.path)]
    assert digest[0] == digest[1]


def test_held_out_listings_fall_inside_the_interval_at_the_recorded_coverage(
    worker: LocalWorker, demo_head: HeadInfo
) -> None:
    """New views of the training subjects, each listed at fresh prices around its reference, through the handler."""
    rng = np.random.default_rng(1234)  # not the build's seed: views and prices it never saw
    views, subjects = [], []
    for subject in SUBJECTS:
        for photo in (subject_photos(subject.photo) * 4)[:4]:
            views.append(jpeg(augment(photo, rng)))
            subjects.append(subject)
    answers = [r for start in range(0, len(views), 8) for r in worker.predict(views[start : start + 8])]
    inside, errors = [], []
    for subject, answer in zip(subjects, answers):
        assert answer.status == 200
        interval = answer.body["interval"]
        errors.append(abs(math.log(answer.body["price"] / subject.price)))
        prices = subject.price * np.exp(subject.spread * rng.standard_normal(200))
        inside.extend((interval["low"] <= prices) & (prices <= interval["high"]))
    # Each subject is recognised (within a factor e, typically within 20 %) ...
    assert max(errors) < 1.0 and float(np.median(errors)) < 0.2, errors
    # ... and its listings fall inside the interval about as often as the head file says.
    assert np.mean(inside) == pytest.approx(demo_head.coverage, abs=0.08)


# --- the handler ------------------------------------------------------------------------------------------


def test_answers_carry_price_currency_and_interval(worker: LocalWorker) -> None:
    [answer] = worker.predict([sample_photo("coffee")])
    body = answer.body
    assert answer.status == 200 and body["currency"] == "EUR"
    assert body["interval"]["coverage"] == 0.8
    assert 0 < body["interval"]["low"] <= body["price"] <= body["interval"]["high"]
    assert body["price"] == round(body["price"], 2)
    assert body["model"] == {"name": "price", "version": "1.0"} and body["batch_size"] == 1


def test_a_corrupt_item_gets_its_own_4xx_and_the_others_are_answered(worker: LocalWorker) -> None:
    answers = worker.predict([sample_photo("coffee"), b"\xff\xd8\xff\xe0 truncated", sample_photo("chelsea")])
    assert [a.status for a in answers] == [200, 400, 200]
    assert answers[1].body["type"] == "InvalidImage" and "price" not in answers[1].body
    assert answers[0].body["price"] < answers[2].body["price"]  # an espresso cup is cheaper than a cat's fee
    assert all(a.headers["X-Batch-Size"] == "3" for a in answers)


def test_a_photo_gets_the_same_price_alone_and_in_a_batch(worker: LocalWorker) -> None:
    photos = [sample_photo(name) for name in ("chelsea", "coffee", "flower", "rocket")]
    alone = worker.predict([photos[0]])[0].body
    batched = worker.predict(photos)[0].body
    # Batched and single convolutions may differ in the last float bit: at most a cent after rounding.
    assert batched["price"] == pytest.approx(alone["price"], abs=0.011)
    assert batched["interval"] == pytest.approx(alone["interval"], abs=0.011)


def test_describe_shows_where_the_head_came_from(worker: LocalWorker) -> None:
    described = worker.handler.describe()
    assert described["price_head"]["demo"] is True and "not market data" in described["price_head"]["note"]


def test_a_user_head_is_served_as_given(make_price_dir: PriceDir, tmp_path: Path) -> None:
    user = user_head_file(tmp_path / "mine.pt", math.log(250.0), math.log(0.2))
    built = build_price_head(tmp_path / "price_head.pt", user)
    [answer] = LocalWorker.from_model_dir(make_price_dir(built.path)).predict([sample_photo("rocket")])
    z = z_for(0.8)
    assert answer.body["price"] == 250.0
    assert answer.body["interval"]["low"] == pytest.approx(250.0 * math.exp(-z * 0.2), abs=0.01)
    assert answer.body["interval"]["high"] == pytest.approx(250.0 * math.exp(z * 0.2), abs=0.01)


def test_coverage_in_the_config_sets_the_interval(make_price_dir: PriceDir, demo_head: HeadInfo) -> None:
    wide = LocalWorker.from_model_dir(make_price_dir(demo_head.path, interval=0.95))
    narrow = LocalWorker.from_model_dir(make_price_dir(demo_head.path, interval=0.5))
    [w], [n] = wide.predict([sample_photo("coffee")]), narrow.predict([sample_photo("coffee")])
    assert w.body["interval"]["coverage"] == 0.95 and n.body["interval"]["coverage"] == 0.5
    assert w.body["price"] == n.body["price"]
    assert w.body["interval"]["low"] < n.body["interval"]["low"]
    assert w.body["interval"]["high"] > n.body["interval"]["high"]


@pytest.mark.parametrize("handler, problem", [({"currency": "USD"}, "currency"), ({"interval": 1.5}, "coverage")])
def test_a_misconfigured_archive_fails_at_load(
    make_price_dir: PriceDir, demo_head: HeadInfo, handler: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        LocalWorker.from_model_dir(make_price_dir(demo_head.path, **handler))
