#!/usr/bin/env bash
# Captioner: LLaVA-1.6-vicuna-7B. The raw-prompt chat template reproduces the original's
# "USER:<image>\n{prompt}\nASSISTANT:" without vicuna's system preamble. Port and max-num-seqs
# must match configs/servers/vllm.toml (port 8001, max_in_flight 64); tests/launch.rs checks.
exec "$(dirname "$0")/_serve.sh" captioner "${CAPTIONER_GPUS:-0}" llava-hf/llava-v1.6-vicuna-7b-hf \
  --runner generate \
  --port 8001 --max-model-len 4096 --limit-mm-per-prompt '{"image":1}' --max-num-seqs 64 \
  --gpu-memory-utilization 0.90 --chat-template "$(dirname "$0")/llava_vicuna_raw.jinja"
