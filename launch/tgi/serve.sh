#!/usr/bin/env bash
# Runs one role on TGI's official container (needs Docker with the NVIDIA runtime and a
# HF_TOKEN for gated models). DRY_RUN=1 prints the command.
set -euo pipefail
role=${1:?usage: launch/tgi/serve.sh captioner|reasoner|verifier}
case "$role" in
  captioner) model=llava-hf/llava-v1.6-vicuna-7b-hf port=8001 gpu=${CAPTIONER_GPUS:-0} batch=64 ;;
  reasoner) model=meta-llama/Meta-Llama-3-8B-Instruct port=8002 gpu=${REASONER_GPUS:-1} batch=64 ;;
  verifier) model=google/paligemma-3b-mix-224 port=8003 gpu=${VERIFIER_GPUS:-2} batch=128 ;;
  *) echo "TGI cannot serve the $role role; use launch/vllm/ or launch/infinity/" >&2; exit 2 ;;
esac
cmd=(docker run --rm --gpus "device=$gpu" --shm-size 1g -p "$port:80" -e HF_TOKEN
     -v "${HF_HOME:-$HOME/.cache/huggingface}:/data"
     ghcr.io/huggingface/text-generation-inference:3.3.7
     --model-id "$model" --max-input-tokens 3072 --max-total-tokens 4096 --max-concurrent-requests "$batch")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
