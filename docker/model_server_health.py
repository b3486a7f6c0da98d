"""The model server box's health check: healthy only when every model it loads has a READY worker.

Reads the box's own key file (stack.torchserve.read_keys; none when its config turns token authorization off, as
in Kubernetes) and asks TorchServe's management API, on the box's configured address, to describe each model. Exit 0 healthy, 1 not (Docker's HEALTHCHECK contract).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

from stack.torchserve import TorchServeError, read_keys


def get(url: str, key: str | None) -> object:
    """GET a management URL with the management key (None: no token); the parsed JSON body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=3) as response:
        return json.load(response)


def main() -> int:
    """Check every model of this box."""
    home = Path(os.environ.get("SERVING_HOME", "/var/lib/serving"))
    host = os.environ.get("SERVING_TS_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    base = f"http://{host}:{os.environ.get('SERVING_TS_MANAGEMENT_PORT', '8081')}"
    try:
        config = (home / "torchserve" / "config.properties").read_text()
        tokens_off = "disable_token_authorization=true" in config.splitlines()
        key = None if tokens_off else read_keys(home / "torchserve" / "key_file.json").management
        wanted = next(line.split("=", 1)[1] for line in config.splitlines() if line.startswith("load_models="))
        listed = get(f"{base}/models", key)
        names = [model["modelName"] for model in listed["models"]]  # type: ignore[index]
        if len(names) < len(wanted.split(",")):
            print(f"{len(names)} of {len(wanted.split(','))} models registered", file=sys.stderr)
            return 1
        for name in names:
            versions = get(f"{base}/models/{name}", key)
            if not any(w.get("status") == "READY" for v in versions for w in v.get("workers", [])):  # type: ignore[union-attr, attr-defined]
                print(f"{name}: no READY worker", file=sys.stderr)
                return 1
    except (OSError, ValueError, KeyError, StopIteration, TorchServeError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    print(f"ready: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
