#!/usr/bin/env bash
# Load test of `kiln serve` (loopback only): builds kiln, starts the server on a small real model,
# runs load.py (64 clients, 500 requests mixing streams, disconnects and malformed bodies), and
# stops the server. Usage: tests/server/run_load.sh [MODEL] [load.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/server/serve_lib.sh
cargo build --release -p kiln-cli
KILN="$PWD/target/release/kiln"
# Default: gemma3-270m (a base model: its chats use the built-in gemma template), pulled into $KILN_HOME/models on first use (prints its path).
MODEL="${1:-$("$KILN" pull gemma3-270m)}"
shift || true
check_model "$MODEL"
PORT="${KILN_LOAD_PORT:-18090}"
KEY="load-$RANDOM$RANDOM"
SLOTS=4
CTX=256
MAX_BODY=65536
ALIAS=load-model
start_server "$PORT" -m "$MODEL" --parallel "$SLOTS" --ctx-size "$CTX" --max-queue 1024 \
    --max-body "$MAX_BODY" --alias "$ALIAS" --api-key "$KEY" --chat-template gemma
status=0
python3 tests/server/load.py "http://127.0.0.1:$PORT" "$KEY" "$PID" "$ALIAS" "$CTX" "$MAX_BODY" \
    --slots "$SLOTS" --exact "$@" || status=$?
if ! kill -0 "$PID" 2>/dev/null; then
    echo "run_load.sh: the server died during the load" >&2
    cat "$LOG" >&2
    exit 1
fi
# SIGTERM still drains and exits cleanly after the load.
kill -TERM "$PID"
wait "$PID" || { echo "run_load.sh: unclean exit" >&2; cat "$LOG" >&2; exit 1; }
if [ "$status" -ne 0 ]; then cat "$LOG" >&2; fi
exit "$status"
