"""The `price` archive's head: a user's own head, validated, or a small DEMO head trained here.

The demo head is fitted in a few seconds on CPU, deterministically, on frozen EfficientNet-Lite0
embeddings of a toy "listings" set: six real photos that ship with scikit-image / scikit-learn, each
given a hand-written reference price (table below) and a typical listing spread. Every subject is shown
in a few deterministic augmentations (crop, flip, colour, JPEG quality); each view is listed several
times with prices drawn log-normally around its reference — listings of the same thing do not all cost
the same, and without that spread the interval would measure nothing but augmentation jitter.
Views are split three ways: train (fit by Gaussian negative log-likelihood), calibrate (split-conformal
scaling of sigma so the interval holds its coverage), evaluate (the held-out MAE and coverage recorded
in the head file's metadata).

Limits, stated plainly: the prices are invented reference prices, not market data; the head knows six
subjects and tells you nothing useful about anything else (its leave-one-subject-out error is recorded
too, and it is large); held-out views are new augmentations of the same photos, so the held-out numbers
measure the pipeline and the interval's calibration, not generalisation. Serve a head trained on your
market's listings (``--weights price=PATH``) for real estimates.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from archive_scripts.weights import LITE0_INPUT, efficientnet_lite0_imagenet_file
from handlers.image_decoding import to_tensor
from handlers.model_architectures import ImageEmbedder, load_model
from handlers.price_head import HeadFileError, PriceHead, load_head, save_head, z_for

CURRENCY = "EUR"
COVERAGE = 0.8
SEED = 0
VIEWS = {"train": 4, "calibrate": 4, "evaluate": 4}  # augmented views per subject and split (each a forward pass)
DRAWS = {"train": 32, "calibrate": 64, "evaluate": 64}  # listings (price draws) per view: cheap, no forward pass
WEIGHT_DECAY = 1e-4
DEMO_NOTE = "demo: reference prices, not market data"


@dataclass(frozen=True)
class Subject:
    """One bundled photo, what it shows, its reference price and the log-scale spread of its listings."""

    photo: str
    shows: str
    price: float
    spread: float


SUBJECTS: tuple[Subject, ...] = (
    Subject("coffee", "espresso cup and saucer", 12.0, 0.30),
    Subject("flower", "potted flowering plant", 9.0, 0.35),
    Subject("coins", "lot of old coins", 60.0, 0.50),
    Subject("chelsea", "tabby cat, rehoming fee", 90.0, 0.40),
    Subject("camera", "vintage camera with tripod", 150.0, 0.45),
    Subject("motorcycle", "used motorcycle", 4500.0, 0.35),
)


@dataclass(frozen=True)
class HeadInfo:
    """The head file written, where it came from, and how it did on held-out listings (demo only)."""

    path: Path
    source: str
    trained_on: str
    heldout_mae_log: float | None = None
    coverage: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def build_price_head(
    dest: Path, user_head: Path | None = None, currency: str = CURRENCY, backbone_weights: Path | None = None
) -> HeadInfo:
    """Write the price head to ``dest``: the user's file, validated, or the demo head trained here."""
    if user_head is not None:
        return validate_user_head(user_head, dest, currency)
    if currency != CURRENCY:
        raise ValueError(f"the demo head's reference prices are in {CURRENCY}; give a head trained in {currency}")
    return train_demo_head(dest, backbone_weights)


