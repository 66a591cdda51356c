#!/usr/bin/env bash
# Model work with two verifier replicas, by routing (BENCHMARKS.md, "Model work").
# Needs the vLLM CPU stack with a second verifier and the demo's database; the router modes need
# launch/router/setup.sh:
#   launch/vllm-cpu/up.sh reasoner embedder verifier verifier:8013
#   imagescope index --config configs/vllm-cpu-demo.toml
#   benches/model_work.sh [imagescope binary] [mode...]
# Modes (default: affinity least-loaded):
#   affinity            imagescope picks the replica per image (configs/servers/vllm-cpu-two-verifiers.toml)
#   least-loaded        the same file with affinity = false
#   router:POLICY       vllm-router on 8023 with --policy POLICY (consistent_hash, cache_aware,
#                       round_robin, ...) in front of both (configs/servers/vllm-cpu-router.toml)
# Each run: the demo's 13 queries, stages 1-2, request cache off, the verifiers (and the router)
# restarted first so every cache starts empty. Prints, per run, the verifiers' prompt tokens,
# prefix-cache hits and the tokens they computed (prompt - hits) per query, then how many queries'
# rankings differ from the first run's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/imagescope}
shift || true
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(affinity least-loaded)
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; ./launch/router/down.sh >/dev/null' EXIT
folders=()
for mode in "${modes[@]}"; do
  ./launch/router/down.sh >/dev/null
  ./launch/down.sh verifier verifier-8013 >/dev/null
  ./launch/vllm-cpu/up.sh verifier verifier:8013 >/dev/null
  case "$mode" in
    affinity) cp configs/servers/vllm-cpu-two-verifiers.toml "$tmp/servers.toml" ;;
    least-loaded) sed "s/^affinity = true/affinity = false/" configs/servers/vllm-cpu-two-verifiers.toml >"$tmp/servers.toml" ;;
    router:*)
      IMAGESCOPE_ROUTER_POLICY=${mode#router:} ./launch/router/up.sh >/dev/null
      cp configs/servers/vllm-cpu-router.toml "$tmp/servers.toml" ;;
    *) echo "unknown mode $mode (affinity, least-loaded, router:POLICY)" >&2; exit 2 ;;
  esac
  sed -e "s#^servers = .*#servers = \"$tmp/servers.toml\"#" -e "s#\"\.\./#\"$root/#g" configs/vllm-cpu-demo.toml >"$tmp/exp.toml"
  name="model-work-${mode/:/-}"
  "$bin" run --config "$tmp/exp.toml" --stages s1,s2 --cache off --json --run-name "$name" >"$tmp/$name.json"
  python3 - "$tmp/$name.json" "$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["servers"]["verifier"]
q = r["queries"]
if not v.get("prompt_tokens"):
    sys.exit(f"the verifiers reported no prompt tokens: {v}")
computed = v["prompt_tokens"] - (v["prefix_cache_hits"] or 0)
mm_miss = (v["mm_cache_queries"] or 0) - (v["mm_cache_hits"] or 0)
print(f"{sys.argv[2]:26} servers read {v['endpoints_read']}/{v['servers']}, verifier requests {r['roles']['verifier']['attempts']}, "
      f"prompt tokens {v['prompt_tokens']}, prefix hits {v['prefix_cache_hits']} ({(v['prefix_cache_hit_rate'] or 0)*100:.1f}%), "
      f"computed {computed} ({computed / q:.0f} per query), images encoded {mm_miss}, "
      f"own cached {r['roles']['verifier'].get('cached_prompt_tokens')}")
PY
  folders+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["folder"])' "$tmp/$name.json")")
done
for i in $(seq 1 $((${#folders[@]} - 1))); do
  "$bin" compare "${folders[0]}" "${folders[$i]}" --json | python3 -c '
import json, sys
moved = json.load(sys.stdin)["moves"]["moved"]
print("rankings, %s against %s: %d queries moved" % (sys.argv[1], sys.argv[2], len(moved)))' "${modes[0]}" "${modes[$i]}"
done
