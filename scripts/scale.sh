#!/usr/bin/env bash
# End-to-end throughput with 1, 2 and 3 worker processes, against the single
# NATS server and against a three-node cluster (scripts/cluster.sh, stream at
# three replicas): the `bench` binary (warm-up, every result read back and
# checked) against workers this script starts. Release build; the figures
# are in BENCHMARKS.md ("Scaling out").
#   N=20000 RUNS=3 WORKERS="1 2 3" ./scripts/scale.sh [single|cluster|both]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-"1 2 3"}
which=${1:-both}
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"

export COURIER_ENV=${COURIER_ENV:-development}
export COURIER_REDIS__RESULT_TTL=10m
export COURIER_WORKER__HTTP_ADDR=
export RUST_LOG=${RUST_LOG:-warn,courier::worker=info}
pids=()
stop_workers() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_workers; [ "${cluster_started:-}" = 1 ] && ./scripts/cluster.sh stop >/dev/null' EXIT

run() {
  local label=$1 k=$2
  # Names of its own per run: a fresh stream and consumer each time.
  local tag="scale_${label}_${k}_$$"
  export COURIER_NATS__STREAM=${tag^^} COURIER_NATS__SUBJECT=$tag.tasks COURIER_NATS__DURABLE=$tag \
    COURIER_NATS__DEAD_LETTER_SUBJECT=$tag.dead COURIER_NATS__DONE_SUBJECT=$tag.done COURIER_REDIS__KEY_PREFIX=$tag:
  for _ in $(seq "$k"); do
    log=$(mktemp)
    "$bin/worker" >"$log" 2>&1 &
    pids+=($!)
    until grep -q "worker ready" "$log"; do
      kill -0 "${pids[-1]}" 2>/dev/null || { cat "$log"; exit 1; }
      sleep 0.01
    done
  done
  echo "== $label NATS, $k worker process(es), N=$N, $RUNS runs"
  "$bin/bench" --n "$N" --runs "$RUNS" --round-trips 200 --warmup 1000 | grep -E "phase|end to end|round trip"
  stop_workers
}

if [ "$which" = single ] || [ "$which" = both ]; then
  for k in $WORKERS; do run single "$k"; done
fi
if [ "$which" = cluster ] || [ "$which" = both ]; then
  ./scripts/cluster.sh start >/dev/null
  cluster_started=1
  export COURIER_NATS__URL=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
  export COURIER_NATS__STREAM_REPLICAS=3
  for k in $WORKERS; do run cluster "$k"; done
fi
