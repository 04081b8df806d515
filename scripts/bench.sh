#!/usr/bin/env bash
# Courier's benchmark, as BENCHMARKS.md reports it: a release build, a worker
# started and timed to "worker ready", then the `bench` binary (a warm-up,
# 3 runs, every result read back and checked, with the raw ceilings) against
# it, on the services configured by settings (development profile: the local
# NATS, Redis and PostgreSQL). Exits with bench's code: 1 if any result was
# failed, wrong or missing.
#   N=10000 RUNS=3 ROUND_TRIPS=1000 WARMUP=1000 ./scripts/bench.sh [--json]
#   WORKER=/path/to/another/worker ./scripts/bench.sh   # to compare builds
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
RUNS=${RUNS:-3}
ROUND_TRIPS=${ROUND_TRIPS:-1000}
WARMUP=${WARMUP:-1000}
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"

# Names of its own, so a running development worker is not disturbed.
export COURIER_ENV=${COURIER_ENV:-development}
export COURIER_NATS__STREAM=${COURIER_NATS__STREAM:-COURIER_BENCH}
export COURIER_NATS__SUBJECT=${COURIER_NATS__SUBJECT:-courier_bench.tasks}
export COURIER_NATS__DURABLE=${COURIER_NATS__DURABLE:-courier-bench}
export COURIER_NATS__DEAD_LETTER_SUBJECT=${COURIER_NATS__DEAD_LETTER_SUBJECT:-courier_bench.dead}
export COURIER_NATS__DONE_SUBJECT=${COURIER_NATS__DONE_SUBJECT:-courier_bench.done}
export COURIER_REDIS__KEY_PREFIX=${COURIER_REDIS__KEY_PREFIX:-courier_bench:}
export COURIER_REDIS__RESULT_TTL=${COURIER_REDIS__RESULT_TTL:-10m}
export COURIER_WORKER__HTTP_ADDR=${COURIER_WORKER__HTTP_ADDR:-}
# Everything at warn but the worker's own lines: one per task outcome, as a
# worker at the default `log.level = "info"` writes them.
export RUST_LOG=${RUST_LOG:-warn,courier::worker=info}

log=$(mktemp)
# Stops only the worker this script started (never `kill 0`: the process group).
trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi; rm -f "$log"' EXIT
started=$(date +%s%N)
"${WORKER:-$bin/worker}" >"$log" 2>&1 &
pid=$!
until grep -q "worker ready" "$log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.002
done
ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "worker ready ${ready_ms} ms after its process started ($(grep -o 'startup_ms=[0-9]*' "$log"))"
sleep 1
status=0
"$bin/bench" --n "$N" --runs "$RUNS" --round-trips "$ROUND_TRIPS" --warmup "$WARMUP" --ceiling --worker-pid "$pid" "$@" || status=$?
kill -TERM "$pid"
wait "$pid"
pid=
exit "$status"
