#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (tests/serve_browser.rs), unless a chromium is
# already on PATH: `apt-get install chromium` (as root, or through sudo). About 35 s and 300 MB the
# first time. The test finds /usr/bin/chromium, or the browser named by CHROMIUM=/path.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(chromium --version 2>/dev/null)"
  exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing chromium needs root or sudo: run 'apt-get install chromium' as root" >&2; exit 1; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# Package lists may be missing or stale on a fresh machine.
"${as_root[@]}" apt-get update -qq || echo "apt-get update failed; trying the lists already here" >&2
"${as_root[@]}" apt-get install -y -qq chromium >/dev/null
echo "installed: $(chromium --version 2>/dev/null)"
