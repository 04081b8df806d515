#!/usr/bin/env bash
# Courier beside BullMQ in one sitting: a pre-filled queue of N no-op tasks
# drained by one worker process. Courier: a release `worker` (concurrency
# 32) started after `bench --drain` has queued the tasks; BullMQ: one
# Worker at concurrency 32 on the same Redis (bench/bullmq). Rounds
# alternate Courier and BullMQ, so both see the same machine; each side
# warms up first; every result is read back and checked (a run with a
# failed, wrong or missing result stops the script); both drains are timed
# by their own records, from the first task's start to the last one's end.
#   N=20000 RUNS=5 ./scripts/peers.sh
# Needs the development profile's NATS, Redis and PostgreSQL, and Node
# (npm installs bench/bullmq's pinned packages on the first run).
set -euo pipefail
# A failure inside $(...) stops the script too.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
N=${N:-20000}
RUNS=${RUNS:-3}
PORT=${PORT:-9478}
OUT=${OUT:-/tmp/courier-peers}
mkdir -p "$OUT"
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"
if [ ! -d bench/bullmq/node_modules ]; then
  (cd bench/bullmq && npm ci --no-audit --no-fund >/dev/null)
fi

# Names of its own, so a running development worker is not disturbed.
export COURIER_ENV=${COURIER_ENV:-development}
export COURIER_NATS__STREAM=COURIER_PEERS
export COURIER_NATS__SUBJECT=courier_peers.tasks
export COURIER_NATS__DURABLE=courier-peers
export COURIER_NATS__DEAD_LETTER_SUBJECT=courier_peers.dead
export COURIER_NATS__DONE_SUBJECT=courier_peers.done
export COURIER_REDIS__KEY_PREFIX=courier_peers:
export COURIER_REDIS__RESULT_TTL=10m
# 43: a worker keeps a quarter of its slots for interactive tasks (10), and
# the idle bulk and paid lanes' pulls hold one each, so the transactional
# lane, where `noop` runs, gets 31 of the other 33: as BullMQ's 32.
export COURIER_WORKER__CONCURRENCY=${CONCURRENCY:-43}
export COURIER_WORKER__HTTP_ADDR=127.0.0.1:$PORT
export COURIER_INDEX__ENABLED=false
export RUST_LOG=${RUST_LOG:-warn}

# Stops only the worker this script started (courier() runs in a subshell,
# so it stops its own worker on failure too).
trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi' EXIT

# One Courier drain of $1 tasks; prints its rate (tasks/s by the records).
courier() {
  trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi' EXIT
  local n=$1 log="$OUT/bench.log" json="$OUT/drain.json"
  "$bin/bench" --drain --n "$n" >"$json" 2>"$log" &
  local bench=$!
  until grep -q "queued" "$log"; do
    kill -0 "$bench" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  "$bin/worker" >"$OUT/worker.log" 2>&1 &
  pid=$!
  wait "$bench" || { cat "$log" "$json" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
  python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["per_second"]))' "$json"
}

# One BullMQ drain of $N jobs (after its own warm-up); prints its rate by
# the jobs' processedOn/finishedOn, then by the wall clock.
bullmq() {
  local json="$OUT/bullmq.json"
  node bench/bullmq/bench.mjs --n "$N" --runs 1 --round-trips 300 --json >"$json" || { echo "peers.sh: the BullMQ run failed" >&2; exit 1; }
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["drain_span_per_second"][0], r["drain_per_second"][0], r["round_trip_ms"]["p50"], r["round_trip_ms"]["p99"])' "$json"
}

courier 1000 >/dev/null # warm-up: the stream, the consumer, the caches
ours=() theirs=()
for run in $(seq 1 "$RUNS"); do
  c=$(courier "$N")
  line=$(bullmq)
  read -r b wall p50 p99 <<<"$line"
  [ -n "$c" ] && [ -n "$b" ] || { echo "peers.sh: a run gave no figure" >&2; exit 1; }
  ours+=("$c") theirs+=("$b")
  echo "round $run: Courier $c/s, BullMQ $b/s (wall clock $wall/s; its round trip p50 $p50 ms, p99 $p99 ms)"
done
python3 - "${ours[*]}" "${theirs[*]}" <<'EOF'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
mo, mt = statistics.median(ours), statistics.median(theirs)
print(f"median: Courier {mo:.0f}/s, BullMQ {mt:.0f}/s; Courier / BullMQ = {mo / mt:.2f}"
      f" (per round: {', '.join(f'{o / t:.2f}' for o, t in zip(ours, theirs))})")
EOF
