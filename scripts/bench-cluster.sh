#!/usr/bin/env bash
# The replication benchmark behind docs/benchmarks.md ("Replication"), on one machine, three
# `shoal node` processes on loopback:
#   1. Upsert throughput and per-request latency into a collection with R = 1 and one with
#      R = 3, side by side, alternating (R1, R3, R1, R3) so drift hits both alike.
#   2. Failover: kill -9 the R = 3 collection's leader; time until another replica leads and
#      until a write is acknowledged again.
#   3. Catch-up by snapshot: remove the killed node, restart the two others with snapshots
#      every SNAPSHOT_EVERY entries (so after a few writes their logs are compacted and a new
#      replica cannot catch up from the log alone), start a fourth node that joins; time until
#      its replica votes, is not behind, and holds every point.
# Results go to $OUT (default bench-results/cluster-<UTC time>/) as JSON, plus summary.md.
#
# Environment: SHOAL_BIN_DIR, SHOAL_GLOVE, LIMIT (rows, default 400000), BATCH (points per
# upsert, 1000), WRITE_CONCURRENCY (requests in flight, 4), SNAPSHOT_EVERY (entries, 10).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly LIMIT=${LIMIT:-400000}
readonly BATCH=${BATCH:-1000}
readonly WRITE_CONCURRENCY=${WRITE_CONCURRENCY:-4}
readonly SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-10}
OUT=$(results_dir cluster)

require_bins shoal shoalctl
[[ -f "$GLOVE" ]] || { echo "bench: $GLOVE missing; run make data" >&2; exit 1; }

work=$(mktemp -d -t shoal-cluster-bench.XXXXXX)
declare -A pid grpc http
cleanup() {
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ctl() { "$BIN_DIR/shoalctl" --addr "$1" --output json "${@:2}"; }

# group_field ADDR COLLECTION EXPR: evaluates EXPR on the collection's group status `g`.
group_field() {
  ctl "$1" cluster status | python3 -c "
import json, sys
g = next(g for g in json.load(sys.stdin)['groups'] if g['collection'] == '$2')
print($3)"
}

now() { date +%s.%N; }

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
start_node 1
start_node 2 "${grpc[1]}"
start_node 3 "${grpc[1]}"

echo "bench: [1/3] upserts, R = 1 and R = 3 side by side"
for round in 1 2; do
  for r in 1 3; do
    ctl "${grpc[1]}" bench --collection "r${r}_$round" --data "$GLOVE" --limit "$LIMIT" \
      --create --metric cosine --index Flat --replicas "$r" --batch-size "$BATCH" \
      --write-concurrency "$WRITE_CONCURRENCY" --num-queries 20 --k 10 \
      >"$OUT/upsert-r$r-$round.json"
    python3 -c "
import json; i = json.load(open('$OUT/upsert-r$r-$round.json'))['ingest']
print(f\"bench:   R={$r} round $round: {i['points_per_sec']:.0f} points/s, p50 {i['latency_ms']['p50']:.1f} ms, p99 {i['latency_ms']['p99']:.1f} ms\")"
  done
done

echo "bench: [2/3] failover: kill -9 the leader of r3_2"
leader=$(group_field "${grpc[1]}" r3_2 "g['leader']")
survivor=1
[[ $leader == 1 ]] && survivor=2
killed_at=$(now)
kill -KILL "${pid[$leader]}"
unset "pid[$leader]"
until [[ $(group_field "${grpc[$survivor]}" r3_2 "g['leader'] not in (None, $leader)") == True ]]; do
  sleep 0.05
done
elected_at=$(now)
python3 -c "import json; print(json.dumps({'id': 999999999, 'vector': [1.0] + [0.0] * 49}))" \
  >"$work/one.jsonl"
until ctl "${grpc[$survivor]}" points upsert r3_2 --file "$work/one.jsonl" >/dev/null 2>&1; do
  sleep 0.05
done
writable_at=$(now)

echo "bench: [3/3] node $leader removed; node 4 joins and catches up by snapshot"
ctl "${grpc[$survivor]}" node remove "$leader" >"$OUT/remove.json"
# Compact the survivors' logs: restart them with a short snapshot policy, then write.
for id in "${!pid[@]}"; do
  kill -TERM "${pid[$id]}"
  while kill -0 "${pid[$id]}" 2>/dev/null; do sleep 0.05; done
  SNAPSHOTS=$SNAPSHOT_EVERY start_node "$id"
done
for i in $(seq 1 $((2 * SNAPSHOT_EVERY))); do
  until ctl "${grpc[$survivor]}" points upsert r3_2 --file "$work/one.jsonl" >/dev/null 2>&1; do
    sleep 0.05
  done
done
joined_at=$(now)
start_node 4 "${grpc[$survivor]}"
until [[ $(group_field "${grpc[4]}" r3_2 \
  "any(r['node_id'] == 4 and r['state'] == 'follower' and r['lag'] == 0 and r['applied_index'] > 0 for r in g['replicas'])") == True ]]; do
  sleep 0.2
done
caught_up_at=$(now)
expected=$((LIMIT + 1))
count=$(ctl "${grpc[4]}" points count r3_2 --consistency eventual \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['count'])")
[[ $count == "$expected" ]] || { echo "bench: node 4 holds $count points, not $expected" >&2; exit 1; }
ctl "${grpc[4]}" cluster status >"$OUT/status-after.json"
snapshots=$(grep -c "snapshot installed" "$OUT/node4.log" || true)

python3 - "$OUT" <<EOF | tee "$OUT/summary.md"
import json, sys
out = sys.argv[1]
def ingest(r, n): return json.load(open(f"{out}/upsert-r{r}-{n}.json"))["ingest"]
rows = []
for n in (1, 2):
    a, b = ingest(1, n), ingest(3, n)
    rows.append((n, a, b))
failover = {
    "killed_node": $leader,
    "election_seconds": $elected_at - $killed_at,
    "first_write_seconds": $writable_at - $killed_at,
    "catch_up_seconds": $caught_up_at - $joined_at,
    "catch_up_points": $expected,
    "snapshots_installed_on_new_node": $snapshots,
}
json.dump(failover, open(f"{out}/failover.json", "w"), indent=2)
lines = ["| round | R=1 points/s | R=3 points/s | R=3/R=1 | R=1 p50 / p99 ms | R=3 p50 / p99 ms |",
         "|---|---|---|---|---|---|"]
for n, a, b in rows:
    lines.append(f"| {n} | {a['points_per_sec']:.0f} | {b['points_per_sec']:.0f} | "
                 f"{b['points_per_sec'] / a['points_per_sec']:.2f} | "
                 f"{a['latency_ms']['p50']:.1f} / {a['latency_ms']['p99']:.1f} | "
                 f"{b['latency_ms']['p50']:.1f} / {b['latency_ms']['p99']:.1f} |")
lines += ["", f"- kill -9 of the leader (node {failover['killed_node']}) to a new leader: "
          f"{failover['election_seconds']:.2f} s; to the first acknowledged write: "
          f"{failover['first_write_seconds']:.2f} s",
          f"- new node joins to its replica holding all {failover['catch_up_points']} points: "
          f"{failover['catch_up_seconds']:.1f} s ({failover['snapshots_installed_on_new_node']} "
          "snapshot install(s) logged on the new node)"]
print("\n".join(lines))
EOF
