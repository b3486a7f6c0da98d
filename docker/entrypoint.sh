#!/usr/bin/env bash
# Container entry point: TorchServe (loopback only) and the bridge (the public face, :8000) in one container.
#
# What it does, in order (the container equivalent of `make up` without PostgreSQL/InfluxDB, which are external):
#   1. writes TorchServe's effective config (config.properties + this image's model store) into a writable
#      state dir, as stack/services.py TorchServe.effective_config() does;
#   2. starts TorchServe in the background from that dir (so key_file.json lands there), with the bridge's
#      and the databases' credentials removed from its environment;
#   3. waits for TorchServe's key file, then starts the bridge;
#   4. on SIGTERM/SIGINT (docker stop): stops the bridge first (it drains in-flight requests and flushes its
#      records while TorchServe still answers), then TorchServe (`torchserve --stop`, which stops the JVM
#      and its workers; signalling the Python launcher alone would leave the JVM running);
#   5. if either process dies on its own, stops the other and exits non-zero so the orchestrator restarts us.
#
# Knobs (environment): SERVING_HOME (state dir, default /var/lib/serving), APP_DIR (code, default /app),
# MODEL_STORE (default $APP_DIR/model_store), TS_KEY_WAIT_S (default 180), plus the bridge's BRIDGE_* settings.
set -Eeuo pipefail

SERVING_HOME=${SERVING_HOME:-/var/lib/serving}
APP_DIR=${APP_DIR:-/app}
MODEL_STORE=${MODEL_STORE:-$APP_DIR/model_store}
TS_KEY_WAIT_S=${TS_KEY_WAIT_S:-180}
TS_HOME=$SERVING_HOME/torchserve
TS_TMP=$TS_HOME/tmp
TS_CONFIG=$TS_HOME/config.properties
KEY_FILE=$TS_HOME/key_file.json
LOG_DIR=$SERVING_HOME/logs/torchserve

log() { printf '%s entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Signals are only recorded here; the main flow below acts on them (bash runs traps between commands,
# and `wait` returns as soon as a trapped signal arrives).
stop_signal=""
trap 'stop_signal=TERM' TERM
trap 'stop_signal=INT' INT

# --- 1. State dirs and TorchServe's effective config ------------------------------------------------------
mkdir -p "$TS_TMP" "$LOG_DIR" "$SERVING_HOME/spool"
# A key file or pid file left by a previous run of this container would fool the readiness wait below.
rm -f "$KEY_FILE" "$TS_TMP/.model_server.pid"

for archive in $(sed -n 's/^[[:space:]]*load_models=//p' "$APP_DIR/config.properties" | tr ',' ' '); do
    if [[ ! -f "$MODEL_STORE/$archive" ]]; then
        log "archive $archive (load_models) is missing from $MODEL_STORE; the image was built without it"
        exit 1
    fi
done

{
    cat "$APP_DIR/config.properties"
    printf '\n# --- added by docker/entrypoint.sh for this container\n'
    printf 'model_store=%s\n' "$MODEL_STORE"
    # Only this image's model store may be registered from (the regex's backslash is escaped for Java).
    printf 'allowed_urls=file://%s/%s\n' "$MODEL_STORE" '[A-Za-z0-9_.-]+\\.mar'
} >"$TS_CONFIG"

# TorchServe's environment, as stack/services.py TorchServe._env(): TEMP -> the JVM's java.io.tmpdir
# (unpacked models), TMPDIR -> the launcher's pid file and the workers' sockets.
ts_env() {
    export TEMP=$TS_TMP TMPDIR=$TS_TMP LOG_LOCATION=$LOG_DIR METRICS_LOCATION=$LOG_DIR OMP_NUM_THREADS=1
}

# --- 2. TorchServe ----------------------------------------------------------------------------------------
(
    cd "$TS_HOME"
    # TorchServe never needs the bridge's or the databases' settings (config.properties already keeps them
    # from the workers with blacklist_env_vars; this keeps them from the frontend JVM too).
    while IFS= read -r name; do
        case $name in
            BRIDGE_* | PG* | INFLUX* | DATABASE_URL | *PASSWORD* | *SECRET* | *TOKEN* | *_KEY) unset "$name" ;;
        esac
    done < <(compgen -e)
    ts_env
    exec torchserve --start --foreground --ncs --ts-config "$TS_CONFIG"
) &
ts_pid=$!
log "TorchServe started (pid $ts_pid); waiting for its key file $KEY_FILE"

stop_torchserve() {
    if kill -0 "$ts_pid" 2>/dev/null; then
        log "stopping TorchServe"
        # --stop terminates the JVM recorded in the pid file and, with --foreground, waits (up to 60 s).
        (cd "$TS_HOME" && ts_env && torchserve --stop --foreground) || kill -TERM "$ts_pid" 2>/dev/null || true
    fi
    wait "$ts_pid" 2>/dev/null || true
}

# --- 3. Wait for the key file, then the bridge -------------------------------------------------------------
deadline=$((SECONDS + TS_KEY_WAIT_S))
until [[ -s "$KEY_FILE" ]]; do
    if [[ -n "$stop_signal" ]]; then
        log "SIG$stop_signal before TorchServe was up"
        stop_torchserve
        exit 0
    fi
    if ! kill -0 "$ts_pid" 2>/dev/null; then
        rc=0
        wait "$ts_pid" || rc=$?
        log "TorchServe exited (status $rc) before writing its key file; see its log above"
        exit $((rc == 0 ? 1 : rc))
    fi
    if ((SECONDS >= deadline)); then
        log "TorchServe wrote no key file within ${TS_KEY_WAIT_S} s"
        stop_torchserve
        exit 1
    fi
    sleep 0.5
done
log "TorchServe key file present; starting the bridge"

if [[ -z "${BRIDGE_PG_DSN:-}" || -z "${BRIDGE_INFLUX_HOST:-}" ]]; then
    log "warning: BRIDGE_PG_DSN and/or BRIDGE_INFLUX_HOST are not set; the defaults point at 127.0.0.1," \
        "where this container runs no database (records will be spooled to $SERVING_HOME/spool)"
fi

export BRIDGE_HOST=${BRIDGE_HOST:-0.0.0.0}
export BRIDGE_TORCHSERVE_KEY_FILE=$KEY_FILE
export BRIDGE_SPOOL_DIR=${BRIDGE_SPOOL_DIR:-$SERVING_HOME/spool}
cd "$APP_DIR"
python -m bridge &
bridge_pid=$!
log "bridge started (pid $bridge_pid) on $BRIDGE_HOST:${BRIDGE_PORT:-8000}"

# --- 4./5. Run until a signal arrives or one of the two exits ----------------------------------------------
rc=0
if [[ -z "$stop_signal" ]]; then
    wait -n "$ts_pid" "$bridge_pid" || rc=$?
fi
trap '' TERM INT # a second docker stop must not interrupt the orderly shutdown below

if [[ -n "$stop_signal" ]]; then
    log "SIG$stop_signal received: stopping the bridge, then TorchServe"
    kill -TERM "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" 2>/dev/null || true
    stop_torchserve
    log "stopped"
    exit 0
fi

if ! kill -0 "$bridge_pid" 2>/dev/null; then
    log "the bridge exited (status $rc); stopping TorchServe"
    stop_torchserve
else
    log "TorchServe exited (status $rc); stopping the bridge"
    kill -TERM "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" 2>/dev/null || true
fi
exit $((rc == 0 ? 1 : rc))
