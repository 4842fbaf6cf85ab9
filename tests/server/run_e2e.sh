#!/usr/bin/env bash
# Builds kiln, starts `kiln serve` on a real model, runs e2e.py with the official openai client,
# and stops the server. Usage: tests/server/run_e2e.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/server/serve_lib.sh
python3 -c 'import openai' 2>/dev/null || python3 -m pip install --quiet openai
cargo build --release -p kiln-cli
KILN="$PWD/target/release/kiln"
# Default: qwen2.5-coder-0.5b, pulled into $KILN_HOME/models on first use (prints its path).
MODEL="${1:-$("$KILN" pull qwen2.5-coder-0.5b)}"
check_model "$MODEL"
PORT="${KILN_E2E_PORT:-18080}"
KEY="e2e-$RANDOM$RANDOM"
start_server "$PORT" -m "$MODEL" --parallel 4 --ctx-size 2048 --api-key "$KEY"
python3 tests/server/e2e.py "http://127.0.0.1:$PORT/v1" "$KEY" "$KILN" "$MODEL"
# SIGTERM drains and exits cleanly.
kill -TERM "$PID"
wait "$PID"
echo "server stopped cleanly"
