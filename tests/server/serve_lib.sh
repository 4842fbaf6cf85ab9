# Sourced by run_e2e.sh and run_load.sh (from the repository root, with KILN set): what both
# do around their Python client.

# check_model MODEL: fails with a clear message when MODEL does not exist.
check_model() {
    if [ ! -e "$1" ]; then
        echo "$(basename "$0"): model $1 does not exist" >&2
        exit 1
    fi
}

# start_server PORT SERVE_ARGS...: starts `$KILN serve --port PORT SERVE_ARGS...` in the
# background (its output in $LOG, its pid in $PID), stops it when the script exits, and waits
# for /health; if the server dies first, prints its log and fails.
start_server() {
    local port=$1
    shift
    LOG="$(mktemp)"
    "$KILN" serve --port "$port" "$@" >"$LOG" 2>&1 &
    PID=$!
    trap stop_server EXIT
    for _ in $(seq 1 600); do
        if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$PID" 2>/dev/null; then cat "$LOG" >&2; exit 1; fi
        sleep 0.5
    done
}

stop_server() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -f "$LOG"
}
