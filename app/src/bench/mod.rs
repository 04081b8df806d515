//! The benchmarks behind BENCHMARKS.md, each run by a binary of its own
//! (none is part of `worker`, `producer` or `bot`): `bench` (this module:
//! Courier end to end against a running worker, and with `--ceiling` the
//! raw primitives and pipelines on the same services), `flood-bench`
//! ([`flood`]) and `fanout-bench` ([`fan_out`]).
//!
//! `bench` is honest in the way the Taskiq harness (`bench/taskiq/`) is:
//! it waits for a worker to answer and warms up before timing, reads every
//! result back and checks it (a failed, wrong or missing result is counted
//! apart, stops the runs and fails the command), and compares a Courier
//! figure only with the raw pipeline doing the same work (`report.rs`).

mod ceiling;
pub mod fan_out;
#[cfg(feature = "testing")]
pub mod flood;
pub mod readback;
pub mod report;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use settings::Settings;

use self::ceiling::{Ceiling, Work};
use self::readback::{Checked, Expected, Readback};
use self::report::{Phase, Report, Samples};
use crate::cli::output::Progress;
use crate::producer::{Producer, ProducerError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tasks per throughput phase (and messages per raw phase).
    pub n: usize,
    /// Sequential round trips for the latency phase.
    pub round_trips: usize,
    /// Enqueues (and raw publishes) in flight at once.
    pub in_flight: usize,
    /// Repetitions of the whole suite (figures are medians).
    pub runs: usize,
    /// Tasks of each kind run, read back and checked before timing.
    pub warmup: usize,
    /// How long a batch may go without a new result before the rest count
    /// as missing.
    pub stall: Duration,
    /// Also measure the bare primitives and the raw pipelines.
    pub ceiling: bool,
    /// The worker's process id, to report its memory.
    pub worker_pid: Option<u32>,
}

/// Why a benchmark stopped before it could report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The producer failed.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// A raw primitive, the readback or a service failed: what was being
    /// done, and what the library said.
    #[error("{0}")]
    Raw(String),
    /// No worker answered the first task.
    #[error("no worker answered: a noop task had no result within {0}; is a worker running on these settings?")]
    NoWorker(String),
}

fn raw(err: impl std::fmt::Display) -> BenchError {
    BenchError::Raw(err.to_string())
}

/// Maps a library error to [`BenchError::Raw`], saying what was being done.
fn failed<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BenchError {
    move |err| BenchError::Raw(format!("{what}: {err}"))
}

/// The middle of `sorted` values.
fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// The `q` quantile of `sorted` values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Progress of one phase, on a terminal only.
#[derive(Debug)]
pub struct Show<'a> {
    progress: &'a Progress,
    phase: &'a str,
}

impl Show<'_> {
    fn set(&self, text: &str) {
        self.progress.set(&format!("{}: {text}", self.phase));
    }
}

/// The Courier task a batch runs.
#[derive(Debug, Clone, Copy)]
enum Task {
    Noop,
    SelectOne,
}

impl Task {
    fn expected(self) -> Expected {
        match self {
            Self::Noop => Expected::new(tasks::noop::TASK.name(), &()),
            Self::SelectOne => Expected::new(tasks::select_one::TASK.name(), &1i64),
        }
    }
}

/// The connections a run uses.
struct Bench<'a> {
    settings: &'a Settings,
    options: &'a BenchOptions,
    producer: Producer,
    readback: Readback,
    progress: &'a Progress,
}

/// Runs the suite: readiness, warm-up, then `runs` times each phase. A
/// phase whose results are not all the expected ones stops the runs; the
/// report says which and how many ([`Report::clean`] is false).
pub async fn run(settings: &Settings, options: &BenchOptions) -> Result<Report, BenchError> {
    let progress = Progress::stderr();
    let producer = Producer::connect(settings).await?;
    let readback = Readback::connect(settings, options.stall).await?;
    let mut ceiling = match options.ceiling {
        true => Some(Ceiling::open(settings, readback.clone()).await?),
        false => None,
    };
    let bench = Bench { settings, options, producer, readback, progress: &progress };
    let rest = options.worker_pid.and_then(|pid| proc_kib(pid, "VmRSS:"));
    let mut samples = Samples::default();
    let measured = bench.measure(&mut samples, ceiling.as_mut()).await;
    if let Some(ceiling) = ceiling {
        ceiling.close().await;
    }
    progress.clear();
    measured?;
    let mut report = samples.summarise(options.in_flight, settings.worker.concurrency, options.round_trips);
    report.worker_rss_at_rest_kib = rest;
    report.worker_rss_peak_kib = options.worker_pid.and_then(|pid| proc_kib(pid, "VmHWM:"));
    Ok(report)
}

