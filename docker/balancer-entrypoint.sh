#!/usr/bin/env bash
# The balancer's entry point: nginx.conf written from BALANCER_LISTEN (host:port) and BALANCER_UPSTREAMS
# (comma-separated host:port of the bridges) into /tmp (the root filesystem may be read-only), then nginx in the
# foreground. A bridge that refuses the connection (stopped, killed) is skipped for 5 s and the request goes to
# the next one; a request already sent to a bridge that dies is not re-sent (POST is not idempotent): the client
# gets 502 and retries, and that request was never acknowledged.
set -Eeuo pipefail

CONF_DIR=${BALANCER_STATE:-/tmp/balancer}
mkdir -p "$CONF_DIR"
servers=""
for upstream in ${BALANCER_UPSTREAMS//,/ }; do
    servers+="        server $upstream max_fails=1 fail_timeout=5s;"$'\n'
done
if [[ -z "$servers" ]]; then
    echo "balancer: set BALANCER_UPSTREAMS (e.g. 127.0.0.1:8001,127.0.0.1:8002)" >&2
    exit 2
fi

cat >"$CONF_DIR/nginx.conf" <<CONF
worker_processes 1;
pid $CONF_DIR/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $CONF_DIR/body;
    proxy_temp_path $CONF_DIR/proxy;
    fastcgi_temp_path $CONF_DIR/fastcgi;
    uwsgi_temp_path $CONF_DIR/uwsgi;
    scgi_temp_path $CONF_DIR/scgi;
    # The bridge enforces its own limit (BRIDGE_MAX_BODY_BYTES, 413 with its error body); this one is above it.
    client_max_body_size 16m;
    upstream bridges {
$servers        keepalive 32;
    }
    server {
        listen $BALANCER_LISTEN;
        location / {
            proxy_pass http://bridges;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
            proxy_send_timeout 60s;
        }
    }
}
CONF
echo "balancer: $BALANCER_LISTEN -> ${BALANCER_UPSTREAMS}" >&2
exec nginx -e stderr -c "$CONF_DIR/nginx.conf" -g 'daemon off;'
