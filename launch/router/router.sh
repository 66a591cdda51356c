#!/usr/bin/env bash
# vLLM's router (vllm-router 0.1.17, a Rust binary in a PyPI wheel) in front of several replicas of
# one role: imagescope's servers file then names the router as the role's one endpoint.
#   launch/router/router.sh ROLE PORT WORKER_URL...
#   launch/router/router.sh verifier 8100 http://gpu-node-1:8003 http://gpu-node-2:8003
# Log and pid: runs/servers/router-ROLE.log|pid (launch/down.sh router-ROLE stops it).
# DRY_RUN=1 prints the command. Install: launch/router/setup.sh (or pip install vllm-router==0.1.17).
#
# The flags, and why (each was seen on the real router, tests/router_live.rs and BENCHMARKS.md):
#   --policy consistent_hash     a request's worker is the hash of its X-Session-ID header, which
#                                imagescope sets per image when the role has `affinity = true`: the
#                                verifier's questions about one candidate meet one replica's caches.
#                                The router's default, cache_aware, matches request text only.
#   --health-check-interval-secs 5   the default is 60: for a minute after a worker dies the router's
#                                /health still says "All servers healthy"
#   --cb-failure-threshold 3     consistent_hash sends a dead worker's sessions to it again (and the
#                                router retries on the same worker) until its circuit opens: 3 failed
#                                attempts instead of 10 (the default) before its sessions move
#   --cb-timeout-duration-secs 15    then try the worker again after 15 s, not 60
#   --retry-max-retries 1        the router retries on the same hashed worker; imagescope retries too
#                                (with backoff), so one router retry is enough
#   --request-timeout-secs 600   a role's own timeout_secs is shorter; this only bounds a stuck worker
#   --prometheus-port            the router's own counters (requests per worker, its retries, circuit
#                                states), on PORT+20000 unless IMAGESCOPE_ROUTER_METRICS_PORT is set
# Other environment: IMAGESCOPE_ROUTER_BIN (default: vllm-router on PATH), IMAGESCOPE_ROUTER_HOST
# (default 0.0.0.0), IMAGESCOPE_ROUTER_POLICY (default consistent_hash; the benchmark compares
# others), IMAGESCOPE_ROUTER_NAME (log and pid name, default router-ROLE).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 ROLE PORT WORKER_URL... (e.g. verifier 8100 http://node1:8003 http://node2:8003)" >&2; exit 2; }
role=$1 port=$2
shift 2
metrics_port=${IMAGESCOPE_ROUTER_METRICS_PORT:-$((port + 20000))}
case "$port$metrics_port" in *[!0-9]*) echo "the port and metrics port must be numbers (got $port, $metrics_port)" >&2; exit 2 ;; esac
[ "$metrics_port" -le 65535 ] || { echo "metrics port $metrics_port is past 65535: set IMAGESCOPE_ROUTER_METRICS_PORT" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
cmd=("${IMAGESCOPE_ROUTER_BIN:-vllm-router}" --worker-urls "$@"
  --policy "${IMAGESCOPE_ROUTER_POLICY:-consistent_hash}"
  --host "${IMAGESCOPE_ROUTER_HOST:-0.0.0.0}" --port "$port"
  --prometheus-host "${IMAGESCOPE_ROUTER_HOST:-0.0.0.0}" --prometheus-port "$metrics_port"
  --health-check-interval-secs 5 --cb-failure-threshold 3 --cb-timeout-duration-secs 15
  --retry-max-retries 1 --request-timeout-secs 600 --log-level info)
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q' "${cmd[0]}"
  printf ' %q' "${cmd[@]:1}"
  printf '\n'
  exit 0
fi
name=${IMAGESCOPE_ROUTER_NAME:-router-$role}
mkdir -p "$root/runs/servers"
nohup "${cmd[@]}" >"$root/runs/servers/$name.log" 2>&1 &
echo $! >"$root/runs/servers/$name.pid"
echo "$name: pid $(cat "$root/runs/servers/$name.pid"), log runs/servers/$name.log"
