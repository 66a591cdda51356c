#!/usr/bin/env bash
# Shared by the role scripts: runs (or, with DRY_RUN=1, prints) one `vllm serve` command on the
# GPUs in $GPUS, logging to runs/servers/<role>.log with its pid in runs/servers/<role>.pid.
# Usage: _serve.sh ROLE GPUS MODEL [vllm flags...]
set -euo pipefail
role=$1 gpus=$2 model=$3
shift 3
root=$(cd "$(dirname "$0")/../.." && pwd)
cmd=(vllm serve "$model" --host "${VLLM_HOST:-0.0.0.0}" --generation-config vllm "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf 'CUDA_VISIBLE_DEVICES=%s' "$gpus"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
mkdir -p "$root/runs/servers"
CUDA_VISIBLE_DEVICES="$gpus" nohup "${cmd[@]}" >"$root/runs/servers/$role.log" 2>&1 &
echo $! >"$root/runs/servers/$role.pid"
echo "$role: pid $(cat "$root/runs/servers/$role.pid"), log runs/servers/$role.log"
