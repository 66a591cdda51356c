#!/usr/bin/env bash
# CLIP ViT-L/14 (LAION-2B) on infinity instead of vLLM: `POST /embeddings` with `input` and
# `modality`. In the servers file: api = "infinity", embed_shape = "infinity",
# endpoints = ["http://HOST:8005"], model = "laion/CLIP-ViT-L-14-laion2B-s32B-b82K".
# infinity answers 429 when its queue is full; imagescope backs off and retries. DRY_RUN=1 prints.
set -euo pipefail
cmd=(infinity_emb v2 --model-id laion/CLIP-ViT-L-14-laion2B-s32B-b82K --port 8005 --batch-size 32)
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else CUDA_VISIBLE_DEVICES=${EMBEDDER_GPUS:-3} exec "${cmd[@]}"; fi
