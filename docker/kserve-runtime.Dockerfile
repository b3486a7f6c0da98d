# The KServe predictor image: KServe's own TorchServe runtime (its v1/v2 protocol wrapper, TorchServe 0.12) plus
# the engine runtimes our archives may be exported for (handlers/engines.py: ONNX Runtime, OpenVINO), at the
# versions requirements.txt pins. deploy/kserve/*/inferenceservice.yaml name it as the predictor's image: an archive
# whose engine is missing from its server fails to load (it never falls back to another engine).
#
#   docker build -f docker/kserve-runtime.Dockerfile -t photo-serving/torchserve-kfs-engines:0.12.0 .
#
# Not built by `make images`: its base comes from Docker Hub, which this project's machines cannot reach. Build it
# where the cluster's registry is, and push it there.
ARG KSERVE_TORCHSERVE_IMAGE=pytorch/torchserve-kfs:0.12.0
FROM ${KSERVE_TORCHSERVE_IMAGE}

COPY requirements.txt /tmp/requirements.txt
RUN grep -E '^(onnxruntime|openvino)==' /tmp/requirements.txt > /tmp/engines.txt \
 && pip install --no-cache-dir -r /tmp/engines.txt \
 && python -c "import onnxruntime, openvino"
