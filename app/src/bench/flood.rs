//! `flood-bench`: what flood control costs. Two measurements, both against
//! the configured Redis (and NATS, for the second):
//!
//! - **Per send**: the governor's admission (one Lua script, one round
//!   trip) beside a bare Redis `PING` on the same connection kind, one at a
//!   time (latency) and many at once (admissions per second).
//! - **End to end**: `send_message` tasks through a worker running in this
//!   process against the shipped fake Bot API without limits, with flood
//!   control on (limits set far above what the machine can send, so nothing
//!   waits and only the governor's work is measured) and off
//!   (`telegram.limits.enforce = false`). A warm-up runs first; every result
//!   is read back and must be `success`, and the fake must have accepted
//!   every message, or the run fails.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use settings::Settings;

use super::{BenchError, median, percentile, raw};
use crate::producer::Producer;
use crate::testing::fake_bot_api::FakeTelegram;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloodBenchOptions {
    /// Admissions per governor phase, tasks per end-to-end run.
    pub n: usize,
    /// End-to-end runs per mode (figures are medians, with the range).
    pub runs: usize,
    /// Admissions (and enqueues) in flight at once.
    pub in_flight: usize,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    /// Sequential `PING`: p50 and p99, microseconds.
    pub ping_us: (f64, f64),
    /// Sequential admissions: p50 and p99, microseconds.
    pub admit_us: (f64, f64),
    /// Admissions per second with `in_flight` at once.
    pub admits_per_second: f64,
    /// End to end with flood control: median, slowest and fastest run, tasks per second.
    pub governed: (f64, f64, f64),
    /// End to end without: median, slowest and fastest run.
    pub ungoverned: (f64, f64, f64),
}

/// Runs both measurements.
pub async fn run(settings: &Settings, options: &FloodBenchOptions) -> Result<FloodReport, BenchError> {
    let (ping_us, admit_us, admits_per_second) = per_send(settings, options).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(raw)?;
    let fake = FakeTelegram::start_on(listener, None, 1_000);
    let governed = end_to_end(settings, options, &fake, true).await?;
    let ungoverned = end_to_end(settings, options, &fake, false).await?;
    Ok(FloodReport { ping_us, admit_us, admits_per_second, governed, ungoverned })
}

/// Limits no run here can reach: nothing waits, only the governor's work counts.
fn unreachable_limits(settings: &Settings) -> settings::TelegramLimits {
    let mut limits = settings.telegram.limits.clone();
    limits.global_per_second = 100_000.0;
    limits.global_burst = 100_000;
    limits.private_per_second = 100_000.0;
    limits.private_burst = 1_000;
    limits.group_per_minute = 6_000_000.0;
    limits.group_burst = 1_000;
    limits.interactive_reserve = 0.0;
    limits
}

