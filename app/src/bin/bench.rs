//! `bench`: Courier end to end against a running worker, every result read
//! back and checked, beside the raw pipelines on the same services (see
//! `courier::bench`). Not part of the production binaries.

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use courier::bench::{self, BenchError, BenchOptions, report};
use courier::cli::Exit;
use courier::cli::output::{print_json, print_text};
use settings::Settings;

const EXIT: &str = "Exit codes:
  0  every result was read back and was the expected one
  1  a task failed, returned something else or never finished (counted apart
     in the report, which still prints), or no worker answered
  2  usage or configuration: a bad flag or setting
  3  a component is unavailable: NATS, Redis or the database";

/// Measures Courier against a running worker: enqueue rate, end-to-end
/// throughput (noop, and SELECT 1 through the injected database) and
/// round-trip latency, after a warm-up, with every result read back and
/// checked; --ceiling also measures the bare primitives and the raw
/// pipelines each Courier figure is compared with.
///
/// Settings come from the usual layers (COURIER_* variables, settings
/// files); run it with the worker's. `scripts/bench.sh` starts a worker and
/// runs it as BENCHMARKS.md reports.
#[derive(Debug, Parser)]
#[command(name = "bench", version, after_help = EXIT)]
struct Cli {
    /// Tasks per throughput phase (and messages per raw pipeline).
    #[arg(long, default_value = "10000")]
    n: NonZeroUsize,
    /// Sequential round trips for the latency phase.
    #[arg(long, default_value = "1000")]
    round_trips: NonZeroUsize,
    /// Repetitions of the whole suite (figures are medians).
    #[arg(long, default_value = "1")]
    runs: NonZeroUsize,
    /// Enqueues (and raw publishes) in flight at once.
    #[arg(long, default_value = "64")]
    in_flight: NonZeroUsize,
    /// Tasks of each kind run, read back and checked before timing.
    #[arg(long, default_value = "1000")]
    warmup: NonZeroUsize,
    /// Seconds a batch may go without a new result before the rest count as missing.
    #[arg(long, default_value = "30")]
    stall_timeout: NonZeroUsize,
    /// Also measure the bare primitives and the raw pipelines.
    #[arg(long)]
    ceiling: bool,
    /// The worker's process id, to report its memory.
    #[arg(long)]
    worker_pid: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only enqueue N noop tasks and exit, without waiting for results (no
    /// worker needed): a pre-filled queue for a worker started afterwards,
    /// as scripts/profile.sh does.
    #[arg(long, conflicts_with = "drain")]
    prefill: bool,
    /// Enqueue N noop tasks, say "queued" on stderr, then wait for a worker
    /// started afterwards to run them all; every record is read back and
    /// checked, and the drain is timed by the records (first start to last
    /// finish), as scripts/peers.sh compares with BullMQ. Prints JSON.
    #[arg(long)]
    drain: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    courier::telemetry::init_quiet();
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("bench: {err}");
            return Exit::Usage.into();
        }
    };
    if cli.prefill {
        return match bench::prefill(&settings, cli.n.get(), cli.in_flight.get()).await {
            Ok(took) => {
                eprintln!("bench: enqueued {} noop tasks in {}", cli.n, courier::telemetry::human(took));
                Exit::Ok.into()
            }
            Err(err) => {
                eprintln!("bench: {err}");
                exit_of(&err).into()
            }
        };
    }
    if cli.drain {
        let stall = Duration::from_secs(cli.stall_timeout.get() as u64);
        let queued = || eprintln!("bench: queued {} noop tasks; start the worker", cli.n);
        return match bench::drain(&settings, cli.n.get(), cli.in_flight.get(), stall, queued).await {
            Ok(drained) => {
                print_json(&drained);
                if drained.checked.clean() {
                    Exit::Ok.into()
                } else {
                    eprintln!("bench: not every result was the expected one: {}", drained.checked);
                    Exit::Failed.into()
                }
            }
            Err(err) => {
                eprintln!("bench: {err}");
                exit_of(&err).into()
            }
        };
    }
    let options = BenchOptions {
        n: cli.n.get(),
        round_trips: cli.round_trips.get(),
        in_flight: cli.in_flight.get(),
        runs: cli.runs.get(),
        warmup: cli.warmup.get(),
        stall: Duration::from_secs(cli.stall_timeout.get() as u64),
        ceiling: cli.ceiling,
        worker_pid: cli.worker_pid,
    };
    let report = match bench::run(&settings, &options).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("bench: {err}");
            return exit_of(&err).into();
        }
    };
    if cli.json {
        print_json(&report);
    } else {
        print_text(&report::table(&report));
    }
    if report.clean() {
        return Exit::Ok.into();
    }
    let total = &report.total;
    eprintln!(
        "bench: not every result was the expected one ({} failed, {} wrong, {} missing); \
         the phase that had them is left out of the figures",
        total.failed, total.wrong, total.missing
    );
    Exit::Failed.into()
}

fn exit_of(err: &BenchError) -> Exit {
    match err {
        BenchError::Producer(err) => err.into(),
        BenchError::Raw(_) => Exit::Unavailable,
        BenchError::NoWorker(_) => Exit::Failed,
    }
}
