#!/usr/bin/env bash
# Starts the five GPU model servers of configs/servers/vllm.toml with vLLM and waits until each is
# healthy. Logs and pids in runs/servers/. GPUs per role: CAPTIONER_GPUS=0 REASONER_GPUS=1
# VERIFIER_GPUS=2 EVALUATOR_GPUS=3 EMBEDDER_GPUS=3 (override with those variables).
#   launch/up.sh --dry-run     print the exact commands, start nothing
#   launch/up.sh reasoner      start one role
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dry=0
roles=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    captioner|reasoner|verifier|evaluator|embedder) roles+=("$a") ;;
    *) echo "usage: launch/up.sh [--dry-run] [role...]" >&2; exit 2 ;;
  esac
done
[ ${#roles[@]} -gt 0 ] || roles=(captioner reasoner verifier evaluator embedder)
declare -A port=([captioner]=8001 [reasoner]=8002 [verifier]=8003 [evaluator]=8004 [embedder]=8005)
for r in "${roles[@]}"; do DRY_RUN=$dry "$here/vllm/$r.sh"; done
[ "$dry" = 1 ] && exit 0
for r in "${roles[@]}"; do
  url="http://127.0.0.1:${port[$r]}/health"
  for _ in $(seq 1 900); do
    curl -fsS "$url" >/dev/null 2>&1 && { echo "$r healthy at $url"; break; }
    sleep 2
  done
  curl -fsS "$url" >/dev/null 2>&1 || { echo "$r not healthy after 30 min; see runs/servers/$r.log" >&2; exit 1; }
done
echo "all servers up; check them with: imagescope doctor --config configs/servers/vllm.toml"
