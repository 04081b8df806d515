#!/usr/bin/env bash
# A worker's instructions per task, counted by valgrind's callgrind (stable
# on a shared machine, where wall-clock figures move by 10-20 %): N noop
# tasks are enqueued first (`bench --prefill`), then a release worker runs
# under callgrind until it has finished them all and is stopped; the same
# is done with no task, and the difference divided by N is the cost of one
# task. The profiles are kept for callgrind_annotate.
#   N=10000 OUT=/tmp/courier-profile ./scripts/profile.sh
#   WORKER=/path/to/another/worker ./scripts/profile.sh   # to compare builds
# Needs valgrind and the development profile's NATS, Redis and PostgreSQL.
# Leaves the empty stream COURIER_PROFILE for the next run (as bench.sh
# leaves COURIER_BENCH); the records expire after 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
OUT=${OUT:-/tmp/courier-profile}
PORT=${PORT:-9477}
mkdir -p "$OUT"
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"
worker=${WORKER:-$bin/worker}

# Names of its own, so a running development worker is not disturbed.
export COURIER_ENV=${COURIER_ENV:-development}
export COURIER_NATS__STREAM=COURIER_PROFILE
export COURIER_NATS__SUBJECT=courier_profile.tasks
export COURIER_NATS__DURABLE=courier-profile
export COURIER_NATS__DEAD_LETTER_SUBJECT=courier_profile.dead
export COURIER_NATS__DONE_SUBJECT=courier_profile.done
export COURIER_REDIS__KEY_PREFIX=courier_profile:
export COURIER_REDIS__RESULT_TTL=10m
export COURIER_WORKER__HTTP_ADDR=127.0.0.1:$PORT
export RUST_LOG=${RUST_LOG:-warn,courier::worker=info}

# The noop tasks the worker at $PORT says succeeded (0 before the first).
succeeded() {
  curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^courier_tasks_succeeded_total\{task="noop"\}/ { print $2; found=1 } END { if (!found) print 0 }'
}

# Runs a worker under callgrind until `$1` noop tasks succeeded, then stops
# it; prints the instructions it executed.
profile() {
  local n=$1 file="$OUT/callgrind.$1.out" log="$OUT/worker.$1.log"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$worker" >"$log" 2>&1 &
  pid=$!
  until grep -q "worker ready" "$log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  until [ "$(succeeded)" -ge "$n" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  kill -TERM "$pid"
  wait "$pid"
  pid=
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

# Stops only the worker this script started.
trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi' EXIT
idle=$(profile 0)
"$bin/bench" --prefill --n "$N"
loaded=$(profile "$N")
echo "instructions: $idle with no task, $loaded with $N noop tasks"
echo "per task: $(( (loaded - idle) / N ))"
echo "profiles: $OUT/callgrind.0.out, $OUT/callgrind.$N.out (callgrind_annotate)"
