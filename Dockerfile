# The ML tier: one model server box (TorchServe 0.12 + Java 17 + our handlers + the gated archives). Which
# models a box serves is chosen when it starts (SERVING_MODELS), so one image runs every box: "if
# classification is slow, add classifiers". TorchServe binds SERVING_TS_HOST (default 127.0.0.1) on ports from
# the environment; its key file lands in /var/lib/serving/torchserve (mount it to share it with the bridge).
# The other images' Dockerfiles are in docker/; this one's build context is the root .dockerignore's allowlist.
#
#   make images                   # every image (python -m stack.docker images), this one as serving-model
#   docker build -t serving-model .                # after `make images`: the base and torch wheels it prepared
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm --build-arg TORCH_WHEELS_IMAGE=scratch \
#       -t serving-model .                         # elsewhere: the official base, torch from TORCH_INDEX_URL (CPU)
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm --build-arg TORCH_WHEELS_IMAGE=scratch \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t serving-model:cu126 .      # GPU
#   docker run --network host -e SERVING_MODELS=classifier_v1.0.mar -e SERVING_TS_INFERENCE_PORT=18080 ... serving-model
#
# The dockerd that `make images` starts has host networking only (stack/docker.py): there, every build also
# takes --network host (`docker build --network host -t serving-model .`).
#
# PYTHON_IMAGE and TORCH_WHEELS_IMAGE default to what `make images` prepares on the machine it runs on: the Python
# base (the official python:3.11-slim-bookworm when it is there, else one made from Debian's packages) and the
# pinned torch/torchvision wheels from the host's pip (no download; an empty wheelhouse when the host has none).
# torch/torchvision: from the TORCH_WHEELS_IMAGE when it holds them, else from TORCH_INDEX_URL.
# Stages: deps -> build (archives) -> runtime.
ARG PYTHON_IMAGE=serving-local/python:3.11-bookworm
# An image with the pinned torch/torchvision wheels (and their dependencies') at /; scratch: none.
ARG TORCH_WHEELS_IMAGE=serving-local/torch-wheels:pinned

FROM ${TORCH_WHEELS_IMAGE} AS torch-wheels

# ---- deps: the runtime virtualenv, requirements.txt only -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps

# PyTorch wheel index for torch/torchvision: CPU by default; a GPU build passes e.g. .../whl/cu126.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.txt ./
# torch/torchvision first, at the versions requirements.txt pins, from the wheels image (bind-mounted, so its
# gigabytes never become a layer of this image) or from the PyTorch index only (no --extra-index-url: nothing
# else can be picked from it by accident); then the rest from PyPI, where the installed torch/torchvision
# already satisfy their pins and are kept.
RUN --mount=type=bind,from=torch-wheels,target=/wheelhouse \
    python -m venv /opt/venv \
 && grep -E '^(torch|torchvision)==' requirements.txt > /tmp/torch-requirements.txt \
 && if ls /wheelhouse/torch-*.whl > /dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links /wheelhouse -r /tmp/torch-requirements.txt; \
    else \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r /tmp/torch-requirements.txt; \
    fi \
 && pip install --no-cache-dir -r requirements.txt \
 && pip check

# ---- build: dev extras + the model archives, built and gated on golden photos --------------------------------
# The runtime gets the deps venv, not this one: scikit-image/scikit-learn (+ SciPy) are only needed for the
# golden gate. The extras are installed under a constraint on everything already in the venv, so the archives
# are gated against exactly the packages the runtime image serves them with.
FROM deps AS build
COPY requirements-build.txt ./
RUN pip freeze > /tmp/runtime-constraints.txt \
 && pip install --no-cache-dir -c /tmp/runtime-constraints.txt -r requirements-build.txt \
 && pip check

COPY handlers/ handlers/
COPY archive_scripts/ archive_scripts/
# Nothing reaches the store unless it answered its golden photos (see archive_scripts/build.py).
# ARCHIVE_FLAVOUR=gpu: fp16 autocast + torch.compile per model, gated against an fp32 twin (docs/gpu.md); a
# GPU image also needs a CUDA TORCH_INDEX_URL, and gcc + libc6-dev in the runtime for compiled kernels.
ARG ARCHIVE_FLAVOUR=cpu
RUN python -m archive_scripts --flavour "$ARCHIVE_FLAVOUR" --store /build/model_store

# ---- servingctl: the operators' CLI (image serving-ops; `make images`), for the boxes of a deployment -------
# From the build stage: the same archives the boxes serve (a deploy registers an archive by its file name in the
# box's store) and the golden photos' packages, so `servingctl deploy` runs its golden check here too.
#   docker build --target servingctl -t serving-ops .
#   docker compose -f deploy/compose.yaml run --rm servingctl models
FROM build AS servingctl
RUN groupadd --gid 1000 serving \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin serving
COPY stack/ stack/
COPY ops/ ops/
RUN python -m compileall -q ops stack handlers archive_scripts
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVINGCTL_MODEL_STORE=/build/model_store \
    SERVINGCTL_STATE_DIR=/tmp/servingctl
USER 1000:1000
ENTRYPOINT ["python", "-m", "ops"]
CMD ["--help"]

# ---- runtime -------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# Java 17 for TorchServe's frontend; tini as PID 1 (forwards docker stop's SIGTERM to the entry point and reaps
# orphaned TorchServe workers). The man1 dir works around JRE postinst scripts failing on slim images.
# DL3008 (unpinned apt versions) is ignored on purpose: bookworm is a stable release that only takes security
# fixes, and Debian drops superseded versions from its mirrors, so exact pins would break rebuilds.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/*

# Non-root user; its home is the only writable app path: TorchServe's config copy and key file, tmp, logs.
# torchserve/ exists in the image so that an empty volume mounted there (the key dir the bridges and servingctl
# mount read-only) starts owned by `serving`.
RUN groupadd --gid 1000 serving \
 && useradd --uid 1000 --gid 1000 --home-dir /var/lib/serving --no-create-home --shell /usr/sbin/nologin serving \
 && install -d -o serving -g serving -m 0750 /var/lib/serving /var/lib/serving/torchserve

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    SERVING_HOME=/var/lib/serving \
    APP_DIR=/app \
    MODEL_STORE=/app/model_store \
    SERVING_TS_HOST=127.0.0.1 \
    SERVING_TS_INFERENCE_PORT=8080 \
    SERVING_TS_MANAGEMENT_PORT=8081 \
    SERVING_TS_METRICS_PORT=8082 \
    SERVING_TS_GRPC_INFERENCE_PORT=7070 \
    SERVING_TS_GRPC_MANAGEMENT_PORT=7071 \
    SERVING_TS_WORKER_PORT=9000

COPY --from=deps /opt/venv /opt/venv

# Code, config and archives stay root-owned and read-only to `serving`.
WORKDIR /app
COPY handlers/ handlers/
COPY stack/ stack/
COPY config.properties log4j2.xml ./
COPY --from=build /build/model_store/ model_store/
COPY --chmod=0755 docker/model-server-entrypoint.sh /usr/local/bin/model-server-entrypoint.sh
COPY docker/model_server_health.py /usr/local/lib/serving/model_server_health.py
RUN python -m compileall -q handlers stack /usr/local/lib/serving

USER 1000:1000
EXPOSE 8080 8081 8082

# Healthy only when every model this box loads has a READY worker (management API, with the box's own key).
# start-period covers JVM start and model loading (the local stack allows 180 s).
HEALTHCHECK --interval=10s --timeout=8s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/lib/serving/model_server_health.py"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/model-server-entrypoint.sh"]
