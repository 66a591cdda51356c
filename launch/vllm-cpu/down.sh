#!/usr/bin/env bash
# Stops the vLLM CPU servers (and anything else launch/ started; pids in runs/servers/).
exec "$(dirname "$0")/../down.sh" "$@"
