//! `fanout-bench`: a campaign of N recipients (default 1,000,000) imported
//! from a CSV file and fanned out into the stream, with the rate of each
//! step and this process's peak memory. The recipients are streamed, never
//! all in memory: the peak must stay a few tens of MiB whatever N is. Read
//! back: the stream must hold exactly N messages and the database N
//! `queued` rows, or the run fails. Uses the configured NATS and database
//! with names of its own, removed afterwards.

use std::io::Write;
use std::time::Instant;

use serde::Serialize;
use settings::Settings;

use super::{BenchError, raw};
use crate::campaign::recipients::Recipients;
use crate::campaign::{CampaignSpec, Campaigns};

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct FanOutReport {
    /// Recipients.
    pub n: u64,
    /// Recipients imported into the database per second.
    pub import_per_second: f64,
    /// Messages published (and marked queued) per second.
    pub publish_per_second: f64,
    /// This process's resident memory before the campaign, KiB.
    pub rss_before_kib: Option<u64>,
    /// Its peak resident memory after it, KiB.
    pub rss_peak_kib: Option<u64>,
}

/// Runs one fan-out of `n` recipients.
pub async fn run(settings: &Settings, n: u64) -> Result<FanOutReport, BenchError> {
    let tag = std::process::id();
    let mut settings = settings.clone();
    settings.nats.stream = format!("COURIER_FANOUT_BENCH_{tag}");
    settings.nats.subject = format!("courier_fanout_bench_{tag}.tasks");
    settings.nats.durable = format!("courier-fanout-bench-{tag}");
    settings.nats.dead_letter_subject = format!("courier_fanout_bench_{tag}.dead");
    settings.nats.done_subject = format!("courier_fanout_bench_{tag}.done");
    let file = std::env::temp_dir().join(format!("courier-fanout-bench-{tag}.csv"));
    write_recipients(&file, n).map_err(raw)?;
    let rss_before_kib = self_kib("VmRSS:");
    let campaigns = Campaigns::connect(&settings).await.map_err(raw)?;
    let id = format!("fanout-bench-{tag}");
    let outcome = async {
        let spec = CampaignSpec {
            id: Some(id.clone()),
            task_name: "send_message".into(),
            kwargs: serde_json::json!({"text": "bench"}).as_object().cloned().unwrap_or_default(),
            lane: di::Lane::Bulk,
            follow_up: None,
        };
        let started = Instant::now();
        campaigns.create(spec, &Recipients::Csv(file.clone())).await.map_err(raw)?;
        let imported = started.elapsed();
        let started = Instant::now();
        let progress = crate::cli::output::Progress::stderr();
        let fan_out =
            campaigns.fan_out(&id, |done| progress.set(&format!("published {done}/{n}"))).await.map_err(raw)?;
        progress.clear();
        let published = started.elapsed();
        // Read back: the stream and the rows.
        let (_, counters) = campaigns.status(&id).await.map_err(raw)?;
        let js = async_nats::jetstream::new(crate::broker::connect(&settings.nats, "fanout-bench").await.map_err(raw)?);
        let mut stream = js.get_stream(&settings.nats.stream).await.map_err(raw)?;
        let in_stream = stream.info().await.map_err(raw)?.state.messages;
        if fan_out.published != n || in_stream != n || counters.get("queued") != n {
            return Err(BenchError::Raw(format!(
                "published {} (+{} duplicates), the stream holds {in_stream}, {} rows queued; expected {n}",
                fan_out.published,
                fan_out.duplicates,
                counters.get("queued")
            )));
        }
        Ok(FanOutReport {
            n,
            import_per_second: n as f64 / imported.as_secs_f64(),
            publish_per_second: n as f64 / published.as_secs_f64(),
            rss_before_kib,
            rss_peak_kib: self_kib("VmHWM:"),
        })
    }
    .await;
    cleanup(&campaigns, &settings, &id).await;
    let _ = std::fs::remove_file(&file);
    outcome
}

fn write_recipients(path: &std::path::Path, n: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "chat_id")?;
    for chat in 1..=n {
        writeln!(out, "{chat}")?;
    }
    out.flush()
}

async fn cleanup(campaigns: &Campaigns, settings: &Settings, id: &str) {
    for sql in [
        "DELETE FROM courier_campaign_recipients WHERE campaign_id = $1",
        "DELETE FROM courier_campaigns WHERE id = $1",
    ] {
        let _ = sqlx::query(sql).bind(id).execute(campaigns.pool()).await;
    }
    if let Ok(client) = crate::broker::connect(&settings.nats, "fanout-bench").await {
        let js = async_nats::jetstream::new(client);
        for stream in [settings.nats.stream.clone(), format!("{}_DEAD", settings.nats.stream)] {
            let _ = js.delete_stream(&stream).await;
        }
    }
}

/// A field of `/proc/self/status`, in KiB.
fn self_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// The report as lines.
pub fn table(report: &FanOutReport) -> String {
    let mib = |kib: Option<u64>| kib.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    format!(
        "campaign fan-out of {} recipients (CSV -> database -> stream, read back):\n  \
         import   {:.0} recipients/s\n  publish  {:.0} messages/s\n  \
         memory   {} before, {} peak\n",
        report.n,
        report.import_per_second,
        report.publish_per_second,
        mib(report.rss_before_kib),
        mib(report.rss_peak_kib),
    )
}
