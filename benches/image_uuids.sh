#!/usr/bin/env bash
# Request bytes sent to the verifier with and without `image_uuids` (BENCHMARKS.md, "Model work").
# Needs the vLLM CPU stack and the demo's database:
#   launch/vllm-cpu/up.sh
#   imagescope index --config configs/vllm-cpu-demo.toml
#   benches/image_uuids.sh [imagescope binary] [N]
# Each run: the demo's 13 queries, stages 1-2, request cache off, the verifier restarted first so
# its caches start empty; `bytes` sends every image's bytes every time (configs/servers/vllm-cpu.toml
# as it is), `uuids` adds `image_uuids = N` (default 4096) to the verifier. Prints, per run, the
# verifier's requests, bytes sent and images sent by uuid per query, and its image-cache hits; then
# whether the verifier answered every (candidate, question) pair the two runs share the same way,
# and how many queries' rankings moved (stage 1 on the CPU stack is not bit-for-bit repeatable
# between runs: the reasoner's greedy answers change with vLLM's batching, so the runs do not ask
# all the same questions).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/imagescope}
n=${2:-4096}
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
folders=()
# ORDER="uuids bytes" runs them the other way round (to see what the order costs).
for mode in ${ORDER:-bytes uuids}; do
  ./launch/down.sh verifier >/dev/null
  ./launch/vllm-cpu/up.sh verifier >/dev/null
  case "$mode" in
    bytes) cp configs/servers/vllm-cpu.toml "$tmp/servers.toml" ;;
    uuids) sed "/^\[roles.verifier\]$/a image_uuids = $n" configs/servers/vllm-cpu.toml >"$tmp/servers.toml" ;;
  esac
  sed -e "s#^servers = .*#servers = \"$tmp/servers.toml\"#" -e "s#\"\.\./#\"$root/#g" configs/vllm-cpu-demo.toml >"$tmp/exp.toml"
  name="image-uuids-$mode"
  start=$(date +%s)
  "$bin" run --config "$tmp/exp.toml" --stages s1,s2 --cache off --json --run-name "$name" >"$tmp/$name.json"
  python3 - "$tmp/$name.json" "$mode" "$(($(date +%s) - start))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r["roles"]["verifier"]
s = r["servers"]["verifier"]
q = r["queries"]
mm = (s.get("mm_cache_hits"), s.get("mm_cache_queries"))
print(f"{sys.argv[2]:6} {q} queries in {sys.argv[3]} s: verifier requests {v['attempts']}, errors {v.get('errors')}, "
      f"bytes sent {v['sent_bytes']:,} ({v['sent_bytes'] / q:,.0f} per query), images by uuid {v['images_by_uuid']}, "
      f"server image-cache hits {mm[0]} of {mm[1]}, prompt tokens {s.get('prompt_tokens')}")
PY
  folders+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["folder"])' "$tmp/$name.json")")
done
"$bin" compare "${folders[0]}" "${folders[1]}" --json | python3 -c '
import json, sys
moved = json.load(sys.stdin)["moves"]["moved"]
print("rankings, second run against first: %d queries moved" % len(moved))'
python3 - "${folders[0]}" "${folders[1]}" <<'PY'
import json, sys
def verdicts(folder):
    out = {}
    for line in open(folder + "/queries.jsonl"):
        for rd in json.loads(line)["rounds"]:
            s2 = rd.get("s2") or {}
            for c, vs in zip(s2.get("candidates", []), s2.get("verdicts", [])):
                for p, v in zip(s2.get("propositions", []), vs):
                    out[(c, p["question"])] = (v.get("raw"), round(v.get("p_yes") or 0.0, 4))
    return out
a, b = verdicts(sys.argv[1]), verdicts(sys.argv[2])
common = set(a) & set(b)
same = sum(1 for k in common if a[k] == b[k])
print(f"verifier answers to the (candidate, question) pairs both runs asked: {same} of {len(common)} identical")
if same != len(common):
    sys.exit("an answer by uuid differs from the answer to the bytes")
PY
