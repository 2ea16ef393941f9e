#!/usr/bin/env bash
# The main job, in the real shape: the model sits behind an OpenAI-compatible API
# (`maas-tune serve` on loopback), and maas-tune scores SST-2 through it with the
# `auto` strategy, fits 16-shot DecT under a 64-query training budget and evaluates on
# the 872-sentence test set; then runs the same job again, answered from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PORT=${DEMO_PORT:-8437}
URL="http://127.0.0.1:$PORT/v1"
FLAGS=(--dataset sst2 --method zero-shot,calibrated,dect --shots 16 --seed 0
       --budget demo-train --max-queries 64 --base-url "$URL")

echo "== starting maas-tune serve (Gemma 3 270M) on $URL"
"$BIN/maas-tune" serve --port "$PORT" > .demo-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
"$BIN/python" - "$PORT" "$SERVER" <<'PY'
import os, sys, time, httpx
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300  # the first start converts the GGUF once (~1 min)
while time.monotonic() < deadline:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("maas-tune serve exited; see .demo-server.log")
    time.sleep(0.5)
sys.exit("maas-tune serve did not come up in 300 s; see .demo-server.log")
PY
echo "== run 1: score through HTTP, fit 16-shot DecT under a 64-query training budget"
"$BIN/maas-tune" eval "${FLAGS[@]}"
echo "== run 2: the same job again, answered from the cache"
"$BIN/maas-tune" eval "${FLAGS[@]}" --quiet
