//! `flood-bench`: what flood control costs per send and end to end (see
//! `courier::bench::flood`). Uses the configured NATS and Redis with names
//! of its own, and a fake Bot API in this process.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use clap::Parser;
use courier::bench::flood::{self, FloodBenchOptions};
use settings::Settings;
// Links the task plug-ins: the worker in this process runs `send_message`.
use tasks as _;

/// Measures the flood-control governor: per send and end to end.
#[derive(Debug, Parser)]
#[command(name = "flood-bench")]
struct Cli {
    /// Admissions per phase; tasks per end-to-end run.
    #[arg(long, default_value = "5000")]
    n: NonZeroUsize,
    /// End-to-end runs per mode.
    #[arg(long, default_value = "3")]
    runs: NonZeroUsize,
    /// Admissions and enqueues in flight at once.
    #[arg(long, default_value = "64")]
    in_flight: NonZeroUsize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    courier::telemetry::init_quiet();
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("flood-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let options = FloodBenchOptions { n: cli.n.get(), runs: cli.runs.get(), in_flight: cli.in_flight.get() };
    match flood::run(&settings, &options).await {
        Ok(report) if cli.json => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", flood::table(&report, &options));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("flood-bench: {err}");
            ExitCode::from(1)
        }
    }
}
