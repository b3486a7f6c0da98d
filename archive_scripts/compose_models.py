"""deploy/compose.yaml's model parts, from the catalogue: the routes, one box per model and replica, their key volumes.

Every box listens on ports of its own, numbered by its place N in the box list (8N80-8N82 TorchServe's inference,
management and metrics APIs, 7N70-7N71 gRPC, 9N80 + worker its workers): the models of the base in catalogue
order, then the benchmark-only ones (profile ``benchmark``), then the extra replicas. Torch-free: the container
tests read the same layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from archive_scripts.regions import replace_region
from stack.models import Model

PREFIX = "${SERVING_PORT_PREFIX:-}"
KEYS_DIR = "/var/lib/serving/boxes"
MAX_BOXES = 9  # 8N80 with one digit N


@dataclass(frozen=True)
class Box:
    """One model server box of the compose topology."""

    model: Model
    replica: int  # 1 for the model's first box

    @property
    def name(self) -> str:
        """Service name: ``box-classifier``, ``box-classifier-2``."""
        return f"box-{self.keys}"

    @property
    def keys(self) -> str:
        """Its key volume's stem and its key directory under /var/lib/serving/boxes in the bridges."""
        return self.model.name if self.replica == 1 else f"{self.model.name}-{self.replica}"


def layout(models: Sequence[Model]) -> list[Box]:
    """The boxes in port order: the base's first boxes, the benchmark-only ones, then the extra replicas."""
    first = [Box(m, 1) for m in models if not m.benchmark_only] + [Box(m, 1) for m in models if m.benchmark_only]
    boxes = first + [Box(m, r) for m in models for r in range(2, m.boxes + 1)]
    if len(boxes) > MAX_BOXES:
        raise ValueError(f"{len(boxes)} boxes: deploy/compose.yaml's port scheme (8N80) holds {MAX_BOXES} on one host")
    return boxes


def ports(boxes: Sequence[Box], box: Box) -> dict[str, int]:
    """The box's ports (without SERVING_PORT_PREFIX)."""
    n = boxes.index(box) + 1
    return {"inference": 8000 + 100 * n + 80, "management": 8000 + 100 * n + 81, "metrics": 8000 + 100 * n + 82,
            "grpc_inference": 7000 + 100 * n + 70, "grpc_management": 7000 + 100 * n + 71, "worker": 9000 + 100 * n + 80}


def _route(boxes: Sequence[Box], box: Box) -> str:
    p = ports(boxes, box)
    entry = {
        "url": f"http://127.0.0.1:{PREFIX}{p['inference']}",
        "management_url": f"http://127.0.0.1:{PREFIX}{p['management']}",
        "metrics_url": f"http://127.0.0.1:{PREFIX}{p['metrics']}/metrics",
        "key_file": f"{KEYS_DIR}/{box.keys}/key_file.json",
        **({"required": False} if box.model.benchmark_only else {}),
    }
    return json.dumps(entry)


def routes(boxes: Sequence[Box]) -> str:
    """The ``x-routes`` anchor: each model to its box, or its boxes when it has several (stack/routing.py)."""
    lines = []
    models = list(dict.fromkeys(box.model.name for box in boxes))
    for i, name in enumerate(models):
        mine = [box for box in boxes if box.model.name == name]
        key = f'{"{" if i == 0 else " "}"{name}": '
        if len(mine) == 1:
            value = _route(boxes, mine[0])
        else:
            indent = " " * (len(key) + 1)
            value = "[" + f",\n  {indent}".join(_route(boxes, box) for box in mine) + "]"
        lines.append(f"  {key}{value}")
    return "x-routes: &routes >-\n" + ",\n".join(lines) + "}\n"


def key_mounts(boxes: Sequence[Box], indent: str) -> str:
    """Every box's key volume, read-only, where the routes' key files point."""
    return "".join(f"{indent}- {box.keys}-keys:{KEYS_DIR}/{box.keys}:ro\n" for box in boxes)


def services(boxes: Sequence[Box]) -> str:
    """One service per box."""
    out = []
    for box in boxes:
        p = ports(boxes, box)
        about = (f"  # {box.model.name}'s replica {box.replica}: the same image and archive on its own ports, key "
                 "and workers.\n" if box.replica > 1 else "")
        profile = '    profiles: ["benchmark"]\n' if box.model.benchmark_only else ""
        out.append(
            f"{about}  {box.name}:\n"
            "    <<: *model-box\n"
            f"{profile}"
            "    environment:\n"
            f"      SERVING_MODELS: {box.model.archive}\n"
            f'      SERVING_TS_INFERENCE_PORT: "{PREFIX}{p["inference"]}"\n'
            f'      SERVING_TS_MANAGEMENT_PORT: "{PREFIX}{p["management"]}"\n'
            f'      SERVING_TS_METRICS_PORT: "{PREFIX}{p["metrics"]}"\n'
            f'      SERVING_TS_GRPC_INFERENCE_PORT: "{PREFIX}{p["grpc_inference"]}"\n'
            f'      SERVING_TS_GRPC_MANAGEMENT_PORT: "{PREFIX}{p["grpc_management"]}"\n'
            f'      SERVING_TS_WORKER_PORT: "{PREFIX}{p["worker"]}"  # its workers\' sockets: 1 port per worker\n'
            "    volumes:\n"
            f"      - {box.keys}-keys:/var/lib/serving/torchserve\n"
        )
    return "\n".join(out)


def compose(text: str, models: Sequence[Model]) -> str:
    """deploy/compose.yaml ``text`` with its generated regions written for ``models``."""
    boxes = layout(models)
    text = replace_region(text, "routes", routes(boxes))
    text = replace_region(text, "bridge key volumes", key_mounts(boxes, "    "))
    text = replace_region(text, "boxes", services(boxes))
    text = replace_region(text, "servingctl key volumes", key_mounts(boxes, "      "))
    return replace_region(text, "key volumes", "".join(f"  {box.keys}-keys:\n" for box in boxes))