/// Enqueues `n` `noop` tasks, `in_flight` at once, and returns how long
/// it took, without waiting for any result: a pre-filled queue for a worker
/// started afterwards to drain (`scripts/profile.sh` counts a worker's
/// instructions per task this way). Needs no worker.
pub async fn prefill(settings: &Settings, n: usize, in_flight: usize) -> Result<Duration, BenchError> {
    let producer = Producer::connect(settings).await?;
    let started = Instant::now();
    enqueue_noops(&producer, n, in_flight).await?;
    Ok(started.elapsed())
}

/// Enqueues `n` `noop` tasks, `in_flight` at once; returns their ids.
async fn enqueue_noops(producer: &Producer, n: usize, in_flight: usize) -> Result<Vec<String>, BenchError> {
    let mut pending = FuturesUnordered::new();
    let mut ids = Vec::with_capacity(n);
    let mut issued = 0;
    while ids.len() < n {
        while issued < n && pending.len() < in_flight {
            pending.push(producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}));
            issued += 1;
        }
        if let Some(handle) = pending.next().await {
            ids.push(handle?.task_id);
        }
    }
    Ok(ids)
}

/// What a drain measured.
#[derive(Debug, Clone, Serialize)]
pub struct Drained {
    /// Tasks queued before the worker started.
    pub n: usize,
    /// Every record read back and checked.
    pub checked: Checked,
    /// From the first task's start to the last one's end, by the
    /// worker's records (seconds); its start-up is not in it.
    pub span_s: f64,
    /// `n / span_s`.
    pub per_second: f64,
}

/// A pre-filled queue drained: enqueues `n` `noop` tasks with no worker
/// taking them, calls `queued` (start the worker then), reads every record
/// back and checks it, and times the drain by the records: from the
/// earliest start to the latest finish. As the BullMQ harness
/// (`bench/bullmq`) times its worker by its jobs' `processedOn` and
/// `finishedOn`.
pub async fn drain(
    settings: &Settings,
    n: usize,
    in_flight: usize,
    stall: Duration,
    queued: impl FnOnce(),
) -> Result<Drained, BenchError> {
    let producer = Producer::connect(settings).await?;
    let readback = Readback::connect(settings, stall).await?;
    let ids = enqueue_noops(&producer, n, in_flight).await?;
    queued();
    // While the worker drains, only a sample of a hundred ids is looked
    // at, ten times a second: reading every record back meanwhile would
    // load the Redis the worker writes to (BullMQ's harness reads back
    // after its drain too).
    let prefix = &settings.redis.key_prefix;
    let sample: Vec<String> = ids.iter().step_by((n / 100).max(1)).cloned().collect();
    let (mut seen, mut moved) = (0, Instant::now());
    while seen < sample.len() && moved.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = readback.count_final(prefix, &sample).await?;
        if now > seen {
            (seen, moved) = (now, Instant::now());
        }
    }
    let progress = Progress::stderr();
    let show = Show { progress: &progress, phase: "drain" };
    let (checked, span) = readback.read_all_spanned(prefix, &ids, &Task::Noop.expected(), &show).await?;
    progress.clear();
    let span_s = span.map_or(0.0, |(start, end)| end - start);
    let per_second = if span_s > 0.0 { n as f64 / span_s } else { 0.0 };
    Ok(Drained { n, checked, span_s, per_second })
}

