# Sourced by the launch scripts: say what a step is doing before it starts, how long it usually
# takes, and keep saying it is alive while a long silent command runs.
#   step "installing X" "about 1 minute"   prints "==> [12:00:01] installing X (usually about 1 minute)"
#   heartbeat CMD...                        runs CMD, printing "... still running (2m30s)" every 30 s
#   steps_total                             prints the time since the first step of this script

steps_t0=${steps_t0:-$(date +%s)}
step_t=$steps_t0

human() { local s=$1; if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi; }

step() {
  step_t=$(date +%s)
  if [ -n "${2:-}" ]; then
    printf '==> [%s] %s (usually %s)\n' "$(date +%H:%M:%S)" "$1" "$2"
  else
    printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$1"
  fi
}

heartbeat() {
  local every=${HEARTBEAT_SECS:-30}
  "$@" &
  local pid=$! start rc
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 1 "$every"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -0 "$pid" 2>/dev/null && printf '    ... still running (%s)\n' "$(human $(($(date +%s) - start)))"
  done
  wait "$pid" && rc=0 || rc=$?
  return "$rc"
}

steps_total() {
  printf '==> [%s] %s: done in %s\n' "$(date +%H:%M:%S)" "${1:-total}" "$(human $(($(date +%s) - steps_t0)))"
}
