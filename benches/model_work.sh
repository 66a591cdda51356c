#!/usr/bin/env bash
# Model work with two verifier replicas, affinity on and off (BENCHMARKS.md, "Model work").
# Needs the vLLM CPU stack with a second verifier and the demo's database:
#   launch/vllm-cpu/up.sh reasoner embedder verifier verifier:8013
#   imagescope index --config configs/vllm-cpu-demo.toml
#   benches/model_work.sh [imagescope binary]
# Each run: the demo's 13 queries, stages 1-2, request cache off, the verifiers restarted first so
# both start with empty caches. Prints, per run, the verifiers' prompt tokens, prefix-cache hits
# and the tokens they computed (prompt - hits) per query, then compares the two runs' rankings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/imagescope}
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
folders=()
for affinity in true false; do
  ./launch/down.sh verifier verifier-8013 >/dev/null
  ./launch/vllm-cpu/up.sh verifier verifier:8013 >/dev/null
  sed "s/^affinity = true/affinity = $affinity/" configs/servers/vllm-cpu-two-verifiers.toml >"$tmp/servers.toml"
  sed -e "s#^servers = .*#servers = \"$tmp/servers.toml\"#" -e "s#\"\.\./#\"$root/#g" configs/vllm-cpu-demo.toml >"$tmp/exp.toml"
  "$bin" run --config "$tmp/exp.toml" --stages s1,s2 --cache off --json --run-name "model-work-affinity-$affinity" >"$tmp/$affinity.json"
  python3 - "$tmp/$affinity.json" "$affinity" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["servers"]["verifier"]
q = r["queries"]
if not v.get("prompt_tokens"):
    sys.exit(f"the verifiers reported no prompt tokens: {v}")
computed = v["prompt_tokens"] - (v["prefix_cache_hits"] or 0)
print(f"affinity={sys.argv[2]:5}  verifier requests {r['roles']['verifier']['attempts']}, prompt tokens {v['prompt_tokens']}, "
      f"prefix hits {v['prefix_cache_hits']} ({(v['prefix_cache_hit_rate'] or 0)*100:.1f}%), computed {computed} "
      f"({computed / q:.0f} per query), mm hit {(v['mm_cache_hit_rate'] or 0)*100:.1f}%, "
      f"own cached {r['roles']['verifier'].get('cached_prompt_tokens')}")
PY
  folders+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["folder"])' "$tmp/$affinity.json")")
done
"$bin" compare "${folders[0]}" "${folders[1]}" --json | python3 -c '
import json, sys
c = json.load(sys.stdin)
moved = c["moves"]["moved"]
print(f"rankings: {len(moved)} queries moved between the two runs")'
