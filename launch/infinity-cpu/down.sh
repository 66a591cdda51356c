#!/usr/bin/env bash
# Stops the infinity CPU server(s) started by launch/infinity-cpu/up.sh.
root=$(cd "$(dirname "$0")/../.." && pwd)
names=()
for p in "$root"/runs/servers/infinity-embedder*.pid; do [ -f "$p" ] && names+=("$(basename "$p" .pid)"); done
[ ${#names[@]} -eq 0 ] && exit 0
exec "$root/launch/down.sh" "${names[@]}"
