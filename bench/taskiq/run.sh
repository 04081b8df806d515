#!/usr/bin/env bash
# Re-runnable taskiq reference benchmark (the Taskiq column of BENCHMARKS.md).
#   bench/taskiq/run.sh                              # all brokers, 1 and 2 worker processes, 3 reps
#   BROKERS=pull WORKERS_LIST=1 REPS=1 bench/taskiq/run.sh   # quick subset
# Results go to $OUTDIR (default bench/taskiq/out/<time>, git-ignored).
# Starts `taskiq worker tasks:broker` itself and stops only the PIDs it started.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VENV:-/tmp/taskiq-venv}"
PYTHON="${PYTHON:-python3.11}"
BROKERS="${BROKERS:-pull push core}"
WORKERS_LIST="${WORKERS_LIST:-1 2}"
REPS="${REPS:-3}"
NS="${NS:-2000,10000}"
OUTDIR="${OUTDIR:-$HERE/out/$(date +%Y%m%d-%H%M%S)}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi
mkdir -p "$OUTDIR"
cd "$HERE"

WPID=""
stop_worker() {
  if [ -n "$WPID" ] && kill -0 "$WPID" 2>/dev/null; then
    kill -TERM "$WPID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$WPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$WPID" 2>/dev/null; then
      # main process did not exit in 10 s: kill its children (by parent pid) and it
      for c in $(cat /proc/"$WPID"/task/*/children 2>/dev/null); do kill -KILL "$c" 2>/dev/null || true; done
      kill -KILL "$WPID" 2>/dev/null || true
    fi
    wait "$WPID" 2>/dev/null || true
  fi
  WPID=""
}
trap stop_worker EXIT INT TERM

for b in $BROKERS; do
  for w in $WORKERS_LIST; do
    for r in $(seq 1 "$REPS"); do
      RUN="${b}_w${w}_r${r}_$(date +%s%N | tail -c 8)"
      export TQ_BROKER="$b" TQ_RUN="$RUN"
      echo "=== broker=$b workers=$w rep=$r run=$RUN" >&2
      "$VENV/bin/taskiq" worker tasks:broker --workers "$w" --log-level WARNING \
        >"$OUTDIR/worker_$RUN.log" 2>&1 &
      WPID=$!
      "$VENV/bin/python" bench.py measure --worker-pid "$WPID" --workers "$w" \
        --ns "$NS" --out "$OUTDIR/$RUN.json" >"$OUTDIR/bench_$RUN.log" 2>&1 \
        || echo "!!! bench failed for $RUN (see $OUTDIR/bench_$RUN.log)" >&2
      stop_worker
      "$VENV/bin/python" bench.py cleanup || true
    done
  done
done
echo "results in $OUTDIR" >&2
"$VENV/bin/python" bench.py summarize "$OUTDIR" | tee "$OUTDIR/summary.md"
