#!/usr/bin/env bash
# Stops the router(s) started by launch/router/up.sh (not the replicas behind them).
root=$(cd "$(dirname "$0")/../.." && pwd)
names=()
for p in "$root"/runs/servers/router-*.pid; do [ -f "$p" ] && names+=("$(basename "$p" .pid)"); done
[ ${#names[@]} -eq 0 ] && exit 0
exec "$root/launch/down.sh" "${names[@]}"
