#!/usr/bin/env bash
# Installs infinity-emb 0.0.78 on this CPU machine into its own virtualenv (it pins numpy<2 and
# transformers<=5.0, which vLLM 0.32's cannot share) from a frozen list, and prepares the tiny
# random-weight CLIP folder that launch/vllm-cpu/setup.sh builds, so both servers embed with one
# checkpoint. Run launch/vllm-cpu/setup.sh first. Idempotent: a second run checks and returns in
# seconds. Everything goes under $IMAGESCOPE_INFINITY_CPU_HOME (default: .infinity-cpu/ in the
# repository, git-ignored):
#   venv/               the virtualenv (about 5 GB: torch pulls CUDA libraries it never uses)
#   models/embedder/    the tiny CLIP in the layout infinity's transformers reads (a few MB)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_INFINITY_CPU_HOME:-$root/.infinity-cpu}"
vllm_home="${IMAGESCOPE_VLLM_CPU_HOME:-$root/.vllm-cpu}"
venv="$home/venv"
python=${PYTHON:-python3}
lock="$here/requirements.lock"
want=$(sha256sum "$lock" "$here/adapt_model.py" | sha256sum | cut -c1-16)
source_model="$vllm_home/models/embedder"
[ -f "$source_model/model.safetensors" ] || {
  echo "no tiny CLIP folder at $source_model: run launch/vllm-cpu/setup.sh first (it builds the model folders)" >&2
  exit 2
}

if [ ! -x "$venv/bin/python" ]; then
  step "infinity-cpu: create the virtualenv $venv" "a few seconds"
  mkdir -p "$home"
  "$python" -m venv "$venv"
fi
if [ "$(cat "$venv/.imagescope-lock" 2>/dev/null)" != "$want" ]; then
  step "infinity-cpu: install uv 0.13.9 (the installer)" "a few seconds"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.9
  step "infinity-cpu: install $(grep -c '^[^#].*==' "$lock") frozen packages (infinity-emb 0.0.78, torch 2.13.0, transformers 4.47.1, ...)" \
    "about 10-30 s from uv's cache after the vLLM CPU install; 1-3 minutes without it"
  VIRTUAL_ENV="$venv" heartbeat "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps -r "$lock"
  rm -rf "$home/models"
  echo "$want" >"$venv/.imagescope-lock"
else
  echo "    infinity-cpu: packages already installed in $venv"
fi
if [ ! -f "$home/models/embedder/model.safetensors" ] || [ "$source_model/model.safetensors" -nt "$home/models/embedder/model.safetensors" ]; then
  step "infinity-cpu: adapt the tiny CLIP folder for infinity (launch/infinity-cpu/adapt_model.py)" "a few seconds"
  TOKENIZERS_PARALLELISM=false "$venv/bin/python" "$here/adapt_model.py" "$source_model" "$home/models/embedder"
fi
steps_total "infinity-cpu setup"
echo "    disk: $(du -sh "$home" 2>/dev/null | cut -f1) in $home (plus uv's cache in ~/.cache/uv)"
