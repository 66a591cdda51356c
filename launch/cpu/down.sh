#!/usr/bin/env bash
# Stops the CPU stack (and anything else launch/ started): see launch/down.sh.
exec "$(dirname "$0")/../down.sh" "$@"
