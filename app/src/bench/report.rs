//! What `bench` measured: the phases, their samples per run, the checks of
//! every result, and the report as a table or JSON. "% of raw pipeline" is
//! computed only between a Courier phase and the raw pipeline that does the
//! same work with the same message count and the same in-flight limits, per
//! run (both measured minutes apart on the same services), then the median
//! of those ratios.

use serde::Serialize;

use super::readback::Checked;
use super::{median, percentile};

/// A measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Courier: `Producer::enqueue` of `noop` (the `queued` record, the
    /// publish and its ack).
    Enqueue,
    /// Courier: `noop` from the first enqueue until every result is read
    /// back and checked.
    EndToEndNoop,
    /// Courier: the same with `select_one` (`SELECT 1` through the injected `Db`).
    EndToEndSelect,
    /// Bare JetStream publish with ack.
    RawPublish,
    /// Bare pull with double ack.
    RawPull,
    /// Bare Redis `SET EX`, pipelined.
    RawSet,
    /// The raw pipeline of `noop`'s work.
    RawPipelineNoop,
    /// The raw pipeline of `select_one`'s work.
    RawPipelineSelect,
}

impl Phase {
    /// Its name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue (queued record, publish with ack), noop",
            Self::EndToEndNoop => "end to end, noop",
            Self::EndToEndSelect => "end to end, DI SELECT 1",
            Self::RawPublish => "raw: JetStream publish with ack",
            Self::RawPull => "raw: pull with double ack",
            Self::RawSet => "raw: Redis SET EX, pipelined by 100",
            Self::RawPipelineNoop => "raw pipeline, noop's work",
            Self::RawPipelineSelect => "raw pipeline, SELECT 1's work",
        }
    }

    /// The raw pipeline doing the same work, if there is one.
    pub fn raw_counterpart(self) -> Option<Phase> {
        match self {
            Self::EndToEndNoop => Some(Self::RawPipelineNoop),
            Self::EndToEndSelect => Some(Self::RawPipelineSelect),
            _ => None,
        }
    }

    /// What is kept in flight, given the bench's enqueue window and the
    /// worker's concurrency.
    fn in_flight(self, enqueues: usize, concurrency: usize) -> String {
        match self {
            Self::Enqueue => format!("{enqueues} enqueues"),
            Self::EndToEndNoop | Self::EndToEndSelect => {
                format!("{enqueues} enqueues, {concurrency} tasks (worker.concurrency)")
            }
            Self::RawPublish | Self::RawPull => "256".to_owned(),
            Self::RawSet => "100 per round trip".to_owned(),
            Self::RawPipelineNoop | Self::RawPipelineSelect => format!("{enqueues} publishes, {concurrency} messages"),
        }
    }
}

/// One measured figure: the median of the runs, and their range.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub phase: String,
    /// Tasks or messages per run.
    pub n: usize,
    /// What was kept in flight.
    pub in_flight: String,
    /// Runs that produced this figure.
    pub runs: usize,
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
    /// The raw pipeline this figure is compared with (same N, same in-flight, same work).
    pub compared_with: Option<String>,
    /// The median over runs of this run's rate / that run's raw pipeline rate, in percent.
    pub of_raw_pipeline: Option<f64>,
    /// The lowest and highest of those per-run percentages.
    pub of_raw_pipeline_range: Option<(f64, f64)>,
}

/// The checks of one phase's results, summed over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseChecks {
    /// The phase (warm-up phases included).
    pub phase: String,
    /// Its results.
    pub checked: Checked,
}

/// Everything one `bench` printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// Every result read back, by phase.
    pub checks: Vec<PhaseChecks>,
    /// All phases' checks together.
    pub total: Checked,
    /// Why the runs stopped early: a phase whose results were not all the
    /// expected ones (its rate is left out of the figures).
    pub stopped: Option<String>,
    /// Runs completed.
    pub runs_completed: usize,
    /// The worker's resident memory before the runs, KiB.
    pub worker_rss_at_rest_kib: Option<u64>,
    /// The worker's peak resident memory after the runs, KiB.
    pub worker_rss_peak_kib: Option<u64>,
}

