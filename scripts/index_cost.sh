#!/usr/bin/env bash
# What the task index costs: rounds of a pre-filled queue of N no-op tasks
# drained by one release worker, alternating the index off and on (the
# development profile's PostgreSQL; off-on in odd rounds, on-off in even
# ones), every result read back and checked by
# `bench --drain`. For each drain it prints the rate (tasks/s by the
# records) and the CPU time the worker and PostgreSQL used per 1,000 tasks
# (from /proc, user + system, until the worker has stopped and written what
# it had queued), and the whole machine's busy CPU time per 1,000 tasks:
# rates swing by 20-30 % between runs on a shared machine, CPU time per
# task much less. At the end: each column's median, and the index's cost
# from the rates and from the machine's CPU per task.
#   N=20000 RUNS=8 ./scripts/index_cost.sh
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
N=${N:-20000}
RUNS=${RUNS:-4}
OUT=${OUT:-/tmp/courier-index-cost}
mkdir -p "$OUT"
cargo build --release --quiet --bin worker --bin bench
bin="${CARGO_TARGET_DIR:-target}/release"

# Names of its own, so a running development worker is not disturbed.
export COURIER_ENV=${COURIER_ENV:-development}
export COURIER_NATS__STREAM=COURIER_INDEX_COST
export COURIER_NATS__SUBJECT=courier_index_cost.tasks
export COURIER_NATS__DURABLE=courier-index-cost
export COURIER_NATS__DEAD_LETTER_SUBJECT=courier_index_cost.dead
export COURIER_NATS__DONE_SUBJECT=courier_index_cost.done
export COURIER_REDIS__KEY_PREFIX=courier_index_cost:
# Records live 2 minutes: each round is read back within seconds, and
# hundreds of thousands of them would otherwise crowd the shared Redis.
export COURIER_REDIS__RESULT_TTL=2m
export COURIER_WORKER__CONCURRENCY=${CONCURRENCY:-43}
export COURIER_WORKER__HTTP_ADDR=
export RUST_LOG=${RUST_LOG:-warn}

# CPU ticks (user + system) of the processes whose command starts with $1:
# PostgreSQL's (server and backends), or one pid with cpu_of_pid.
cpu_of_name() {
  python3 - "$1" <<'EOF'
import os, sys
total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
        if comm.startswith(sys.argv[1]):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            # cutime + cstime: the CPU of backends that exited (the worker's own).
            total += sum(int(f) for f in fields[11:15])
    except OSError:
        pass
print(total)
EOF
}
# CPU ticks the whole machine spent busy (every process and the kernel:
# NATS, Redis, the bench reading results back, and whatever else runs on
# it), from /proc/stat: user, nice, system, irq, softirq (not steal, the
# time other machines on the host had).
cpu_of_machine() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}
cpu_of_pid() {
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

trap 'if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; fi' EXIT

# One drain with the index $1 (true/false): prints rate and CPU ms per 1,000 tasks.
drain() {
  export COURIER_INDEX__ENABLED=$1
  local log="$OUT/bench.log" json="$OUT/drain.json"
  "$bin/bench" --drain --n "$N" >"$json" 2>"$log" &
  local bench=$!
  until grep -q "queued" "$log"; do
    kill -0 "$bench" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  local pg_before worker_cpu pg_after all_before all_after
  pg_before=$(cpu_of_name postgres)
  all_before=$(cpu_of_machine)
  "$bin/worker" >"$OUT/worker.log" 2>&1 &
  pid=$!
  wait "$bench" || { cat "$log" "$json" "$OUT/worker.log" >&2; kill -TERM "$pid"; exit 1; }
  kill -TERM "$pid"
  # The worker's CPU just before it is reaped (its writer has flushed by then).
  while kill -0 "$pid" 2>/dev/null && [ "$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
    worker_cpu=$(cpu_of_pid "$pid" 2>/dev/null || echo "${worker_cpu:-0}")
    sleep 0.05
  done
  worker_cpu=$(cpu_of_pid "$pid" 2>/dev/null || echo "${worker_cpu:-0}")
  wait "$pid" || true
  pid=
  all_after=$(cpu_of_machine)
  pg_after=$(cpu_of_name postgres)
  python3 - "$json" "$worker_cpu" "$((pg_after - pg_before))" "$((all_after - all_before))" "$hz" "$N" <<'EOF'
import json, sys
rate = json.load(open(sys.argv[1]))["per_second"]
worker, pg, machine, hz, n = (int(x) for x in sys.argv[2:])
per = lambda ticks: ticks * 1000 / hz / n * 1000
print(f"{rate:.0f} {per(worker):.1f} {per(pg):.1f} {per(machine):.1f}")
EOF
}

echo "round index rate/s worker_cpu_ms_per_1000 postgres_cpu_ms_per_1000 machine_cpu_ms_per_1000"
for round in $(seq 1 "$RUNS"); do
  # Off then on in odd rounds, on then off in even ones: a machine that
  # speeds up or slows down during a sitting favours neither.
  order="false true"
  if [ $((round % 2)) -eq 0 ]; then order="true false"; fi
  for index in $order; do
    row=$(drain "$index") || exit 1
    echo "$round $index $row"
  done
done | tee "$OUT/rounds.txt"
# Medians of each column, and the index's cost: how much lower the median
# rate is with it on, and each round's pair (off, then on) as a range;
# the same from the whole machine's CPU per task, which swings less.
python3 - "$OUT/rounds.txt" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
col = lambda on, i: [float(r[i]) for r in rows if r[1] == on]
for on in ("false", "true"):
    print("median index=%s: %.0f tasks/s; CPU ms per 1,000: worker %.1f, postgres %.1f, machine %.1f" % (on, *(statistics.median(col(on, i)) for i in (2, 3, 4, 5))))
def cost(off, on):
    pairs = sorted(100 * (1 - b / a) for a, b in zip(off, on))
    return 100 * (1 - statistics.median(on) / statistics.median(off)), pairs[0], pairs[-1]
print("cost: %.1f %% lower median rate; per round %.1f to %.1f %%" % cost(col("false", 2), col("true", 2)))
# CPU-bound, the rate is the inverse of the machine's CPU per task.
inverse = lambda xs: [1 / x for x in xs]
print("cost: %.1f %% lower rate by the machine's median CPU per task; per round %.1f to %.1f %%" % cost(inverse(col("false", 5)), inverse(col("true", 5))))
EOF
