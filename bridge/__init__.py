"""The HTTP service beside TorchServe: mirrors its inference API and records every inference."""
