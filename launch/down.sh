#!/usr/bin/env bash
# Stops every server started by launch/up.sh or launch/cpu/up.sh (pids in runs/servers/), or only
# the named ones: launch/down.sh reasoner
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for pidfile in "$root"/runs/servers/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile"); name=$(basename "$pidfile" .pid)
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done
