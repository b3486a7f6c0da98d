#!/usr/bin/env bash
# Model server box entry point: TorchServe serving the archives named by SERVING_MODELS, nothing else.
#
#   1. writes TorchServe's effective config into the writable state dir: config.properties with this box's
#      listeners (SERVING_TS_HOST and SERVING_TS_*_PORT), its models (SERVING_MODELS, comma-separated archive
#      names; default: config.properties' load_models) and this image's model store;
#   2. starts TorchServe from $SERVING_HOME/torchserve, so its key file lands there (mount that dir, read-only,
#      into the bridge to share the keys), with credentials removed from its environment;
#   3. on SIGTERM/SIGINT (docker stop) runs `torchserve --stop`, which signals the JVM (signalling the Python
#      launcher alone would leave it running), waits at most SERVING_STOP_GRACE_S (default 3) for it to exit, then
#      exits, so the container's end kills what is left. Why not wait longer: a stopping TorchServe closes its
#      listening socket but leaves accepted requests unanswered (their workers are stopped) until the JVM is gone
#      — measured: over 25 s. Ending it closes those connections, and the bridge sends each such request to
#      another box of the model (bridge/routing.py) instead of waiting for its timeout. If TorchServe dies on its
#      own, exits non-zero so the orchestrator restarts the box.
set -Eeuo pipefail

SERVING_HOME=${SERVING_HOME:-/var/lib/serving}
APP_DIR=${APP_DIR:-/app}
MODEL_STORE=${MODEL_STORE:-$APP_DIR/model_store}
TS_HOME=$SERVING_HOME/torchserve
TS_TMP=$SERVING_HOME/tmp
TS_CONFIG=$TS_HOME/config.properties
LOG_DIR=$SERVING_HOME/logs
HOST=${SERVING_TS_HOST:-127.0.0.1}

log() { printf '%s model-server: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

stop_signal=""
trap 'stop_signal=TERM' TERM
trap 'stop_signal=INT' INT

mkdir -p "$TS_HOME" "$TS_TMP" "$LOG_DIR"
# A key file or pid file left by a previous run would fool the bridge and the health check.
rm -f "$TS_HOME/key_file.json" "$TS_TMP/.model_server.pid"

models=${SERVING_MODELS:-$(sed -n 's/^[[:space:]]*load_models=//p' "$APP_DIR/config.properties")}
models=${models// /}
if [[ -z "$models" ]]; then
    log "no models to serve: set SERVING_MODELS (e.g. classifier_v1.0.mar)"
    exit 2
fi
for archive in ${models//,/ }; do
    if [[ ! -f "$MODEL_STORE/$archive" ]]; then
        log "archive $archive is not in $MODEL_STORE (present: $(cd "$MODEL_STORE" && echo *.mar))"
        exit 2
    fi
done

{
    # Everything but what this box sets below.
    grep -vE '^[[:space:]]*(inference_address|management_address|metrics_address|grpc_inference_address|grpc_management_address|grpc_inference_port|grpc_management_port|initial_worker_port|load_models|model_store|allowed_urls)[[:space:]]*=' \
        "$APP_DIR/config.properties"
    printf '\n# --- this box (docker/model-server-entrypoint.sh)\n'
    printf 'inference_address=http://%s:%s\n' "$HOST" "${SERVING_TS_INFERENCE_PORT:-8080}"
    printf 'management_address=http://%s:%s\n' "$HOST" "${SERVING_TS_MANAGEMENT_PORT:-8081}"
    printf 'metrics_address=http://%s:%s\n' "$HOST" "${SERVING_TS_METRICS_PORT:-8082}"
    printf 'grpc_inference_address=%s\ngrpc_management_address=%s\n' "$HOST" "$HOST"
    printf 'grpc_inference_port=%s\n' "${SERVING_TS_GRPC_INFERENCE_PORT:-7070}"
    printf 'grpc_management_port=%s\n' "${SERVING_TS_GRPC_MANAGEMENT_PORT:-7071}"
    # Workers talk to the frontend over TCP from this port up: boxes sharing the host's network need their own.
    printf 'initial_worker_port=%s\n' "${SERVING_TS_WORKER_PORT:-9000}"
    printf 'load_models=%s\n' "$models"
    printf 'model_store=%s\n' "$MODEL_STORE"
    # Only this image's model store may be registered from (the regex's backslash is escaped for Java).
    printf 'allowed_urls=file://%s/%s\n' "$MODEL_STORE" '[A-Za-z0-9_.-]+\\.mar'
} >"$TS_CONFIG"

# TEMP -> the JVM's java.io.tmpdir (unpacked models); TMPDIR -> the launcher's pid file and the workers' sockets.
ts_env() {
    export TEMP=$TS_TMP TMPDIR=$TS_TMP LOG_LOCATION=$LOG_DIR METRICS_LOCATION=$LOG_DIR OMP_NUM_THREADS=1
}

(
    cd "$TS_HOME"
    while IFS= read -r name; do
        case $name in
            BRIDGE_* | PG* | INFLUX* | DATABASE_URL | *PASSWORD* | *SECRET* | *TOKEN* | *_KEY) unset "$name" ;;
        esac
    done < <(compgen -e)
    ts_env
    exec torchserve --start --foreground --ncs --ts-config "$TS_CONFIG" --log-config "$APP_DIR/log4j2.xml"
) &
ts_pid=$!
log "TorchServe started (pid $ts_pid) on $HOST:${SERVING_TS_INFERENCE_PORT:-8080} serving $models"

rc=0
if [[ -z "$stop_signal" ]]; then
    wait "$ts_pid" || rc=$?
fi
trap '' TERM INT # a second docker stop must not interrupt the orderly shutdown below
if [[ -n "$stop_signal" ]]; then
    grace_s=${SERVING_STOP_GRACE_S:-3}
    log "SIG$stop_signal received: stopping TorchServe (at most ${grace_s} s, then the box ends)"
    if kill -0 "$ts_pid" 2>/dev/null; then
        (cd "$TS_HOME" && ts_env && torchserve --stop >/dev/null) || kill -TERM "$ts_pid" 2>/dev/null || true
        for ((tenths = 0; tenths < grace_s * 10; tenths++)); do
            kill -0 "$ts_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    log "stopped"
    exit 0
fi
log "TorchServe exited (status $rc)"
exit $((rc == 0 ? 1 : rc))
