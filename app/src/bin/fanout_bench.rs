//! `fanout-bench`: a campaign fan-out of N recipients, with its rates and
//! this process's peak memory (see `courier::bench::fan_out`).

use std::process::ExitCode;

use clap::Parser;
use courier::bench::fan_out;
use settings::Settings;
// Links the task plug-ins: the campaign's task must be registered.
use tasks as _;

/// Measures a campaign fan-out: import, publish, memory.
#[derive(Debug, Parser)]
#[command(name = "fanout-bench")]
struct Cli {
    /// Recipients.
    #[arg(long, default_value = "1000000")]
    n: u64,
    /// Print JSON instead of lines.
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
            eprintln!("fanout-bench: {err}");
            return ExitCode::from(2);
        }
    };
    match fan_out::run(&settings, cli.n).await {
        Ok(report) if cli.json => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", fan_out::table(&report));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fanout-bench: {err}");
            ExitCode::from(1)
        }
    }
}
