#!/usr/bin/env bash
# Courier beside BullMQ and apalis in one sitting: a pre-filled queue of N
# no-op tasks drained by one worker process. Courier: a release `worker`
# started after `bench --drain` has queued the tasks; BullMQ: one Worker at
# concurrency 32 on the same Redis (bench/bullmq); apalis 1.0 with
# apalis-redis, concurrency 32 (bench/apalis), at APALIS_N (default 7000:
# apalis-redis 1.0.0 cannot drain a pre-filled queue of more than about
# 8,000, see its main.rs), beside a Courier drain of the same N. Rounds
# alternate Courier and its peers, so all see the same machine; Courier
# and BullMQ
# warms up first; every result is read back and checked (a run with a
# failed, wrong or missing result stops the script); both drains are timed
# by their own records, from the first task's start to the last one's end.
#   N=20000 RUNS=5 ./scripts/peers.sh        (PEERS="bullmq" or "apalis" for one)
# Needs the development profile's NATS, Redis and PostgreSQL, and Node
# (npm installs bench/bullmq's pinned packages on the first run).
set -euo pipefail
# A failure inside $(...) stops the script too where its output is
# assigned; a `read` from one is followed by a check that it gave a figure.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
N=${N:-20000}
APALIS_N=${APALIS_N:-7000}
PEERS=${PEERS:-bullmq apalis}
case " $PEERS " in
  *" bullmq "* | *" apalis "*) ;;
  *) echo "peers.sh: PEERS names no peer (bullmq, apalis): $PEERS" >&2; exit 2 ;;
esac
RUNS=${RUNS:-3}
PORT=${PORT:-9478}
OUT=${OUT:-/tmp/courier-peers}
mkdir -p "$OUT"
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"
apalis_bin="$HOME/.cache/courier/apalis-target/release/courier-bench-apalis"
if [[ " $PEERS " == *" apalis "* ]]; then
  (cd bench/apalis && CARGO_TARGET_DIR="$HOME/.cache/courier/apalis-target" cargo build --release --quiet --locked)
fi
if [[ " $PEERS " == *" bullmq "* ]] && [ ! -d bench/bullmq/node_modules ]; then
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

# One apalis drain of $APALIS_N jobs; prints its rate (first job's start to
# the last one's end), then by the wall clock.
apalis() {
  local json="$OUT/apalis.json"
  N="$APALIS_N" CONCURRENCY=32 REDIS_URL="${COURIER_REDIS__URL:-redis://127.0.0.1:6379}" "$apalis_bin" \
    >"$json" 2>"$OUT/apalis.log" || { cat "$OUT/apalis.log" >&2; echo "peers.sh: the apalis run failed" >&2; exit 1; }
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["per_second"], r["wall_per_second"])' "$json"
}

# The medians and their ratio: $1 the peer's name, $2 Courier's figures,
# $3 the peer's.
ratio() {
  python3 - "$1" "$2" "$3" <<'EOF'
import statistics, sys
name = sys.argv[1]
ours = [float(x) for x in sys.argv[2].split()]
theirs = [float(x) for x in sys.argv[3].split()]
mo, mt = statistics.median(ours), statistics.median(theirs)
print(f"median: Courier {mo:.0f}/s, {name} {mt:.0f}/s; Courier / {name} = {mo / mt:.2f}"
      f" (per round: {', '.join(f'{o / t:.2f}' for o, t in zip(ours, theirs))})")
EOF
}

courier 1000 >/dev/null # warm-up: the stream, the consumer, the caches
ours=() theirs=() ours_small=() apalis_figures=()
for run in $(seq 1 "$RUNS"); do
  if [[ " $PEERS " == *" bullmq "* ]]; then
    c=$(courier "$N")
    line=$(bullmq)
    read -r b wall p50 p99 <<<"$line"
    [ -n "$c" ] && [ -n "$b" ] || { echo "peers.sh: a run gave no figure" >&2; exit 1; }
    ours+=("$c") theirs+=("$b")
    echo "round $run: Courier $c/s, BullMQ $b/s (wall clock $wall/s; its round trip p50 $p50 ms, p99 $p99 ms)"
  fi
  if [[ " $PEERS " == *" apalis "* ]]; then
    c=$(courier "$APALIS_N")
    read -r a wall <<<"$(apalis)"
    [ -n "$c" ] && [ -n "$a" ] || { echo "peers.sh: a run gave no figure" >&2; exit 1; }
    ours_small+=("$c") apalis_figures+=("$a")
    echo "round $run, N=$APALIS_N: Courier $c/s, apalis $a/s (wall clock $wall/s)"
  fi
done
if [ ${#theirs[@]} -gt 0 ]; then ratio BullMQ "${ours[*]}" "${theirs[*]}"; fi
if [ ${#apalis_figures[@]} -gt 0 ]; then ratio apalis "${ours_small[*]}" "${apalis_figures[*]}"; fi