def validate_user_head(src: Path, dest: Path, currency: str = CURRENCY) -> HeadInfo:
    """Check a user's head loads strictly into PriceHead (and is in ``currency``), then write it with its provenance."""
    head, metadata = load_head(src)
    if metadata.get("currency", currency) != currency:
        raise HeadFileError(f"{src.name} was trained in {metadata['currency']}, the archive answers in {currency}")
    metadata = {**metadata, "source": f"user file {src.name}", "demo": bool(metadata.get("demo")), "currency": currency}
    save_head(head, dest, metadata)
    trained_on = str(metadata.get("trained_on", "not stated in the file"))
    return HeadInfo(dest, metadata["source"], trained_on, metadata=metadata)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads: float sums depend on the thread count, the demo head must not."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subject_photos(name: str) -> list[Image.Image]:
    """A subject's RGB photo(s): the motorcycle is a stereo pair, the others one photo as golden cases send it."""
    if name == "motorcycle":
        from skimage import data

        left, right, _ = data.stereo_motorcycle()
        return [Image.fromarray(left), Image.fromarray(right)]
    from archive_scripts.photos import sample_photo

    return [Image.open(io.BytesIO(sample_photo(name))).convert("RGB")]


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (55–100 % of the area), mirror, colour change and JPEG round trip of ``img``."""
    width, height = img.size
    area, aspect = rng.uniform(0.55, 1.0) * width * height, math.exp(rng.uniform(-0.29, 0.29))
    crop_w, crop_h = min(width, round(math.sqrt(area * aspect))), min(height, round(math.sqrt(area / aspect)))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    img = img.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.75, 1.25))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
    return Image.open(buffer).convert("RGB")


@dataclass(frozen=True)
class Listings:
    """Demo listings of one split: embeddings, log prices and the subject index of each."""

    embeddings: torch.Tensor
    log_prices: torch.Tensor
    subjects: torch.Tensor

    def where(self, mask: torch.Tensor) -> Listings:
        """The listings ``mask`` selects."""
        return Listings(self.embeddings[mask], self.log_prices[mask], self.subjects[mask])

    def at_reference(self) -> Listings:
        """The same listings, each at its subject's reference price (no simulated spread)."""
        refs = torch.tensor([math.log(s.price) for s in SUBJECTS], dtype=self.log_prices.dtype)
        return Listings(self.embeddings, refs[self.subjects], self.subjects)


def demo_views(seed: int = SEED) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """Model-input tensors of every subject's augmented views, by split (view 0 of train is the photo itself)."""
    rng = np.random.default_rng(seed)
    views: dict[str, tuple[list[torch.Tensor], list[int]]] = {split: ([], []) for split in VIEWS}
    for index, subject in enumerate(SUBJECTS):
        photos = subject_photos(subject.photo)
        for split, count in VIEWS.items():
            for view in range(count):
                photo = photos[view % len(photos)]
                img = photo if split == "train" and view == 0 else augment(photo, rng)
                views[split][0].append(to_tensor(img, LITE0_INPUT))
                views[split][1].append(index)
    return {split: (torch.stack(tensors), subjects) for split, (tensors, subjects) in views.items()}


def demo_listings(embedder: torch.nn.Module, seed: int = SEED) -> dict[str, Listings]:
    """Embed every view once and list it ``DRAWS[split]`` times at prices drawn around its reference."""
    rng = np.random.default_rng(seed + 1)
    listings = {}
    for split, (images, subjects) in demo_views(seed).items():
        with torch.inference_mode():
            embeddings = torch.cat([embedder(chunk) for chunk in images.split(16)]).double()
        refs = np.log([SUBJECTS[s].price for s in subjects])
        spreads = np.array([SUBJECTS[s].spread for s in subjects])
        draws = refs[:, None] + spreads[:, None] * rng.standard_normal((len(subjects), DRAWS[split]))
        listings[split] = Listings(
            embeddings.repeat_interleave(DRAWS[split], dim=0),
            torch.from_numpy(draws.reshape(-1)),
            torch.tensor(subjects).repeat_interleave(DRAWS[split]),
        )
    return listings


