#!/usr/bin/env bash
# Stops the servers started by launch/cpu/up.sh (pids in runs/servers/).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
for name in cpu-llm cpu-embed; do
  pidfile="$root/runs/servers/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done
