#!/usr/bin/env bash
# The leadership hand-off benchmark behind docs/benchmarks.md ("Leadership hand-off on
# SIGTERM"): how long writes to a collection are unavailable when the node that leads it is
# stopped, in three modes:
#   handoff  SIGTERM, the node hands its leaderships to another replica before it stops
#            (node.handoff_timeout_ms, default 5000)
#   nohand   SIGTERM with SHOAL__NODE__HANDOFF_TIMEOUT_MS=0 on every node (no hand-off)
#   kill     SIGKILL
# Each run, REPS times per mode with the modes interleaved (handoff, nohand, kill, handoff, ...)
# so that drift on the machine hits all three alike:
#   1. starts a fresh 3-node cluster on free loopback ports (default Raft timing: heartbeat
#      100 ms, election timeout 500-1000 ms) and creates `bench` (4-d, l2, Flat, 1 shard, R = 3);
#   2. reads the shard's leader from `shoalctl shard list`, and starts a writer against the
#      lowest-id node that does not lead it: one `shoalctl points upsert` of one point per call,
#      back to back, each call's start, end and exit status recorded (bash $EPOCHREALTIME);
#   3. after STEADY_SECS (3 s: past the 1 s leader lease) sends the mode's signal to the
#      leader's node at T0, waits for the process to exit, lets the writer go on for
#      AFTER_SECS (4 s) more, stops it, and kills the cluster.
# Unavailability = from T0 to the end of the first successful write that started after T0;
# also reported: the longest gap between consecutive successful write completions (the gap
# that spans T0 or comes after it). Resolution: one shoalctl process per write (process start,
# connect, forward to the leader), whose steady-state duration the summary prints.
# For the hand-off mode the stopped node's `handed off leadership ... ms=` line for the
# collection's group gives the hand-off's own duration.
# Results go to $OUT (default bench-results/handoff-<UTC time>/): per run the writer's CSV,
# the nodes' logs, runs.csv and summary.md.
#
# A write that hangs is cut off by the writer after WRITE_TIMEOUT_SECS (exit status 124,
# counted as `timed out`), the deadline a client would set.
#
# Environment: SHOAL_BIN_DIR, REPS (5), MODES ("handoff nohand kill"), STEADY_SECS (3),
# AFTER_SECS (4), WRITE_TIMEOUT_SECS (10).
set -euo pipefail
export LC_ALL=C # a `.` in $EPOCHREALTIME

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly REPS=${REPS:-5}
readonly MODES=${MODES:-handoff nohand kill}
readonly STEADY_SECS=${STEADY_SECS:-3}
readonly AFTER_SECS=${AFTER_SECS:-4}
readonly WRITE_TIMEOUT_SECS=${WRITE_TIMEOUT_SECS:-10}
RESULTS=$(results_dir handoff)

require_bins shoal shoalctl

