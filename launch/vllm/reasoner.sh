#!/usr/bin/env bash
# Reasoner: Llama-3-8B-Instruct, prefix caching on (the few-shot prefix is shared by every query).
# Port 8002, max_in_flight 64 in configs/servers/vllm.toml.
exec "$(dirname "$0")/_serve.sh" reasoner "${REASONER_GPUS:-1}" meta-llama/Meta-Llama-3-8B-Instruct \
  --runner generate \
  --port 8002 --max-model-len 4096 --enable-prefix-caching --max-num-seqs 64 --gpu-memory-utilization 0.90