def gaussian_nll(outputs: torch.Tensor, log_prices: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``log_prices`` under N(mu, sigma²), constants dropped."""
    mu, log_sigma = outputs[:, 0], outputs[:, 1]
    return (log_sigma + 0.5 * ((log_prices - mu) * torch.exp(-log_sigma)) ** 2).mean()


def fit_head(data: Listings, weight_decay: float = WEIGHT_DECAY, steps: int = 200) -> PriceHead:
    """Fit PriceHead by Gaussian NLL plus an L2 penalty, full batch L-BFGS in float64 from a fixed start."""
    head = PriceHead(data.embeddings.shape[1]).double()
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.stack([data.log_prices.mean(), data.log_prices.std().log()]))
    optimiser = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = gaussian_nll(head(data.embeddings), data.log_prices) + weight_decay * head.linear.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return head


def calibrate(head: PriceHead, data: Listings, coverage: float) -> float:
    """Split-conformal: scale sigma (via the log_sigma bias) so ``coverage`` of ``data`` falls inside."""
    with torch.no_grad():
        outputs = head(data.embeddings)
        scores = ((data.log_prices - outputs[:, 0]) * torch.exp(-outputs[:, 1])).abs().sort().values
        rank = min(math.ceil((len(scores) + 1) * coverage), len(scores)) - 1
        scale = float(scores[rank]) / z_for(coverage)
        head.linear.bias[1] += math.log(scale)
    return scale


def evaluate(head: PriceHead, data: Listings, coverage: float) -> tuple[float, float]:
    """(mean |log price − mu|, share of listings inside the ``coverage`` interval) on ``data``."""
    with torch.no_grad():
        outputs = head(data.embeddings.to(head.linear.weight.dtype))
        error = (data.log_prices - outputs[:, 0]).abs()
        inside = error <= z_for(coverage) * outputs[:, 1].exp()
    return float(error.mean()), float(inside.double().mean())


def leave_one_subject_out_mae(train: Listings) -> float:
    """Mean |log error| (vs reference) on each subject when fitted without it: how badly the head generalises."""
    errors = []
    for index in range(len(SUBJECTS)):
        held = train.subjects == index
        errors.append(evaluate(fit_head(train.where(~held)), train.where(held).at_reference(), COVERAGE)[0])
    return float(np.mean(errors))


def train_demo_head(dest: Path, backbone_weights: Path | None = None, coverage: float = COVERAGE) -> HeadInfo:
    """Train, calibrate and evaluate the demo head, deterministically, and write it with its metadata."""
    backbone_weights = backbone_weights or efficientnet_lite0_imagenet_file()
    embedder = ImageEmbedder(load_model("efficientnet_lite0", str(backbone_weights))).eval()
    embedder = embedder.to(memory_format=torch.channels_last)  # ~1.5x faster on CPU; same floats to ~1e-6
    with _torch_threads(1):
        listings = demo_listings(embedder)
        head = fit_head(listings["train"])
        scale = calibrate(head, listings["calibrate"], coverage)
        mae, covered = evaluate(head, listings["evaluate"], coverage)
        reference_mae = evaluate(head, listings["evaluate"].at_reference(), coverage)[0]
        unseen_mae = leave_one_subject_out_mae(listings["train"])
    trained_on = (
        f"{len(listings['train'].log_prices)} demo listings ({VIEWS['train']} views x {DRAWS['train']} prices each) "
        f"of {len(SUBJECTS)} bundled photos at reference prices: "
        + "; ".join(f"{s.photo} = {s.shows}, {s.price:g} {CURRENCY}" for s in SUBJECTS)
    )
    metadata = {
        "source": "trained at build time (archive_scripts/price_model.py)",
        "demo": True,
        "note": DEMO_NOTE,
        "currency": CURRENCY,
        "trained_on": trained_on,
        "photos_per_split": {split: count * len(SUBJECTS) for split, count in VIEWS.items()},
        "train_listings": len(listings["train"].log_prices),
        "calibration_listings": len(listings["calibrate"].log_prices),
        "heldout_listings": len(listings["evaluate"].log_prices),
        "heldout_mae_log": round(mae, 4),  # vs the listings' (simulated) prices: mostly their own spread
        "heldout_mae_log_vs_reference": round(reference_mae, 4),  # vs the subjects' reference prices
        "interval_coverage_target": coverage,
        "interval_coverage_heldout": round(covered, 4),
        "conformal_sigma_scale": round(scale, 4),
        "unseen_subject_mae_log": round(unseen_mae, 4),
        "seed": SEED,
    }
    save_head(head.float(), dest, metadata)
    return HeadInfo(dest, f"{metadata['source']}; {DEMO_NOTE}", trained_on, mae, covered, metadata)
