#!/usr/bin/env bash
# Installs vLLM's router (vllm-router 0.1.17 from PyPI: a Rust binary in a wheel, no torch) into its
# own small virtualenv from a frozen, hash-checked list of 29 packages. Idempotent: a second run
# checks and returns in a second. Everything goes under $IMAGESCOPE_ROUTER_HOME (default: .router/ in
# the repository, git-ignored; about 160 MB). On a cluster's router host, pip install
# vllm-router==0.1.17 does the same.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/steps.sh
. "$root/launch/lib/steps.sh"
home="${IMAGESCOPE_ROUTER_HOME:-$root/.router}"
venv="$home/venv"
python=${PYTHON:-python3}
lock="$here/requirements.lock"
want=$(sha256sum "$lock" | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
  step "router: create the virtualenv $venv" "a few seconds"
  mkdir -p "$home"
  "$python" -m venv "$venv"
fi
if [ "$(cat "$venv/.imagescope-lock" 2>/dev/null)" != "$want" ]; then
  step "router: install uv 0.13.9 (the installer)" "a few seconds"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.9
  step "router: install $(grep -c '^[a-z].*==' "$lock") frozen packages (vllm-router 0.1.17, fastapi, uvicorn, ...)" "5-20 s"
  VIRTUAL_ENV="$venv" heartbeat "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps --require-hashes -r "$lock"
  echo "$want" >"$venv/.imagescope-lock"
else
  echo "    router: packages already installed in $venv"
fi
"$venv/bin/vllm-router" --help >/dev/null
steps_total "router setup"
echo "    disk: $(du -sh "$home" 2>/dev/null | cut -f1) in $home"