impl Bench<'_> {
    async fn measure(&self, samples: &mut Samples, mut ceiling: Option<&mut Ceiling>) -> Result<(), BenchError> {
        let (n, warmup) = (self.options.n, self.options.warmup);
        self.wait_for_worker().await?;
        for (task, phase) in [(Task::Noop, "warm-up, noop"), (Task::SelectOne, "warm-up, DI SELECT 1")] {
            let (_, _, checked) = self.batch(task, warmup, phase).await?;
            if !samples.check(0, phase, checked) {
                return Ok(());
            }
        }
        if let Some(ceiling) = ceiling.as_deref_mut() {
            for (work, phase) in [(Work::Nothing, "warm-up, raw pipeline"), (Work::SelectOne, "warm-up, raw SELECT 1")]
            {
                let show = Show { progress: self.progress, phase };
                let (_, checked) =
                    ceiling.raw_pipeline(self.settings, work, warmup, self.options.in_flight, &show).await?;
                if !samples.check(0, phase, checked) {
                    return Ok(());
                }
            }
        }
        for run in 1..=self.options.runs {
            let (enqueued, finished, checked) = self.batch(Task::Noop, n, Phase::EndToEndNoop.label()).await?;
            if !samples.check(run, Phase::EndToEndNoop.label(), checked) {
                return Ok(());
            }
            samples.rate(run, Phase::Enqueue, n, enqueued);
            samples.rate(run, Phase::EndToEndNoop, n, finished);
            let (_, finished, checked) = self.batch(Task::SelectOne, n, Phase::EndToEndSelect.label()).await?;
            if !samples.check(run, Phase::EndToEndSelect.label(), checked) {
                return Ok(());
            }
            samples.rate(run, Phase::EndToEndSelect, n, finished);
            let (latencies, checked) = self.round_trips().await?;
            if !samples.check(run, "round trip, noop", checked) {
                return Ok(());
            }
            samples.latencies(latencies);
            if let Some(ceiling) = ceiling.as_deref_mut() {
                let show = Show { progress: self.progress, phase: "raw primitives" };
                for (phase, rate) in ceiling.primitives(n, &show).await? {
                    samples.rate(run, phase, n, rate);
                }
                for (work, phase) in
                    [(Work::Nothing, Phase::RawPipelineNoop), (Work::SelectOne, Phase::RawPipelineSelect)]
                {
                    let show = Show { progress: self.progress, phase: phase.label() };
                    let (rate, checked) =
                        ceiling.raw_pipeline(self.settings, work, n, self.options.in_flight, &show).await?;
                    if !samples.check(run, phase.label(), checked) {
                        return Ok(());
                    }
                    samples.rate(run, phase, n, rate);
                }
            }
            samples.runs_completed = run;
        }
        Ok(())
    }

    /// Sends `noop` tasks until one comes back (a worker may still be
    /// starting), for up to a minute; its result must be the expected one.
    async fn wait_for_worker(&self) -> Result<(), BenchError> {
        let show = Show { progress: self.progress, phase: "warm-up" };
        show.set("waiting for a worker to answer");
        let started = Instant::now();
        let limit = Duration::from_secs(60);
        while started.elapsed() < limit {
            let handle = self.producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?;
            match handle.wait(Duration::from_secs(2)).await {
                Ok(_) => return Ok(()),
                Err(ProducerError::Timeout { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Err(BenchError::NoWorker(crate::telemetry::human(limit).to_string()))
    }

    /// Enqueues `n` tasks with `in_flight` at once, then reads every result
    /// back and checks it. Returns the enqueue rate and the end-to-end rate
    /// (first enqueue until the last result is read back), and the checks.
    async fn batch(&self, task: Task, n: usize, phase: &str) -> Result<(f64, f64, Checked), BenchError> {
        let show = Show { progress: self.progress, phase };
        let started = Instant::now();
        let mut pending = FuturesUnordered::new();
        let mut ids = Vec::with_capacity(n);
        let mut issued = 0;
        while ids.len() < n {
            while issued < n && pending.len() < self.options.in_flight {
                pending.push(self.enqueue(task));
                issued += 1;
            }
            if let Some(id) = pending.next().await {
                ids.push(id?);
                if ids.len() % 1000 == 0 {
                    show.set(&format!("enqueued {}/{n}", ids.len()));
                }
            }
        }
        let enqueued = started.elapsed();
        let prefix = &self.settings.redis.key_prefix;
        let checked = self.readback.read_all(prefix, &ids, &task.expected(), &show).await?;
        let finished = started.elapsed();
        Ok((n as f64 / enqueued.as_secs_f64(), n as f64 / finished.as_secs_f64(), checked))
    }

    async fn enqueue(&self, task: Task) -> Result<String, ProducerError> {
        let producer = &self.producer;
        Ok(match task {
            Task::Noop => producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?.task_id,
            Task::SelectOne => producer.enqueue(tasks::select_one::TASK, &tasks::select_one::Args {}).await?.task_id,
        })
    }

    /// Sequential enqueue -> final record read by `TaskHandle::wait`, in
    /// milliseconds; each record is checked, and one that does not come
    /// within the stall time is missing.
    async fn round_trips(&self) -> Result<(Vec<f64>, Checked), BenchError> {
        let count = self.options.round_trips;
        let show = Show { progress: self.progress, phase: "round trips" };
        let expected = Task::Noop.expected();
        let mut out = Vec::with_capacity(count);
        let mut checked = Checked::default();
        for i in 0..count {
            let started = Instant::now();
            let handle = self.producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?;
            match handle.wait(self.options.stall).await {
                Ok(record) => {
                    out.push(started.elapsed().as_secs_f64() * 1000.0);
                    checked.record(&record, &expected);
                }
                Err(ProducerError::Timeout { .. }) => checked.missing += 1,
                Err(err) => return Err(err.into()),
            }
            if !checked.clean() {
                break;
            }
            if i % 100 == 99 {
                show.set(&format!("{}/{count}", i + 1));
            }
        }
        Ok((out, checked))
    }
}

/// A field of `/proc/<pid>/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}