base=$(mktemp -d -t shoal-handoff-bench.XXXXXX)
declare -A pid grpc http
writer_pid=
# Kills the writer and every node still running, then removes the data directories.
teardown() {
  if [[ -n "$writer_pid" ]]; then
    kill -KILL "$writer_pid" 2>/dev/null || true
    wait "$writer_pid" 2>/dev/null || true
    writer_pid=
  fi
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pid[@]}"; do
    while kill -0 "$p" 2>/dev/null; do sleep 0.02; done
  done
  pid=() grpc=() http=()
}
cleanup() {
  teardown
  rm -rf "$base"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ctl() { "$BIN_DIR/shoalctl" --addr "$1" "${@:2}"; }

# writer ADDR CSV STOPFILE: upserts one point per shoalctl call, ids from 1, until STOPFILE
# exists; appends `id,start,end,rc` per call to CSV and the failures' messages to CSV.err.
writer() {
  local addr=$1 csv=$2 stop=$3 id=1 start end rc
  local row=${csv%.csv}.jsonl
  while [[ ! -e $stop ]]; do
    printf '{"id": %d, "vector": [%d.0, 1.0, 2.0, 3.0]}\n' "$id" "$((id % 97))" >"$row"
    rc=0
    start=$EPOCHREALTIME
    timeout "$WRITE_TIMEOUT_SECS" "$BIN_DIR/shoalctl" --addr "$addr" points upsert bench --file "$row" \
      >/dev/null 2>>"$csv.err" || rc=$?
    end=$EPOCHREALTIME
    echo "$id,$start,$end,$rc" >>"$csv"
    id=$((id + 1))
  done
}

# analyse CSV T0 EXITED LOGLINE: prints one JSON object for the run.
analyse() {
  python3 - "$@" <<'EOF'
import csv, json, re, statistics, sys
path, t0, exited, handoff_line = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [(int(i), float(s), float(e), int(rc)) for i, s, e, rc in csv.reader(open(path))]
ok_ends = sorted(e for _, _, e, rc in rows if rc == 0)
first = min((e for _, s, e, rc in rows if rc == 0 and s > t0), default=None)
gaps = [b - a for a, b in zip(ok_ends, ok_ends[1:]) if b > t0]
steady = [e - s for _, s, e, rc in rows if rc == 0 and e < t0]
m = re.search(r"\bms=(\d+)", handoff_line)
to = re.search(r"\bto=(\d+)", handoff_line)
asked = re.search(r"\basked=(?:Some\()?(\d+)", handoff_line)
print(json.dumps({
    "unavailable_ms": None if first is None else round((first - t0) * 1000, 1),
    "longest_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
    "exit_ms": round((exited - t0) * 1000, 1),
    "writes": len(rows),
    "failed": sum(1 for r in rows if r[3] != 0),
    "failed_after_t0": sum(1 for r in rows if r[3] != 0 and r[2] > t0),
    "timed_out": sum(1 for r in rows if r[3] == 124),
    "write_ms_p50": round(statistics.median(steady) * 1000, 1) if steady else None,
    "handoff_ms": int(m.group(1)) if m else None,
    "handoff_to": int(to.group(1)) if to else None,
    "handoff_asked": int(asked.group(1)) if asked else None,
    "t0": t0,
    "exited": exited,
}))
EOF
}

# one_run MODE REP: one cluster, one stopped leader; appends a row to runs.jsonl.
one_run() {
  local mode=$1 rep=$2 name="$1-$2"
  OUT=$RESULTS/$name
  work=$base/$name
  mkdir -p "$OUT" "$work"
  if [[ $mode == nohand ]]; then
    export SHOAL__NODE__HANDOFF_TIMEOUT_MS=0
  else
    unset SHOAL__NODE__HANDOFF_TIMEOUT_MS
  fi
  start_node 1
  start_node 2 "${grpc[1]}"
  start_node 3 "${grpc[1]}"
  ctl "${grpc[1]}" collection create bench --dim 4 --metric l2 --index Flat --shards 1 \
    --replicas 3 >/dev/null
  local shard group leader target
  until shard=$(ctl "${grpc[1]}" --output json shard list bench 2>/dev/null) &&
    read -r group leader < <(python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
print(s["group"], s["status"]["leader"] or "")' <<<"$shard") && [[ -n $leader ]]; do
    sleep 0.1
  done
  echo "$shard" >"$OUT/shard-before.json"
  for target in 1 2 3; do [[ $target != "$leader" ]] && break; done

  local csv=$OUT/writes.csv stop=$work/stop
  writer "${grpc[$target]}" "$csv" "$stop" &
  writer_pid=$!
  sleep "$STEADY_SECS"

  local now_leader
  now_leader=$(ctl "${grpc[$target]}" --output json shard list bench |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["status"]["leader"])')
  [[ $now_leader == "$leader" ]] || {
    echo "bench: $name: leader moved from $leader to $now_leader before the stop" >&2
    exit 1
  }

  local signal=TERM t0 exited deadline
  [[ $mode == kill ]] && signal=KILL
  t0=$EPOCHREALTIME
  kill -"$signal" "${pid[$leader]}"
  deadline=$((SECONDS + 30))
  while kill -0 "${pid[$leader]}" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "bench: $name: node $leader still runs 30 s after SIG$signal" >&2; exit 1; }
    sleep 0.01
  done
  exited=$EPOCHREALTIME
  unset "pid[$leader]"
  sleep "$AFTER_SECS"
  touch "$stop"
  wait "$writer_pid" || true
  writer_pid=
  ctl "${grpc[$target]}" --output json shard list bench >"$OUT/shard-after.json" 2>&1 || true
  teardown

  local line campaigned
  line=$(grep -a "handed off leadership" "$OUT/node$leader.log" | grep -a -E "group=$group( |$)" |
    tail -1 || true)
  campaigned=$(grep -a -l -E "campaigning: the group.s stopping leader asked.* group=$group( |$)" "$OUT"/node*.log 2>/dev/null |
    sed -E 's/.*node([0-9]+)\.log/\1/' | paste -sd, || true)
  local result
  result=$(analyse "$csv" "$t0" "$exited" "$line")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
r.update(mode=sys.argv[2], rep=int(sys.argv[3]), leader=int(sys.argv[4]),
         writer_node=int(sys.argv[5]), group=int(sys.argv[6]), campaigned=sys.argv[7] or None,
         gave_up=sys.argv[8] == "1")
print(json.dumps(r))' "$result" "$mode" "$rep" "$leader" "$target" "$group" "$campaigned" \
    "$(grep -a -q "could not hand off leadership" "$OUT/node$leader.log" && echo 1 || echo 0)" \
    >>"$RESULTS/runs.jsonl"
  python3 - "$(tail -1 "$RESULTS/runs.jsonl")" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
f = lambda v: "-" if v is None else v
print(f"bench: {r['mode']:7} rep {r['rep']}: leader node {r['leader']} (group {r['group']}), "
      f"writes via node {r['writer_node']}: unavailable {f(r['unavailable_ms'])} ms, "
      f"longest gap {f(r['longest_gap_ms'])} ms, node exited after {r['exit_ms']} ms, "
      f"{r['failed_after_t0']} failed writes ({r['timed_out']} timed out), "
      f"hand-off ms={f(r['handoff_ms'])} asked={f(r['handoff_asked'])} to={f(r['handoff_to'])}, "
      f"campaigned (logged `campaigning`): node {f(r['campaigned'])}"
      + (" (hand-off GAVE UP)" if r["gave_up"] else ""))
EOF
}

echo "bench: command: REPS=$REPS MODES=\"$MODES\" STEADY_SECS=$STEADY_SECS AFTER_SECS=$AFTER_SECS WRITE_TIMEOUT_SECS=$WRITE_TIMEOUT_SECS bash scripts/bench-handoff.sh" |
  tee "$RESULTS/command.txt"
echo "bench: machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')" |
  tee "$RESULTS/machine.txt"
echo "bench: results in $RESULTS"
: >"$RESULTS/runs.jsonl"
for rep in $(seq 1 "$REPS"); do
  for mode in $MODES; do
    one_run "$mode" "$rep"
  done
done

python3 - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.md"
import json, statistics, sys
out = sys.argv[1]
runs = [json.loads(l) for l in open(f"{out}/runs.jsonl")]
label = {"handoff": "SIGTERM, hand-off (default)", "nohand": "SIGTERM, no hand-off",
         "kill": "SIGKILL"}
def stat(rs, key):
    v = [r[key] for r in rs if r[key] is not None]
    return (statistics.median(v), max(v)) if v else (None, None)
def fmt(p):
    return "-" if p[0] is None else f"{p[0]:.0f} / {p[1]:.0f}"
lines = ["| mode | runs | unavailable ms, median / max | longest gap ms, median / max "
         "| node exit ms, median / max | hand-off ms (log), median / max |",
         "|---|---|---|---|---|---|"]
med = {}
for mode in dict.fromkeys(r["mode"] for r in runs):
    rs = [r for r in runs if r["mode"] == mode]
    med[mode] = stat(rs, "unavailable_ms")[0]
    lines.append(f"| {label.get(mode, mode)} | {len(rs)} | {fmt(stat(rs, 'unavailable_ms'))} | "
                 f"{fmt(stat(rs, 'longest_gap_ms'))} | {fmt(stat(rs, 'exit_ms'))} | "
                 f"{fmt(stat(rs, 'handoff_ms'))} |")
lines.append("")
w = stat(runs, "write_ms_p50")
lines.append(f"- Resolution: one shoalctl process per write, back to back; a successful write took "
             f"{w[0]:.1f} ms (median of the runs' medians) before the stop.")
for mode in dict.fromkeys(r["mode"] for r in runs):
    rs = [r for r in runs if r["mode"] == mode]
    lines.append(f"- {label.get(mode, mode)}: {sum(r['timed_out'] for r in rs)} write(s) timed out "
                 f"in {sum(1 for r in rs if r['timed_out'])} of {len(rs)} runs; failed writes after "
                 f"the stop per run: {[r['failed_after_t0'] for r in rs]}")
ho = [r for r in runs if r["mode"] == "handoff" and r["handoff_to"] is not None]
if ho:
    lines.append(f"- hand-off: the asked successor took over in "
                 f"{sum(1 for r in ho if r['handoff_to'] == r['handoff_asked'])} of {len(ho)} runs")
if med.get("handoff"):
    for other in ("nohand", "kill"):
        if med.get(other):
            lines.append(f"- median unavailability, {label[other]} / hand-off: "
                         f"{med[other] / med['handoff']:.1f}x")
missing = [f"{r['mode']}-{r['rep']}" for r in runs if r["mode"] == "handoff" and r["handoff_ms"] is None]
gave_up = [f"{r['mode']}-{r['rep']}" for r in runs if r["gave_up"]]
stray = [f"{r['mode']}-{r['rep']}" for r in runs if r["mode"] != "handoff" and r["handoff_ms"] is not None]
lines.append(f"- hand-off runs without a `handed off leadership` line for the group: {missing or 'none'}; "
             f"hand-offs given up: {gave_up or 'none'}; hand-off lines in other modes: {stray or 'none'}")
print("\n".join(lines))
EOF
