//! `producer bench`: Courier's throughput and latency against the configured
//! services and a running worker, and with `--ceiling` what the bare
//! primitives (async-nats and redis alone, no framework) achieve on the same
//! machine in the same run, so every Courier figure has a yardstick.

mod ceiling;
pub mod fan_out;
pub mod flood;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use settings::Settings;

use crate::producer::{Producer, ProducerError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tasks per throughput phase.
    pub n: usize,
    /// Sequential round trips for the latency phase.
    pub round_trips: usize,
    /// Enqueues in flight at once.
    pub in_flight: usize,
    /// Repetitions of the whole suite (figures are medians).
    pub runs: usize,
    /// Also measure the bare primitives and the raw pipeline.
    pub ceiling: bool,
    /// The worker's process id, to report its memory.
    pub worker_pid: Option<u32>,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// Why a benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The producer failed.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// A raw primitive failed.
    #[error("{0}")]
    Raw(String),
}

fn raw(err: impl std::fmt::Display) -> BenchError {
    BenchError::Raw(err.to_string())
}

/// One measured figure: the median of the runs, and their range.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub phase: String,
    /// Tasks or messages per run.
    pub n: usize,
    /// Median rate per second (throughput phases).
    pub per_second: Option<f64>,
    /// Slowest and fastest run's rate.
    pub per_second_range: Option<(f64, f64)>,
    /// Latency percentiles in milliseconds (round-trip phase, all runs pooled).
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Slowest.
    pub max_ms: Option<f64>,
    /// The rate as a percentage of the raw pipeline's (with `--ceiling`).
    pub of_raw_pipeline: Option<f64>,
}

/// Everything one `producer bench` printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// The worker's resident memory before the runs, KiB.
    pub worker_rss_at_rest_kib: Option<u64>,
    /// The worker's peak resident memory after the runs, KiB.
    pub worker_rss_peak_kib: Option<u64>,
}

#[derive(Default)]
struct Samples {
    rates: Vec<(String, usize, f64)>,
    latencies: Vec<f64>,
}

/// Runs the suite.
pub async fn run(settings: &Settings, options: &BenchOptions) -> Result<Report, BenchError> {
    let producer = Producer::connect(settings).await?;
    let rest = options.worker_pid.and_then(|pid| proc_kib(pid, "VmRSS:"));
    let mut samples = Samples::default();
    for run in 1..=options.runs {
        progress(&format!("run {run}/{}", options.runs));
        let noop = enqueue_and_finish(&producer, options, "noop", |p| {
            Box::pin(async move { Ok(p.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?.task_id) })
        })
        .await?;
        samples.rates.push(("enqueue (publish with ack), noop".into(), options.n, noop.0));
        samples.rates.push(("end to end, noop".into(), options.n, noop.1));
        let select = enqueue_and_finish(&producer, options, "select_one", |p| {
            Box::pin(async move { Ok(p.enqueue(tasks::select_one::TASK, &tasks::select_one::Args {}).await?.task_id) })
        })
        .await?;
        samples.rates.push(("end to end, DI SELECT 1".into(), options.n, select.1));
        samples.latencies.extend(round_trips(&producer, options.round_trips).await?);
        if options.ceiling {
            for (phase, rate) in ceiling::measure(settings, options).await? {
                samples.rates.push((phase, options.n, rate));
            }
        }
    }
    eprintln!();
    let peak = options.worker_pid.and_then(|pid| proc_kib(pid, "VmHWM:"));
    Ok(summarise(samples, options, rest, peak))
}

type EnqueueOne = for<'a> fn(&'a Producer) -> futures_util::future::BoxFuture<'a, Result<String, BenchError>>;

