#!/usr/bin/env bash
# The demo, in one command on a CPU-only machine: installs the CPU stack (launch/cpu), collects 29
# real photographs from packages (launch/demo/collect.sh), indexes them with hand-written captions,
# answers 13 text and composed queries through stages 1-3 with real small models, and prints the
# metrics and the run folder. First run: ~15 minutes (building llama.cpp and imagescope); later
# runs: a few minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

./launch/cpu/setup.sh
./launch/demo/collect.sh
cargo build --release --locked --quiet
started_here=0
if ! curl -fsS http://127.0.0.1:8101/v1/models >/dev/null 2>&1; then
  ./launch/cpu/up.sh
  started_here=1
fi
[ "$started_here" = 1 ] && trap './launch/cpu/down.sh' EXIT

bin=target/release/imagescope
"$bin" doctor --config configs/servers/cpu.toml
"$bin" index --config configs/demo.toml
"$bin" run --config configs/demo.toml --run-name demo "$@"