impl Report {
    /// Whether every result of every phase was read back and correct.
    pub fn clean(&self) -> bool {
        self.total.clean() && self.stopped.is_none()
    }
}

/// What the runs collected, before it becomes a [`Report`].
#[derive(Debug, Default)]
pub struct Samples {
    /// (run, phase, n, rate per second).
    rates: Vec<(usize, Phase, usize, f64)>,
    /// Round-trip latencies, milliseconds, all runs.
    latencies: Vec<f64>,
    checks: Vec<PhaseChecks>,
    /// Set by [`Samples::stop`].
    pub stopped: Option<String>,
    /// Runs completed.
    pub runs_completed: usize,
}

impl Samples {
    /// One run's rate of `phase`.
    pub fn rate(&mut self, run: usize, phase: Phase, n: usize, rate: f64) {
        self.rates.push((run, phase, n, rate));
    }

    /// Round-trip latencies.
    pub fn latencies(&mut self, latencies: Vec<f64>) {
        self.latencies.extend(latencies);
    }

    /// Adds `checked` to `phase`'s checks; false (and the run stops, with
    /// the reason kept) unless every result was the expected one.
    pub fn check(&mut self, run: usize, phase: &str, checked: Checked) -> bool {
        match self.checks.iter_mut().find(|c| c.phase == phase) {
            Some(entry) => entry.checked.add(checked),
            None => self.checks.push(PhaseChecks { phase: phase.to_owned(), checked }),
        }
        if !checked.clean() {
            let when = if run == 0 { "warm-up".to_owned() } else { format!("run {run}") };
            self.stopped = Some(format!("{when}, {phase}: {checked}"));
        }
        checked.clean()
    }

    /// The report: medians and ranges per phase, the paired comparisons.
    pub fn summarise(self, enqueues: usize, concurrency: usize, round_trips: usize) -> Report {
        let mut figures: Vec<Figure> = Vec::new();
        let mut phases: Vec<(Phase, usize)> = Vec::new();
        for (_, phase, n, _) in &self.rates {
            if !phases.iter().any(|(p, _)| p == phase) {
                phases.push((*phase, *n));
            }
        }
        for (phase, n) in phases {
            let rates = sorted(self.rates.iter().filter(|r| r.1 == phase).map(|r| r.3));
            let ratios = phase.raw_counterpart().map(|raw| {
                sorted(self.rates.iter().filter(|r| r.1 == phase).filter_map(|(run, _, _, rate)| {
                    let raw_rate = self.rates.iter().find(|r| r.0 == *run && r.1 == raw)?.3;
                    Some(100.0 * rate / raw_rate)
                }))
            });
            let ratios = ratios.filter(|r| !r.is_empty());
            figures.push(Figure {
                phase: phase.label().to_owned(),
                n,
                in_flight: phase.in_flight(enqueues, concurrency),
                runs: rates.len(),
                per_second: Some(median(&rates)),
                per_second_range: Some((rates[0], rates[rates.len() - 1])),
                p50_ms: None,
                p99_ms: None,
                max_ms: None,
                compared_with: ratios.as_ref().and(phase.raw_counterpart()).map(|raw| raw.label().to_owned()),
                of_raw_pipeline: ratios.as_deref().map(median),
                of_raw_pipeline_range: ratios.as_deref().map(|r| (r[0], r[r.len() - 1])),
            });
        }
        let latencies = sorted(self.latencies.into_iter());
        if !latencies.is_empty() {
            figures.push(Figure {
                phase: "round trip, noop (enqueue -> result read)".into(),
                n: round_trips,
                in_flight: "1".into(),
                runs: latencies.len() / round_trips.max(1),
                per_second: None,
                per_second_range: None,
                p50_ms: Some(percentile(&latencies, 0.50)),
                p99_ms: Some(percentile(&latencies, 0.99)),
                max_ms: latencies.last().copied(),
                compared_with: None,
                of_raw_pipeline: None,
                of_raw_pipeline_range: None,
            });
        }
        let mut total = Checked::default();
        self.checks.iter().for_each(|c| total.add(c.checked));
        Report {
            figures,
            checks: self.checks,
            total,
            stopped: self.stopped,
            runs_completed: self.runs_completed,
            worker_rss_at_rest_kib: None,
            worker_rss_peak_kib: None,
        }
    }
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}