/// Enqueues `n` tasks with `in_flight` at once; returns the enqueue rate and
/// the end-to-end rate (first enqueue until every result is readable).
async fn enqueue_and_finish(
    producer: &Producer,
    options: &BenchOptions,
    what: &str,
    one: EnqueueOne,
) -> Result<(f64, f64), BenchError> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut ids = Vec::with_capacity(options.n);
    let mut issued = 0;
    while ids.len() < options.n {
        while issued < options.n && pending.len() < options.in_flight {
            pending.push(one(producer));
            issued += 1;
        }
        if let Some(id) = pending.next().await {
            ids.push(id?);
            if ids.len() % 1000 == 0 {
                progress(&format!("{what}: enqueued {}/{}", ids.len(), options.n));
            }
        }
    }
    let enqueued = started.elapsed();
    // Results arrive roughly in order: check the oldest chunk until it is done.
    let mut remaining: &[String] = &ids;
    while !remaining.is_empty() {
        let chunk = &remaining[..remaining.len().min(500)];
        if producer.count_final(chunk).await? == chunk.len() {
            remaining = &remaining[chunk.len()..];
            progress(&format!("{what}: finished {}/{}", ids.len() - remaining.len(), ids.len()));
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Raw(format!(
                "{what}: {} tasks unfinished after 10 min: is a worker running?",
                remaining.len()
            )));
        }
    }
    let finished = started.elapsed();
    Ok((options.n as f64 / enqueued.as_secs_f64(), options.n as f64 / finished.as_secs_f64()))
}

/// Sequential enqueue -> result read by `TaskHandle::wait`; milliseconds.
async fn round_trips(producer: &Producer, count: usize) -> Result<Vec<f64>, BenchError> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?;
        handle.wait(Duration::from_secs(30)).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        if i % 100 == 99 {
            progress(&format!("round trips {}/{count}", i + 1));
        }
    }
    Ok(out)
}

fn summarise(samples: Samples, options: &BenchOptions, rest: Option<u64>, peak: Option<u64>) -> Report {
    let mut figures: Vec<Figure> = Vec::new();
    for (phase, n, _) in &samples.rates {
        if figures.iter().any(|f| &f.phase == phase) {
            continue;
        }
        let mut rates: Vec<f64> = samples.rates.iter().filter(|(p, _, _)| p == phase).map(|(_, _, r)| *r).collect();
        rates.sort_by(f64::total_cmp);
        figures.push(Figure {
            phase: phase.clone(),
            n: *n,
            per_second: Some(median(&rates)),
            per_second_range: Some((rates[0], rates[rates.len() - 1])),
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            of_raw_pipeline: None,
        });
    }
    let mut latencies = samples.latencies;
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        figures.push(Figure {
            phase: "round trip, noop (enqueue -> result readable)".into(),
            n: options.round_trips,
            per_second: None,
            per_second_range: None,
            p50_ms: Some(percentile(&latencies, 0.50)),
            p99_ms: Some(percentile(&latencies, 0.99)),
            max_ms: latencies.last().copied(),
            of_raw_pipeline: None,
        });
    }
    let pipeline = figures.iter().find(|f| f.phase.starts_with("raw pipeline")).and_then(|f| f.per_second);
    if let Some(pipeline) = pipeline {
        for figure in &mut figures {
            if !figure.phase.starts_with("raw") {
                figure.of_raw_pipeline = figure.per_second.map(|r| 100.0 * r / pipeline);
            }
        }
    }
    Report { figures, worker_rss_at_rest_kib: rest, worker_rss_peak_kib: peak }
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A field of `/proc/<pid>/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// One status line on stderr, overwritten in place; nothing into a pipe.
fn progress(text: &str) {
    crate::cli::output::Progress::stderr().set(text);
}

/// The report as a table.
pub fn table(report: &Report) -> String {
    let mut out = String::from(
        "| phase | N | per second (median) | range | p50 ms | p99 ms | max ms | % of raw pipeline |\n|---|---:|---:|---|---:|---:|---:|---:|\n",
    );
    let num = |v: Option<f64>, digits: usize| v.map_or_else(String::new, |v| format!("{v:.digits$}"));
    for f in &report.figures {
        let range = f.per_second_range.map_or_else(String::new, |(lo, hi)| format!("{lo:.0}-{hi:.0}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.phase,
            f.n,
            num(f.per_second, 0),
            range,
            num(f.p50_ms, 2),
            num(f.p99_ms, 2),
            num(f.max_ms, 2),
            num(f.of_raw_pipeline, 0)
        ));
    }
    if let (Some(rest), Some(peak)) = (report.worker_rss_at_rest_kib, report.worker_rss_peak_kib) {
        out.push_str(&format!(
            "\nworker RSS: {:.1} MiB at rest, {:.1} MiB peak\n",
            rest as f64 / 1024.0,
            peak as f64 / 1024.0
        ));
    }
    out
}