async fn per_send(
    settings: &Settings,
    options: &FloodBenchOptions,
) -> Result<((f64, f64), (f64, f64), f64), BenchError> {
    let client = di::components::result_store::redis_client(&settings.redis).map_err(raw)?;
    let mut conn = client.connect().await.map_err(raw)?;
    let prefix = format!("{}flood-bench-{}:", settings.redis.key_prefix, std::process::id());
    let governor = std::sync::Arc::new(di::Governor::new(1, &prefix, unreachable_limits(settings), Some(client)));
    let mut pings = Vec::with_capacity(options.n);
    let mut admits = Vec::with_capacity(options.n);
    for i in 0..options.n {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(raw)?;
        pings.push(started.elapsed().as_secs_f64() * 1e6);
        let started = Instant::now();
        match governor.admit(i as i64 + 1, di::Lane::Bulk).await {
            di::Admission::Go(wait) if wait.is_zero() => {}
            other => return Err(BenchError::Raw(format!("admission {i} was {other:?}: limits reached"))),
        }
        admits.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut issued = 0;
    let mut done = 0;
    while done < options.n {
        while issued < options.n && pending.len() < options.in_flight {
            let governor = governor.clone();
            issued += 1;
            let chat = issued as i64 + 1_000_000;
            pending.push(async move { governor.admit(chat, di::Lane::Bulk).await });
        }
        if pending.next().await.is_some() {
            done += 1;
        }
    }
    let per_second = options.n as f64 / started.elapsed().as_secs_f64();
    let p = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    Ok((p(pings), p(admits), per_second))
}

/// Median, slowest and fastest of `runs` end-to-end runs in one mode.
async fn end_to_end(
    settings: &Settings,
    options: &FloodBenchOptions,
    fake: &FakeTelegram,
    governed: bool,
) -> Result<(f64, f64, f64), BenchError> {
    let mode = if governed { "governed" } else { "ungoverned" };
    let mut settings = settings.clone();
    let tag = format!("{}_{mode}", std::process::id());
    settings.nats.stream = format!("COURIER_FLOOD_BENCH_{tag}");
    settings.nats.subject = format!("courier_flood_bench_{tag}.tasks");
    settings.nats.durable = format!("courier-flood-bench-{tag}");
    settings.nats.dead_letter_subject = format!("courier_flood_bench_{tag}.dead");
    settings.nats.done_subject = format!("courier_flood_bench_{tag}.done");
    settings.redis.key_prefix = format!("courier_flood_bench_{tag}:");
    settings.worker.http_addr = String::new();
    settings.telegram.token = Some(settings::Secret::new("1:FLOOD-BENCH"));
    settings.telegram.api_url = fake.url.clone();
    settings.telegram.limits = unreachable_limits(&settings);
    settings.telegram.limits.enforce = governed;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(crate::run_worker(settings.clone(), async move {
        let _ = stopped.await;
    }));
    let producer = Producer::connect(&settings).await?;
    let outcome = async {
        send_all(&producer, fake, options, options.n.min(1_000), "warm-up").await?;
        let mut rates = Vec::with_capacity(options.runs);
        for run in 0..options.runs {
            rates.push(send_all(&producer, fake, options, options.n, &format!("{mode} run {}", run + 1)).await?);
        }
        rates.sort_by(f64::total_cmp);
        Ok::<_, BenchError>((median(&rates), rates[0], rates[rates.len() - 1]))
    }
    .await;
    let _ = stop.send(());
    let _ = worker.await;
    let js = async_nats::jetstream::new(crate::broker::connect(&settings.nats, "flood-bench").await.map_err(raw)?);
    for stream in [
        settings.nats.stream.clone(),
        format!("{}_DEAD", settings.nats.stream),
        format!("{}_ADVISORIES", settings.nats.stream),
    ] {
        let _ = js.delete_stream(&stream).await;
    }
    outcome
}

/// Enqueues `n` messages to `n` chats, waits for every record, checks each
/// is `success` and the fake accepted them all; returns tasks per second.
async fn send_all(
    producer: &Producer,
    fake: &FakeTelegram,
    options: &FloodBenchOptions,
    n: usize,
    what: &str,
) -> Result<f64, BenchError> {
    let accepted_before = fake.accepted_count();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut pending = FuturesUnordered::new();
    let mut issued = 0;
    while ids.len() < n {
        while issued < n && pending.len() < options.in_flight {
            issued += 1;
            let args = tasks::send_message::Args::text(issued as i64, format!("{what} {issued}"));
            let producer = producer.clone();
            pending.push(async move { producer.enqueue(tasks::send_message::TASK, &args).await.map(|h| h.task_id) });
        }
        if let Some(id) = pending.next().await {
            ids.push(id?);
        }
    }
    let mut remaining: &[String] = &ids;
    while !remaining.is_empty() {
        let chunk = &remaining[..remaining.len().min(500)];
        if producer.count_final(chunk).await? == chunk.len() {
            remaining = &remaining[chunk.len()..];
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Raw(format!("{what}: {} tasks unfinished after 10 min", remaining.len())));
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    for id in &ids {
        let record = producer.result(id).await?;
        if record.as_ref().map(|r| r.status) != Some(di::TaskStatus::Success) {
            return Err(BenchError::Raw(format!("{what}: task {id} ended {record:?}")));
        }
    }
    let accepted = fake.accepted_count() - accepted_before;
    if accepted != n as u64 {
        return Err(BenchError::Raw(format!("{what}: the fake accepted {accepted} of {n} messages")));
    }
    Ok(rate)
}

/// The report as a table.
pub fn table(report: &FloodReport, options: &FloodBenchOptions) -> String {
    let (g, u) = (report.governed, report.ungoverned);
    format!(
        "flood control, per send ({n} sequential, then {n} with {k} in flight):\n  \
         Redis PING       p50 {:.0} us  p99 {:.0} us\n  \
         admission        p50 {:.0} us  p99 {:.0} us  ({:.0} admissions/s with {k} in flight)\n\
         end to end, send_message to the fake Bot API ({n} tasks, {r} runs, median [slowest, fastest]):\n  \
         flood control on   {:.0}/s [{:.0}, {:.0}]\n  \
         flood control off  {:.0}/s [{:.0}, {:.0}]\n  \
         on/off             {:.1}%\n",
        report.ping_us.0,
        report.ping_us.1,
        report.admit_us.0,
        report.admit_us.1,
        report.admits_per_second,
        g.0,
        g.1,
        g.2,
        u.0,
        u.1,
        u.2,
        100.0 * g.0 / u.0,
        n = options.n,
        k = options.in_flight,
        r = options.runs,
    )
}
