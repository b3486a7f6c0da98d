# The bridges' one address on a host: nginx from Debian's packages, round-robin over the bridge replicas, on
# loopback (host networking). Kubernetes needs none of it (the bridge's Service balances).
#
#   make images                                      # all three images (python -m stack.docker images)
#   docker run --network host -e BALANCER_LISTEN=127.0.0.1:8000 \
#       -e BALANCER_UPSTREAMS=127.0.0.1:8001,127.0.0.1:8002 serving-balancer
#
# BASE_IMAGE defaults to the official Debian image; `make images` passes the base made from Debian's packages
# when the official one is not on this machine (no registry reachable; see stack/docker.py).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# DL3008 (unpinned apt versions) is ignored on purpose, as in the root Dockerfile: bookworm takes security
# fixes only, and Debian drops superseded versions from its mirrors.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && groupadd --gid 1000 balancer \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin balancer

COPY --chmod=0755 docker/balancer-entrypoint.sh /usr/local/bin/balancer-entrypoint.sh

ENV BALANCER_LISTEN=127.0.0.1:8000 \
    BALANCER_UPSTREAMS=127.0.0.1:8001,127.0.0.1:8002
USER 1000:1000

# Healthy when a bridge answers /ping through it (bash's /dev/tcp: no curl in this image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/${BALANCER_LISTEN%:*}/${BALANCER_LISTEN##*:} && printf 'GET /ping HTTP/1.0\\r\\nHost: balancer\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]

STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/local/bin/balancer-entrypoint.sh"]
