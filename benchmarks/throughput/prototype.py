"""BASELINE, not our design: a faithful re-creation of the seed's prototype, for comparison only.

The seed served photos from a small thread-pool HTTP server, one image per forward pass, no batching
("~200 images/minute on one GTX 1080, 1–2 s per result"). This module is that design, written for the
benchmark: the standard library's ``ThreadingHTTPServer`` (a thread per connection), each request decoded
with Pillow at full size, torchvision's ``Resize(256)`` / ``CenterCrop(224)`` / ``ToTensor`` / ``Normalize``,
then ``model(x.unsqueeze(0))`` on the one shared model, with torch's default thread count (every core),
as a prototype that never set it would run. Same resnet18 weights as our archive.

    python -m benchmarks.throughput.prototype --port 18090 --weights WEIGHTS.pt [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def build_server(port: int, weights: Path, threads: int | None) -> ThreadingHTTPServer:
    """The prototype server, model loaded, not yet serving."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from handlers.model_architectures import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model("resnet18", str(weights))
    preprocess = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])

    class PredictionHandler(BaseHTTPRequestHandler):
        """POST/PUT any path with the photo as the body → top-5 class indices and scores."""

        protocol_version = "HTTP/1.1"  # keep-alive, so the comparison is about the design, not TCP set-up

        def do_GET(self) -> None:
            self._send(200, {"status": "Healthy", "torch_threads": torch.get_num_threads()})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                image = Image.open(io.BytesIO(body)).convert("RGB")
            except Exception as exc:  # noqa: BLE001 - a prototype answers 400 for anything unreadable
                self._send(400, {"error": f"not an image: {exc}"})
                return
            x = preprocess(image).unsqueeze(0)
            with torch.no_grad():
                scores = model(x).softmax(dim=1)
            top = scores.topk(5, dim=1)
            self._send(200, {"predictions": [
                {"index": int(i), "score": round(float(s), 6)} for s, i in zip(top.values[0], top.indices[0])
            ]})

        do_PUT = do_POST

        def _send(self, status: int, payload: dict[str, object]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), PredictionHandler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput.prototype", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--weights", type=Path, required=True, help="resnet18 state_dict")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, every core)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    server = build_server(args.port, args.weights, args.threads or None)
    print(f"prototype baseline serving on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
