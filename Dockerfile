# syntax=docker/dockerfile:1
#
# Production image: TorchServe 0.12.0 + the FastAPI bridge, in ONE image and one container.
# Why one: TorchServe must stay on loopback (config.properties binds 127.0.0.1 and nothing here changes
# that), so only a process in the same network namespace can reach it; the bridge is the only public face
# (EXPOSE 8000) and it owns TorchServe's token file (key_file.json, written by TorchServe into its working
# dir). Splitting them would mean exposing TorchServe on a network and sharing its keys through a volume.
# PostgreSQL and InfluxDB are external: set BRIDGE_PG_DSN and BRIDGE_INFLUX_HOST at run time.
#
#   docker build -t serving .                                    # CPU torch wheels (default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t serving:cu126 .
#   docker run -p 8000:8000 -e BRIDGE_PG_DSN=postgresql://... -e BRIDGE_INFLUX_HOST=... serving
#   docker stop -t 40 ...    # graceful: the bridge drains (<= 10 s), then TorchServe stops its workers
#
# Stages: deps (runtime venv) -> build (deps + dev extras; builds and gates the .mar archives) -> runtime.

# ---- deps: the runtime virtualenv, requirements.txt only -----------------------------------------------------
FROM python:3.11-slim-bookworm AS deps

# PyTorch wheel index for torch/torchvision: CPU by default; a GPU build passes e.g. .../whl/cu126.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.txt ./
# torch/torchvision first, at the versions requirements.txt pins, from the PyTorch index only (no
# --extra-index-url: nothing else can be picked from it by accident); then the rest from PyPI, where the
# installed torch/torchvision already satisfy their pins and are kept.
RUN python -m venv /opt/venv \
 && grep -E '^(torch|torchvision)==' requirements.txt > /tmp/torch-requirements.txt \
 && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r /tmp/torch-requirements.txt \
 && pip install --no-cache-dir -r requirements.txt \
 && pip check

# ---- build: dev extras + the model archives, built and gated on golden photos --------------------------------
# The runtime gets the deps venv, not this one: scikit-image/scikit-learn (+ SciPy) are
# only needed for the golden gate, and leaving them out keeps the runtime image smaller. The extras are
# installed under a constraint on everything already in the venv, so the archives are gated against exactly
# the packages the runtime image serves them with (a conflict fails the build instead of moving a version).
FROM deps AS build
COPY requirements-build.txt ./
RUN pip freeze > /tmp/runtime-constraints.txt \
 && pip install --no-cache-dir -c /tmp/runtime-constraints.txt -r requirements-build.txt \
 && pip check

COPY handlers/ handlers/
COPY archive_scripts/ archive_scripts/
# Nothing reaches the store unless it answered its golden photos (see archive_scripts/build.py).
RUN python -m archive_scripts --store /build/model_store

# ---- runtime -------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# Java 17 for TorchServe's frontend; curl for the HEALTHCHECK; tini as PID 1 (forwards docker stop's SIGTERM
# to the entry point and reaps orphaned TorchServe workers). The man1 dir works around JRE postinst
# scripts failing on slim images (they drop /usr/share/man).
# DL3008 (unpinned apt versions) is ignored on purpose: bookworm is a stable release that only takes security
# fixes, and Debian drops superseded versions from its mirrors, so exact pins would break rebuilds rather
# than keep behaviour fixed.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl tini \
 && rm -rf /var/lib/apt/lists/*

# Non-root user; its home is the only writable app path: TorchServe's config/keys/tmp, logs, the spool.
RUN groupadd --gid 1000 serving \
 && useradd --uid 1000 --gid 1000 --home-dir /var/lib/serving --no-create-home --shell /usr/sbin/nologin serving \
 && install -d -o serving -g serving -m 0750 /var/lib/serving /var/lib/serving/spool

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVING_HOME=/var/lib/serving \
    APP_DIR=/app \
    MODEL_STORE=/app/model_store \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8000

COPY --from=deps /opt/venv /opt/venv

# Code, config and archives stay root-owned and read-only to `serving`.
WORKDIR /app
COPY bridge/ bridge/
COPY stack/ stack/
COPY handlers/ handlers/
# servingctl (ops/) and the specs it reads golden cases from; `deploy`'s golden photos need the build
# requirements (scikit-image), so run deploys from a build image or CI, the other commands from here.
COPY ops/ ops/
COPY archive_scripts/ archive_scripts/
COPY config.properties ./
COPY --from=build /build/model_store/ model_store/
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/entrypoint.sh
RUN python -m compileall -q bridge stack handlers ops archive_scripts

# `serving`, numerically, so runtimes enforcing runAsNonRoot can verify it.
USER 1000:1000
# The bridge only; TorchServe's 8080-8082/7070-7071 stay on the container's loopback.
EXPOSE 8000
# Mount a volume at /var/lib/serving/spool to keep records not yet written to PostgreSQL/InfluxDB across
# container replacements.

# Healthy only when the bridge answers and TorchServe answers its authenticated ping (bridge /ping is 503
# otherwise; curl -f then exits non-zero, which Docker counts as unhealthy). start-period covers JVM start
# and model loading (the local stack allows 180 s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "4", "-o", "/dev/null", "http://127.0.0.1:8000/ping"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]
