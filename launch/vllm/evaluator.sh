#!/usr/bin/env bash
# Evaluator: InternVL2-8B (needs --trust-remote-code). Shares GPU 3 with the CLIP embedder, so it
# takes 0.75 of its memory. Port 8004, max_in_flight 32.
exec "$(dirname "$0")/_serve.sh" evaluator "${EVALUATOR_GPUS:-3}" OpenGVLab/InternVL2-8B \
  --runner generate \
  --port 8004 --trust-remote-code --max-model-len 8192 --limit-mm-per-prompt '{"image":1}' --max-num-seqs 32 \
  --gpu-memory-utilization 0.75
