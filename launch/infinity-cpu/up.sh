#!/usr/bin/env bash
# Starts a real infinity-emb 0.0.78 server on this CPU machine for the embedder, through the GPU
# recipe launch/infinity/embedder.sh (the one source of its flags) with only the model folder, its
# served name, the port, the device and the host overridden, then waits until it is healthy. Run
# launch/infinity-cpu/setup.sh first.
#   launch/infinity-cpu/up.sh             start it on 127.0.0.1:8006 (beside vLLM's embedder on 8005)
#   launch/infinity-cpu/up.sh --dry-run   print the command, start nothing (tests/launch.rs)
#   IMAGESCOPE_INFINITY_PORT=8007 INFINITY_QUEUE_SIZE=1 up.sh   another instance (tests/infinity_live.rs)
#   IMAGESCOPE_INFINITY_CPU_MODEL=DIR up.sh                     serve DIR instead of the adapted folder
# The model is the tiny RANDOM-weight CLIP of launch/vllm-cpu (64 dimensions): this stack proves the
# protocol (request shapes, data: images, batching, error bodies), not embedding quality.
# Log and pid: runs/servers/infinity-embedder-PORT.log|pid.
# Stop: launch/infinity-cpu/down.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_INFINITY_CPU_HOME:-$root/.infinity-cpu}"
port=${IMAGESCOPE_INFINITY_PORT:-8006}
dry=0
[ "${1:-}" = --dry-run ] && dry=1

export IMAGESCOPE_INFINITY_BIN="$home/venv/bin/infinity_emb"
export IMAGESCOPE_INFINITY_MODEL="${IMAGESCOPE_INFINITY_CPU_MODEL:-$home/models/embedder}"
export IMAGESCOPE_INFINITY_SERVED_NAME=embedder
export IMAGESCOPE_INFINITY_PORT=$port
export IMAGESCOPE_INFINITY_DEVICE=cpu
export IMAGESCOPE_INFINITY_HOST=127.0.0.1
if [ "$dry" = 1 ]; then
  DRY_RUN=1 exec "$root/launch/infinity/embedder.sh"
fi
[ -x "$IMAGESCOPE_INFINITY_BIN" ] || { echo "infinity-emb is not installed in $home; run launch/infinity-cpu/setup.sh" >&2; exit 2; }
[ -d "$IMAGESCOPE_INFINITY_MODEL" ] || { echo "no model folder $IMAGESCOPE_INFINITY_MODEL; run launch/infinity-cpu/setup.sh" >&2; exit 2; }
name="infinity-embedder-$port"
logs="$root/runs/servers"
if [ -f "$logs/$name.pid" ] && kill -0 "$(cat "$logs/$name.pid")" 2>/dev/null; then
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    echo "    $name already running (pid $(cat "$logs/$name.pid")); launch/infinity-cpu/down.sh stops it"
    exit 0
  fi
  echo "infinity-cpu: $name (pid $(cat "$logs/$name.pid")) runs but does not answer on port $port; stop it with launch/infinity-cpu/down.sh" >&2
  exit 1
fi
if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
  echo "infinity-cpu: something not started by this script already answers on port $port; stop it, or choose another port with IMAGESCOPE_INFINITY_PORT" >&2
  exit 1
fi
step "infinity-cpu: start the embedder on 127.0.0.1:$port" "about 20-40 s"
# No model hub: the folder is local. torch on one thread: the vLLM servers share the 2 cores.
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false \
  IMAGESCOPE_INFINITY_NAME=$name "$root/launch/infinity/embedder.sh"
deadline=$(($(date +%s) + ${IMAGESCOPE_INFINITY_START_SECS:-300}))
until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  if ! kill -0 "$(cat "$logs/$name.pid")" 2>/dev/null; then
    echo "infinity-cpu: the server exited before it was healthy; the end of its log:" >&2
    tail -n 30 "$logs/$name.log" >&2
    exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "infinity-cpu: not healthy after ${IMAGESCOPE_INFINITY_START_SECS:-300} s; see $logs/$name.log" >&2
    exit 1
  fi
  sleep 1
done
echo "    embedder (infinity) healthy on 127.0.0.1:$port after $(human $(($(date +%s) - step_t)))"
echo "    memory: $(ps -o rss= -p "$(cat "$logs/$name.pid")" | awk '{printf "%.0f MB", $1 / 1024}') resident"
