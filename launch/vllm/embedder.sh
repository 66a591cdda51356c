#!/usr/bin/env bash
# Embedder: CLIP ViT-L/14 (LAION-2B) as a pooling model; /v1/embeddings takes a `messages` content
# part (text or image_url). Shares GPU 3 with the evaluator (0.15 of its memory). Port 8005,
# max_in_flight 128.
exec "$(dirname "$0")/_serve.sh" embedder "${EMBEDDER_GPUS:-3}" laion/CLIP-ViT-L-14-laion2B-s32B-b82K \
  --port 8005 --runner pooling --max-num-seqs 128 --gpu-memory-utilization 0.15
