#!/usr/bin/env bash
# Shared by the role scripts: runs (or, with DRY_RUN=1, prints) one `vllm serve` command on the
# GPUs in $GPUS, logging to runs/servers/<role>.log with its pid in runs/servers/<role>.pid.
# Usage: _serve.sh ROLE GPUS MODEL [vllm flags...]
#
# The role scripts are the one source of each server's flags. The CPU stack
# (launch/vllm-cpu/up.sh) runs these same scripts with these variables set; on GPUs leave them unset:
#   IMAGESCOPE_VLLM_BIN          the vllm executable (default: `vllm` on PATH)
#   IMAGESCOPE_VLLM_MODEL        a local model folder to serve instead of the hub id
#   IMAGESCOPE_VLLM_SERVED_NAME  the name clients use for it (--served-model-name)
#   IMAGESCOPE_VLLM_DROP_FLAGS   GPU-only flags to leave out, space-separated (each is dropped with its value)
#   IMAGESCOPE_VLLM_EXTRA_FLAGS  flags to add (space-separated)
#   IMAGESCOPE_VLLM_PORT         serve on this port instead of the role's (a second replica)
#   IMAGESCOPE_VLLM_NAME         its log and pid name under runs/servers (default: the role)
set -euo pipefail
role=$1 gpus=$2 model=$3
shift 3
root=$(cd "$(dirname "$0")/../.." && pwd)
flags=()
drop=" ${IMAGESCOPE_VLLM_DROP_FLAGS:-} "
while [ $# -gt 0 ]; do
  if [[ "$drop" == *" $1 "* ]]; then
    shift 2
    continue
  fi
  if [ "$1" = --port ] && [ -n "${IMAGESCOPE_VLLM_PORT:-}" ]; then
    flags+=(--port "$IMAGESCOPE_VLLM_PORT")
    shift 2
    continue
  fi
  flags+=("$1")
  shift
done
if [ -n "${IMAGESCOPE_VLLM_MODEL:-}" ]; then
  flags+=(--served-model-name "${IMAGESCOPE_VLLM_SERVED_NAME:-$model}")
  model=$IMAGESCOPE_VLLM_MODEL
fi
# shellcheck disable=SC2206  # deliberate word splitting of the extra flags
[ -n "${IMAGESCOPE_VLLM_EXTRA_FLAGS:-}" ] && flags+=(${IMAGESCOPE_VLLM_EXTRA_FLAGS})
# --enable-prompt-tokens-details: each answer's usage says how many prompt tokens came from the
# prefix cache, which imagescope sums per role for the run summary (exact for the run's own requests).
cmd=("${IMAGESCOPE_VLLM_BIN:-vllm}" serve "$model" --host "${IMAGESCOPE_VLLM_HOST:-0.0.0.0}" --generation-config vllm --enable-prompt-tokens-details "${flags[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf 'CUDA_VISIBLE_DEVICES=%s' "$gpus"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
name=${IMAGESCOPE_VLLM_NAME:-$role}
mkdir -p "$root/runs/servers"
CUDA_VISIBLE_DEVICES="$gpus" nohup "${cmd[@]}" >"$root/runs/servers/$name.log" 2>&1 &
echo $! >"$root/runs/servers/$name.pid"
echo "$name: pid $(cat "$root/runs/servers/$name.pid"), log runs/servers/$name.log"
