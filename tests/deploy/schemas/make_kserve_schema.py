"""Regenerate ``kserve_v1beta1_inferenceservice.json``: a JSON Schema for KServe's InferenceService.

Neither the ``kserve`` wheel nor its sdist on PyPI ships the CRD (its openAPIV3Schema lives only in KServe's
repository, which this project cannot fetch). The wheel does ship the OpenAPI-generated SDK models
(``kserve/models/*.py``), generated from the same Go types as the CRD: for every type, ``openapi_types``
(attribute -> type), ``attribute_map`` (attribute -> JSON key) and the required attributes (setters that
refuse ``None``). This script turns those into a JSON Schema, read statically (nothing is imported), with:

- every KServe object closed (``additionalProperties: false``), so a misspelt or unknown field fails;
- Kubernetes types (``V1Container``, ``V1ResourceRequirements``, ``V1ObjectMeta``, ...) as ``$ref``s into
  kubernetes-validate's bundled definitions for the pinned Kubernetes version, resolved at test time.

Run it only to move to another KServe or Kubernetes version (it downloads the wheel; tests never do)::

    .venv/bin/python tests/deploy/schemas/make_kserve_schema.py            # or --wheel PATH/kserve-*.whl
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

KSERVE_VERSION = "0.21.0"
KUBERNETES_VERSION = "1.33.0"
OUTPUT = Path(__file__).with_name("kserve_v1beta1_inferenceservice.json")
K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
ROOT_TYPE = "V1beta1InferenceService"

PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},
}
# SDK names of Kubernetes types that do not follow the V<version><Name> pattern.
SPECIAL_K8S = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}
K8S_PREFERENCE = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.")


def read_models(wheel: Path) -> dict[str, dict[str, Any]]:
    """Every SDK model in the wheel: JSON key -> SDK type, and the required JSON keys."""
    models: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/[a-z0-9_]+\.py", name) or name.endswith("__init__.py"):
                continue
            source = archive.read(name).decode()
            for node in ast.parse(source).body:
                if isinstance(node, ast.ClassDef):
                    models[node.name] = _model(node, source)
    return models


def _model(node: ast.ClassDef, source: str) -> dict[str, Any]:
    literals: dict[str, dict[str, str]] = {}
    for item in node.body:
        if (isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name)
                and item.targets[0].id in ("openapi_types", "attribute_map")):
            literals[item.targets[0].id] = ast.literal_eval(item.value)
    types, keys = literals["openapi_types"], literals["attribute_map"]
    class_source = ast.get_source_segment(source, node) or ""
    required = sorted(
        keys[attr] for attr in types if f"Invalid value for `{attr}`, must not be `None`" in class_source
    )
    return {"properties": {keys[attr]: sdk_type for attr, sdk_type in types.items()}, "required": required}


def k8s_definition(sdk_type: str, k8s_defs: dict[str, Any]) -> str | None:
    """The kubernetes-validate definition name for an SDK type name, or None."""
    if sdk_type in SPECIAL_K8S:
        return SPECIAL_K8S[sdk_type]
    match = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)", sdk_type)
    if match:
        name = f"io.k8s.api.{match[1].lower()}.{match[2].lower()}.{match[3]}"
        return name if name in k8s_defs else None
    match = re.fullmatch(r"(V\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)", sdk_type)
    if not match:
        return None
    suffix = f".{match[1].lower()}.{match[2]}"
    candidates = [key for key in k8s_defs if key.endswith(suffix)]
    for prefix in K8S_PREFERENCE:
        preferred = [key for key in candidates if key.startswith(prefix)]
        if preferred:
            return min(preferred)
    return None


class Builder:
    """Turns SDK types into schemas, collecting the KServe definitions reached from the root type."""

    def __init__(self, models: dict[str, dict[str, Any]], k8s_defs: dict[str, Any]) -> None:
        self.models = models
        self.k8s_defs = k8s_defs
        self.defs: dict[str, Any] = {}
        self.unresolved: set[str] = set()

    def schema(self, sdk_type: str) -> dict[str, Any]:
        if sdk_type in PRIMITIVES:
            return dict(PRIMITIVES[sdk_type])
        match = re.fullmatch(r"list\[(.+)\]", sdk_type)
        if match:
            return {"type": "array", "items": self.schema(match[1])}
        match = re.fullmatch(r"dict\(str, (.+)\)", sdk_type)
        if match:
            return {"type": "object", "additionalProperties": self.schema(match[1])}
        if sdk_type in self.models:
            self.define(sdk_type)
            return {"$ref": f"#/$defs/{sdk_type}"}
        k8s = k8s_definition(sdk_type, self.k8s_defs)
        if k8s is not None:
            return {"$ref": f"{K8S_DEFS_ID}#/$defs/{k8s}"}
        self.unresolved.add(sdk_type)
        return {}

    def define(self, sdk_type: str) -> None:
        if sdk_type in self.defs:
            return
        self.defs[sdk_type] = {}  # placeholder against recursion
        model = self.models[sdk_type]
        definition: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {key: self.schema(value) for key, value in sorted(model["properties"].items())},
        }
        if model["required"]:
            definition["required"] = model["required"]
        self.defs[sdk_type] = definition


def build(wheel: Path, k8s_defs: dict[str, Any]) -> dict[str, Any]:
    """The whole schema document."""
    builder = Builder(read_models(wheel), k8s_defs)
    builder.define(ROOT_TYPE)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://photo-serving.invalid/schemas/kserve_v1beta1_inferenceservice.json",
        "title": "KServe InferenceService (serving.kserve.io/v1beta1)",
        "description": (
            f"Generated by tests/deploy/schemas/make_kserve_schema.py from the OpenAPI-generated models in "
            f"PyPI kserve=={KSERVE_VERSION} (kserve/models/*.py); Kubernetes types refer to kubernetes-validate's "
            f"definitions for Kubernetes {KUBERNETES_VERSION}."
        ),
        "x-source": {
            "pypi": f"kserve=={KSERVE_VERSION}",
            "url": f"https://pypi.org/project/kserve/{KSERVE_VERSION}/",
            "kubernetes": KUBERNETES_VERSION,
            "unresolved-types-accepting-anything": sorted(builder.unresolved),
        },
        "allOf": [
            {"$ref": f"#/$defs/{ROOT_TYPE}"},
            {
                "required": ["apiVersion", "kind", "metadata", "spec"],
                "properties": {
                    "apiVersion": {"const": "serving.kserve.io/v1beta1"},
                    "kind": {"const": "InferenceService"},
                },
            },
        ],
        "$defs": dict(sorted(builder.defs.items())),
    }


def kubernetes_definitions(version: str) -> dict[str, Any]:
    """kubernetes-validate's strict definitions for ``version`` (the package bundles the JSON files)."""
    from importlib import resources as importlib_resources

    path = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((path / "_definitions.json").read_text())["$defs"]


def download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "-d", str(dest), f"kserve=={KSERVE_VERSION}"],
        check=True,
    )
    return next(dest.glob("kserve-*.whl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a kserve=={KSERVE_VERSION} wheel (downloaded when omitted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        schema = build(wheel, kubernetes_definitions(KUBERNETES_VERSION))
    OUTPUT.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUTPUT} ({len(schema['$defs'])} KServe types; "
          f"unresolved: {schema['x-source']['unresolved-types-accepting-anything'] or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
