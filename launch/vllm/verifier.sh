#!/usr/bin/env bash
# Verifier: PaliGemma-3B-mix-224. It has no chat template; paligemma.jinja emits only the user's
# text (vLLM's processor adds the image tokens). Port 8003, max_in_flight 128.
exec "$(dirname "$0")/_serve.sh" verifier "${VERIFIER_GPUS:-2}" google/paligemma-3b-mix-224 \
  --runner generate \
  --port 8003 --max-model-len 1024 --limit-mm-per-prompt '{"image":1}' --max-num-seqs 128 \
  --gpu-memory-utilization 0.90 --chat-template "$(dirname "$0")/paligemma.jinja"
