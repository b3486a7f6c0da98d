# The API tier: the bridge (FastAPI) and the shared infrastructure it imports (stack/), nothing else: no torch,
# no Java, no TorchServe. It reaches the model servers over HTTP (BRIDGE_TORCHSERVE_*), PostgreSQL and InfluxDB
# over the network; scale it on its own ("too many API requests, add an API server").
#
#   make images                                      # both images (python -m stack.docker images)
#   docker build -f docker/api.Dockerfile -t serving-api .
#   docker run --network host -e BRIDGE_HOST=127.0.0.1 -e BRIDGE_PG_DSN=postgresql://... \
#       -v <model box's key dir>:/var/lib/serving/torchserve:ro serving-api
#
# PYTHON_IMAGE defaults to the official image; `make images` passes a base made from Debian's packages when the
# official one is not on this machine (no registry reachable; see stack/docker.py).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- deps: a virtualenv with the bridge's requirements only (their pins come from requirements.txt) -----------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./
RUN python -m venv /opt/venv \
 && grep -E '^(fastapi|uvicorn\[standard\]|httpx|pydantic|pydantic-settings|python-multipart|psycopg2-binary|influxdb|requests)[=<>~ ]' \
        requirements.txt > /tmp/api-requirements.txt \
 && pip install --no-cache-dir -r /tmp/api-requirements.txt \
 && pip check

# ---- runtime -------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# Non-root user; its home holds the only writable paths (the spool; the model box's key dir is mounted there).
RUN groupadd --gid 1000 serving \
 && useradd --uid 1000 --gid 1000 --home-dir /var/lib/serving --no-create-home --shell /usr/sbin/nologin serving \
 && install -d -o serving -g serving -m 0750 /var/lib/serving /var/lib/serving/spool /var/lib/serving/captures

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8000 \
    BRIDGE_SPOOL_DIR=/var/lib/serving/spool \
    BRIDGE_TORCHSERVE_KEY_FILE=/var/lib/serving/torchserve/key_file.json

COPY --from=deps /opt/venv /opt/venv
# Code stays root-owned and read-only to `serving`; compiled now, since the root filesystem may be read-only.
WORKDIR /app
COPY bridge/ bridge/
COPY stack/ stack/
RUN python -m compileall -q bridge stack

# `serving`, numerically, so runtimes enforcing runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8000
# Records not yet written to PostgreSQL/InfluxDB: mount a volume here to keep them across container replacements.
VOLUME ["/var/lib/serving/spool"]

# Healthy only when the bridge answers /ping with 200, i.e. its TorchServe answers (urlopen raises on a 503).
# No curl in this image: Python does it. The port follows BRIDGE_PORT when a run changes it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; u.urlopen(sys.argv[1].replace(':8000/', ':' + os.environ.get('BRIDGE_PORT', '8000') + '/'), timeout=4)", "http://127.0.0.1:8000/ping"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "bridge"]