/// The report as a Markdown table, the checks, and what was compared.
pub fn table(report: &Report) -> String {
    let mut out = String::from(
        "| phase | N | in flight | runs | per second (median) | range | p50 ms | p99 ms | max ms | % of raw pipeline (range) |\n\
         |---|---:|---|---:|---:|---|---:|---:|---:|---|\n",
    );
    let num = |v: Option<f64>, digits: usize| v.map_or_else(String::new, |v| format!("{v:.digits$}"));
    for f in &report.figures {
        let range = f.per_second_range.map_or_else(String::new, |(lo, hi)| format!("{lo:.0}-{hi:.0}"));
        let of_raw = match (f.of_raw_pipeline, f.of_raw_pipeline_range) {
            (Some(median), Some((lo, hi))) => format!("{median:.0} % ({lo:.0}-{hi:.0})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.phase,
            f.n,
            f.in_flight,
            f.runs,
            num(f.per_second, 0),
            range,
            num(f.p50_ms, 2),
            num(f.p99_ms, 2),
            num(f.max_ms, 2),
            of_raw
        ));
    }
    for f in report.figures.iter().filter(|f| f.compared_with.is_some()) {
        out.push_str(&format!(
            "\n{} is compared with \"{}\" of the same run: same N, same in flight, same work.",
            f.phase,
            f.compared_with.as_deref().unwrap_or_default()
        ));
    }
    out.push_str("\n\nresults read back and checked:\n");
    for c in &report.checks {
        out.push_str(&format!("  {}: {}\n", c.phase, c.checked));
    }
    out.push_str(&format!("  all: {}\n", report.total));
    if let Some(stopped) = &report.stopped {
        out.push_str(&format!("STOPPED after {} complete runs: {stopped}\n", report.runs_completed));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_compared_only_with_its_own_raw_pipeline_run_by_run() {
        let mut samples = Samples::default();
        for (run, courier, raw) in [(1, 80.0, 100.0), (2, 90.0, 200.0), (3, 70.0, 100.0)] {
            samples.rate(run, Phase::Enqueue, 10, 500.0);
            samples.rate(run, Phase::EndToEndNoop, 10, courier);
            samples.rate(run, Phase::RawPipelineNoop, 10, raw);
        }
        // A DI run without its raw pipeline gets no percentage.
        samples.rate(1, Phase::EndToEndSelect, 10, 50.0);
        let report = samples.summarise(64, 32, 0);
        let figure = |phase: Phase| report.figures.iter().find(|f| f.phase == phase.label()).unwrap();
        let noop = figure(Phase::EndToEndNoop);
        assert_eq!(noop.of_raw_pipeline, Some(70.0));
        assert_eq!(noop.of_raw_pipeline_range, Some((45.0, 80.0)));
        assert_eq!(noop.compared_with.as_deref(), Some(Phase::RawPipelineNoop.label()));
        assert_eq!(figure(Phase::Enqueue).of_raw_pipeline, None);
        assert_eq!(figure(Phase::EndToEndSelect).of_raw_pipeline, None);
        assert_eq!(figure(Phase::RawPipelineNoop).of_raw_pipeline, None);
    }

    #[test]
    fn a_phase_with_a_failed_or_missing_result_stops_the_runs() {
        let mut samples = Samples::default();
        assert!(samples.check(1, "end to end, noop", Checked { ok: 10, ..Checked::default() }));
        assert!(!samples.check(2, "end to end, noop", Checked { ok: 7, failed: 1, wrong: 0, missing: 2 }));
        let report = samples.summarise(64, 32, 0);
        assert!(!report.clean());
        assert_eq!(report.total, Checked { ok: 17, failed: 1, wrong: 0, missing: 2 });
        assert!(report.stopped.as_deref().is_some_and(|s| s.starts_with("run 2, end to end, noop")));
    }
}
