#!/usr/bin/env bash
# CLIP ViT-L/14 (LAION-2B) on infinity instead of vLLM: `POST /embeddings` with `input` and
# `modality`. In the servers file: api = "infinity", embed_shape = "infinity",
# endpoints = ["http://HOST:8005"], model = the served name (configs/servers/vllm-cpu-infinity.toml
# is the CPU stack's example). infinity answers 429 when its queue is full; imagescope backs
# off and retries. Log and pid: runs/servers/infinity-embedder.log|pid. DRY_RUN=1 prints the command.
#
# Text window: infinity 0.0.78 cuts CLIP text at the model config's `max_length`, and transformers 4
# gives every config a default of 20, so a hub CLIP is read for its first 18 tokens only, not 77.
# Serve a local copy whose config.json has "max_length": 77 (IMAGESCOPE_INFINITY_MODEL=that folder;
# launch/infinity-cpu/adapt_model.py does it for the CPU stack). `imagescope doctor` tells when an
# embedder ignores the end of a long text.
#
# This script is the one source of the server's flags. The CPU stack (launch/infinity-cpu/up.sh)
# runs it with these variables set; on GPUs leave them unset:
#   IMAGESCOPE_INFINITY_BIN          the infinity_emb executable (default: `infinity_emb` on PATH)
#   IMAGESCOPE_INFINITY_MODEL        a local model folder to serve instead of the hub id
#   IMAGESCOPE_INFINITY_SERVED_NAME  the name clients use for it (--served-model-name)
#   IMAGESCOPE_INFINITY_PORT         the port (default 8005; the CPU stack uses 8006, beside vLLM's)
#   IMAGESCOPE_INFINITY_DEVICE       --device (default: infinity's own choice, CUDA when present)
#   IMAGESCOPE_INFINITY_HOST         --host (default: infinity's, 0.0.0.0)
#   IMAGESCOPE_INFINITY_NAME         the log and pid name under runs/servers (default infinity-embedder)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
model=laion/CLIP-ViT-L-14-laion2B-s32B-b82K
gpus=${EMBEDDER_GPUS:-3}
cmd=("${IMAGESCOPE_INFINITY_BIN:-infinity_emb}" v2 --model-id "${IMAGESCOPE_INFINITY_MODEL:-$model}"
  --port "${IMAGESCOPE_INFINITY_PORT:-8005}" --engine torch --batch-size 32)
if [ -n "${IMAGESCOPE_INFINITY_MODEL:-}" ]; then
  cmd+=(--served-model-name "${IMAGESCOPE_INFINITY_SERVED_NAME:-$model}")
fi
[ -n "${IMAGESCOPE_INFINITY_DEVICE:-}" ] && cmd+=(--device "$IMAGESCOPE_INFINITY_DEVICE")
[ -n "${IMAGESCOPE_INFINITY_HOST:-}" ] && cmd+=(--host "$IMAGESCOPE_INFINITY_HOST")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf 'CUDA_VISIBLE_DEVICES=%s' "$gpus"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
name=${IMAGESCOPE_INFINITY_NAME:-infinity-embedder}
if [ -z "${IMAGESCOPE_INFINITY_MODEL:-}" ] && [ "${IMAGESCOPE_INFINITY_ALLOW_HUB:-0}" != 1 ]; then
  cat >&2 <<HELP
infinity 0.0.78 would read $model's text for 20 tokens, not 77 (see the top of this script).
Serve a local copy instead:
  huggingface-cli download $model --local-dir DIR
  python3 -c 'import json,sys; p=sys.argv[1]+"/config.json"; c=json.load(open(p)); c["max_length"]=77; json.dump(c,open(p,"w"),indent=2)' DIR
  IMAGESCOPE_INFINITY_MODEL=DIR IMAGESCOPE_INFINITY_SERVED_NAME=$model $0
(IMAGESCOPE_INFINITY_ALLOW_HUB=1 starts the hub id as it is; imagescope doctor will then fail it.)
HELP
  exit 2
fi
mkdir -p "$root/runs/servers"
# infinity reports anonymous usage to PostHog unless told not to.
DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0 CUDA_VISIBLE_DEVICES="$gpus" \
  nohup "${cmd[@]}" >"$root/runs/servers/$name.log" 2>&1 &
echo $! >"$root/runs/servers/$name.pid"
echo "$name: pid $(cat "$root/runs/servers/$name.pid"), log runs/servers/$name.log"
