#!/usr/bin/env bash
# Starts vLLM's router on this machine in front of replicas that already run, through
# launch/router/router.sh (the one source of its flags), then waits until it answers and lists
# every worker. Run launch/router/setup.sh first.
#   launch/router/up.sh        the CPU stack's verifier pair: port 8023 in front of 8003 and 8013
#                              (launch/vllm-cpu/up.sh verifier verifier:8013 starts the pair;
#                              configs/servers/vllm-cpu-router.toml names the router)
#   launch/router/up.sh ROLE PORT WORKER_URL...   any role and replicas
#   launch/router/up.sh --dry-run                 print the command, start nothing (tests/launch.rs)
#   IMAGESCOPE_ROUTER_POLICY=round_robin up.sh    another policy (benches/model_work.sh compares them)
# Log and pid: runs/servers/router-ROLE.log|pid. Stop: launch/router/down.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_ROUTER_HOME:-$root/.router}"
dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi
if [ $# -eq 0 ]; then set -- verifier 8023 http://127.0.0.1:8003 http://127.0.0.1:8013; fi
[ $# -ge 3 ] || { echo "usage: $0 [ROLE PORT WORKER_URL...]" >&2; exit 2; }
role=$1 port=$2
workers=$(($# - 2))
export IMAGESCOPE_ROUTER_BIN="$home/venv/bin/vllm-router"
export IMAGESCOPE_ROUTER_HOST=127.0.0.1
export IMAGESCOPE_ROUTER_NAME="router-$role"
python="$home/venv/bin/python"
if [ "$dry" = 1 ]; then
  DRY_RUN=1 exec "$here/router.sh" "$@"
fi
[ -x "$IMAGESCOPE_ROUTER_BIN" ] || { echo "vllm-router is not installed in $home; run launch/router/setup.sh" >&2; exit 2; }
name="router-$role"
logs="$root/runs/servers"
if [ -f "$logs/$name.pid" ] && kill -0 "$(cat "$logs/$name.pid")" 2>/dev/null; then
  echo "    $name already running (pid $(cat "$logs/$name.pid")); launch/router/down.sh stops it"
  exit 0
fi
if curl -fsS --max-time 3 "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
  echo "router: something not started by this script already answers on port $port; stop it, or choose another port" >&2
  exit 1
fi
step "router: start vllm-router for the $role on 127.0.0.1:$port in front of $workers worker(s)" "a few seconds once the workers are healthy"
"$here/router.sh" "$@"
# The router answers only once every worker has passed its health check.
deadline=$(($(date +%s) + ${IMAGESCOPE_ROUTER_START_SECS:-120}))
until [ "$(curl -fsS --max-time 3 "http://127.0.0.1:$port/list_workers" 2>/dev/null | "$python" -c 'import json,sys; print(len(json.load(sys.stdin)["urls"]))' 2>/dev/null)" = "$workers" ]; do
  if ! kill -0 "$(cat "$logs/$name.pid")" 2>/dev/null; then
    echo "router: vllm-router exited before it was ready; the end of its log:" >&2
    tail -n 20 "$logs/$name.log" >&2
    exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "router: not ready with $workers worker(s) after ${IMAGESCOPE_ROUTER_START_SECS:-120} s (are the replicas up?); see $logs/$name.log" >&2
    exit 1
  fi
  sleep 1
done
echo "    router for the $role ready on 127.0.0.1:$port after $(human $(($(date +%s) - step_t))): $(curl -fsS --max-time 3 "http://127.0.0.1:$port/list_workers")"
echo "    memory: $(ps -o rss= -p "$(cat "$logs/$name.pid")" | awk '{printf "%.0f MB", $1 / 1024}') resident"
