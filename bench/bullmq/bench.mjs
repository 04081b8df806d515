// BullMQ's side of Courier's peer benchmark (README.md beside this file).
//
// Drain: N no-op jobs are queued first, then one Worker (concurrency 32 by
// default) is started and timed until it has finished them all; every job
// is then read back and checked (completed, its own return value), and
// failed or missing jobs are counted apart (a run that has any is not a
// figure). Round trips: one job at a time, enqueue to "finished" seen by
// the producer (QueueEvents), after a warm-up. Each run uses a queue of its
// own, removed at the end.
//
//   node bench.mjs --n 20000 --runs 3 --concurrency 32
//   REDIS_URL=redis://127.0.0.1:6379 node bench.mjs --json

import { parseArgs } from "node:util";
import { Queue, QueueEvents, Worker } from "bullmq";
import IORedis from "ioredis";

const { values: opts } = parseArgs({
  options: {
    n: { type: "string", default: "20000" },
    runs: { type: "string", default: "3" },
    concurrency: { type: "string", default: "32" },
    warmup: { type: "string", default: "1000" },
    "round-trips": { type: "string", default: "1000" },
    json: { type: "boolean", default: false },
  },
});
const n = Number(opts.n);
const runs = Number(opts.runs);
const concurrency = Number(opts.concurrency);
const warmup = Number(opts.warmup);
const roundTrips = Number(opts["round-trips"]);
for (const [name, value] of Object.entries({ n, runs, concurrency, warmup, roundTrips })) {
  if (!Number.isInteger(value) || value < 1) {
    console.error(`bench.mjs: --${name} must be a positive integer`);
    process.exit(2);
  }
}
// The whole URL goes to ioredis: a password or a database number in it counts.
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
// BullMQ 6 takes a client (ioredis is optional to it): one per queue, worker and events.
const connect = () => new IORedis(redisUrl, { maxRetriesPerRequest: null });

const PAGE = 1000;

function queueName(what) {
  return `courier-peer-${what}-${process.pid}-${Date.now()}`;
}

// Queues `count` jobs carrying their index; each returns it.
async function fill(queue, count) {
  for (let start = 0; start < count; start += PAGE) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + PAGE); i++) {
      jobs.push({ name: "noop", data: { i } });
    }
    await queue.addBulk(jobs);
  }
}

// Reads every job back: completed with its own index, or counted apart.
async function readBack(queue, count) {
  const checked = { ok: 0, failed: 0, wrong: 0, missing: 0 };
  let firstStart = Infinity;
  let lastFinish = 0;
  const seen = new Set();
  for (let start = 0; ; start += PAGE) {
    const jobs = await queue.getJobs(["completed"], start, start + PAGE - 1, true);
    if (jobs.length === 0) break;
    for (const job of jobs) {
      if (seen.has(job.id)) continue;
      seen.add(job.id);
      if (job.returnvalue === job.data.i && job.finishedOn && job.processedOn) {
        checked.ok += 1;
        firstStart = Math.min(firstStart, job.processedOn);
        lastFinish = Math.max(lastFinish, job.finishedOn);
      } else {
        checked.wrong += 1;
      }
    }
  }
  checked.failed = await queue.getFailedCount();
  checked.missing = Math.max(0, count - checked.ok - checked.wrong - checked.failed);
  return { checked, spanMs: lastFinish - firstStart };
}

// One drain: fill, start a worker, time it to the last completion, read back.
async function drain(count) {
  const name = queueName("drain");
  const queue = new Queue(name, { connection: connect() });
  await fill(queue, count);
  let done = 0;
  let finished;
  const allDone = new Promise((resolve) => (finished = resolve));
  const worker = new Worker(name, async (job) => job.data.i, { connection: connect(), concurrency, autorun: false });
  const count_ = () => {
    done += 1;
    if (done === count) finished();
  };
  worker.on("completed", count_);
  worker.on("failed", count_);
  const started = process.hrtime.bigint();
  worker.run();
  await allDone;
  const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
  await worker.close();
  const { checked, spanMs } = await readBack(queue, count);
  await queue.obliterate({ force: true });
  await queue.close();
  return { wallMs, spanMs, checked, perSecond: (count / wallMs) * 1000 };
}

// Sequential round trips through a running worker: enqueue to the
// producer's "completed" notice.
async function roundTripRun(count, warm) {
  const name = queueName("rtt");
  const queue = new Queue(name, { connection: connect() });
  const events = new QueueEvents(name, { connection: connect() });
  await events.waitUntilReady();
  const worker = new Worker(name, async (job) => job.data.i, { connection: connect(), concurrency });
  await worker.waitUntilReady();
  const samples = [];
  let bad = 0;
  for (let i = 0; i < warm + count; i++) {
    const started = process.hrtime.bigint();
    const job = await queue.add("noop", { i });
    const value = await job.waitUntilFinished(events, 30000);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (value !== i) bad += 1;
    if (i >= warm) samples.push(ms);
  }
  await worker.close();
  await events.close();
  await queue.obliterate({ force: true });
  await queue.close();
  samples.sort((a, b) => a - b);
  const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
  return { p50: at(0.5), p99: at(0.99), bad };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const warm = await drain(warmup);
const clean = (c) => c.failed === 0 && c.wrong === 0 && c.missing === 0;
if (!clean(warm.checked)) {
  console.error("bench.mjs: the warm-up did not come back clean", warm.checked);
  process.exit(1);
}
const drains = [];
for (let run = 1; run <= runs; run++) {
  const result = await drain(n);
  if (!clean(result.checked)) {
    console.error(`bench.mjs: run ${run} did not come back clean`, result.checked);
    process.exit(1);
  }
  drains.push(result);
  if (!opts.json) {
    console.error(`run ${run}: ${result.perSecond.toFixed(0)} jobs/s (${result.wallMs.toFixed(0)} ms)`);
  }
}
const rtt = await roundTripRun(roundTrips, Math.min(100, warmup));
if (rtt.bad > 0) {
  console.error(`bench.mjs: ${rtt.bad} round trips returned another value`);
  process.exit(1);
}
const report = {
  bullmq: "6.7.6",
  node: process.version,
  n,
  runs,
  concurrency,
  drain_per_second: drains.map((d) => Math.round(d.perSecond)),
  drain_median_per_second: Math.round(median(drains.map((d) => d.perSecond))),
  drain_span_per_second: drains.map((d) => Math.round((n / d.spanMs) * 1000)),
  round_trip_ms: { p50: Number(rtt.p50.toFixed(3)), p99: Number(rtt.p99.toFixed(3)) },
};
if (opts.json) {
  console.log(JSON.stringify(report));
} else {
  console.log(
    `BullMQ ${report.bullmq}, one worker, concurrency ${concurrency}: drained ${n} jobs at ` +
      `${report.drain_per_second.join(" / ")} per s (median ${report.drain_median_per_second}); ` +
      `round trip p50 ${report.round_trip_ms.p50} ms, p99 ${report.round_trip_ms.p99} ms`,
  );
}
process.exit(0);
