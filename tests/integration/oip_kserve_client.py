"""KServe's REST client against the bridge; prints what the client saw as one JSON object on stdout.

Run by tests/integration/test_oip_clients.py with the client environment's python (.venv-clients, from
requirements-clients.txt): kserve cannot live in our environment (it requires pillow>=12.3, psutil<6). So this
script imports nothing of ours, only kserve and what kserve brings.

Usage: python oip_kserve_client.py BRIDGE_URL PHOTO_FILE
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Awaitable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import kserve
import numpy as np
from kserve.protocol.infer_type import RequestedOutput

NO_CACHE = {"Cache-Control": "no-cache"}  # the bridge's cache would answer without reaching TorchServe


def described(response: Any, headers: dict[str, str]) -> dict[str, Any]:
    """An InferResponse as JSON: its id, the bridge's X-Request-Id, and each output as kserve decoded it."""
    return {
        "id": response.id,
        "model_name": response.model_name,
        "x_request_id": headers.get("x-request-id"),
        "outputs": {o.name: {"datatype": o.datatype, "shape": list(o.shape), "data": list(o.data)}
                    for o in response.outputs},
    }


async def refused(call: Awaitable[Any]) -> dict[str, Any]:
    """The error kserve raised for a failing call: its message (built from the error body) and the raw body."""
    try:
        await call
    except httpx.HTTPStatusError as exc:
        return {"status": exc.response.status_code, "message": str(exc),
                "content_type": exc.response.headers.get("content-type"), "body": exc.response.json()}
    return {"status": None, "message": "no error raised"}


def image_input(photo: bytes, binary: bool) -> Any:
    """The ``image`` input [1, 1] BYTES: raw bytes after the JSON, or base64 text inside it."""
    image = kserve.InferInput("image", [1, 1], "BYTES")
    if binary:
        image.set_data_from_numpy(np.array([[photo]], dtype=np.object_), binary_data=True)
    else:
        image.set_data_from_numpy(np.array([[base64.b64encode(photo)]], dtype=np.object_), binary_data=False)
        image.parameters = {"content_type": "base64"}
    return image


async def check(bridge: str, photo: bytes) -> dict[str, Any]:
    """Health, readiness, a binary and a JSON infer of ``photo``, and two refused requests."""
    seen: dict[str, Any] = {"kserve": version("kserve")}
    async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60)) as client:
        seen["server_live"] = await client.is_server_live(bridge)  # the value of "live" in the body
        seen["server_ready"] = await client.is_server_ready(bridge)  # the value of "ready" in the body
        seen["model_ready"] = await client.is_model_ready(bridge, "classifier")
        seen["unknown_model_ready"] = await client.is_model_ready(bridge, "no_such_model")

        headers: dict[str, str] = {}
        request = kserve.InferRequest("classifier", [image_input(photo, binary=True)], request_id="kserve-binary")
        response = await client.infer(bridge, request, model_name="classifier", headers=dict(NO_CACHE),
                                      response_headers=headers)
        seen["binary"] = described(response, headers)

        # JSON input, binary outputs asked for per output: kserve parses the bytes after the JSON.
        headers = {}
        outputs = [RequestedOutput(name, parameters={"binary_data": True}) for name in ("labels", "scores")]
        request = kserve.InferRequest("classifier", [image_input(photo, binary=False)], request_id="kserve-json",
                                      request_outputs=outputs)
        response = await client.infer(bridge, request, model_name="classifier", headers=dict(NO_CACHE),
                                      response_headers=headers)
        seen["json"] = described(response, headers)

        unknown = kserve.InferRequest("no_such_model", [image_input(photo, binary=True)])
        seen["unknown_model"] = await refused(client.infer(bridge, unknown, model_name="no_such_model"))
        broken = kserve.InferRequest("classifier", [image_input(b"definitely not a jpeg", binary=True)])
        seen["bad_photo"] = await refused(client.infer(bridge, broken, model_name="classifier",
                                                       headers=dict(NO_CACHE)))
    return seen


def main() -> None:
    """Run the checks against argv's bridge and photo and print the JSON."""
    bridge, photo_file = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(asyncio.run(check(bridge, photo_file.read_bytes()))))


if __name__ == "__main__":
    main()
