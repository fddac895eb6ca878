#!/usr/bin/env bash
# The end-to-end text benchmark behind docs/benchmarks.md ("Text search"): a shoal-sidecar
# serving all-MiniLM-L6-v2 and one node; a collection of dimension 384 (cosine, Flat: exact,
# so recall is 1 by construction) whose vectorizer is the sidecar; DOCS real sentences (the
# first sentences of the Python standard library's docstrings, scripts/text_corpus.py)
# upserted as text, then `shoalctl bench-text`: text searches at concurrency 1 and 4 with 1,000
# other sentences as queries. Every upsert and search embeds its texts through the sidecar.
# Results in $OUT (default bench-results/text-<UTC time>/).
#
# Environment: SHOAL_BIN_DIR, SHOAL_MODEL_REPO (models), DOCS (5000), SECONDS_PER_RUN (10).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly MODEL_REPO=${SHOAL_MODEL_REPO:-models}
readonly DOCS=${DOCS:-5000}
readonly SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
OUT=$(results_dir text)

work=$(mktemp -d -t shoal-text-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

python3 scripts/text_corpus.py "$work/docs.jsonl" "$work/queries.jsonl" "$DOCS" 1000

read -r side_grpc side_http < <(free_ports)
"$BIN_DIR/shoal-sidecar" --model-repository "$MODEL_REPO" --grpc "127.0.0.1:$side_grpc" \
  --http "127.0.0.1:$side_http" >>"$OUT/sidecar.log" 2>&1 &
pids+=($!)
read -r grpc_port http_port < <(free_ports)
readonly GRPC=127.0.0.1:$grpc_port HTTP=127.0.0.1:$http_port
"$BIN_DIR/shoal" node --data-dir "$work/data" --listen "$GRPC" --http "$HTTP" >>"$OUT/node.log" 2>&1 &
pids+=($!)
wait_ready "$HTTP" "${pids[1]}" 120 || { tail -20 "$OUT/node.log" >&2; exit 1; }
deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$side_http/v2/health/ready" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { tail -20 "$OUT/sidecar.log" >&2; exit 1; }
  sleep 0.1
done

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
ctl() { "$BIN_DIR/shoalctl" --addr "$GRPC" "$@"; }
ctl collection create docs --dim 384 --metric cosine --shards 2 \
  --vectorizer-endpoint "127.0.0.1:$side_grpc" --vectorizer-model all-MiniLM-L6-v2 >/dev/null
ctl --output json bench-text --collection docs --texts "$work/docs.jsonl" \
  --queries "$work/queries.jsonl" --concurrency 1,4 --duration-secs "$SECONDS_PER_RUN" \
  | tee "$OUT/text.json"
ctl search docs --text "Return the number of items in the queue." --k 3 | tee "$OUT/example.txt"
