//! `worker`: runs tasks until SIGINT/SIGTERM. `--check` tests every
//! component and exits; `--list-tasks` prints the registered task names.

use std::process::ExitCode;

use courier::{check, lifecycle, run_worker, shutdown, telemetry};
// Links the task plug-ins; without a name the linker drops their registrations.
use settings::Settings;
use tasks as _;

const USAGE: &str = "usage: worker [--check | --list-tasks | --help]

  (no flag)     run tasks until SIGINT or SIGTERM
  --check       connect to NATS, the database, Redis and Telegram; one line each;
                exit 0 if all are reachable, 1 otherwise
  --list-tasks  print the registered task names, one per line

Settings: settings/settings.toml, COURIER_ENV=<profile>, COURIER_<SECTION>__<KEY>=<value>.
Exit codes: 0 ok, 1 a component is unreachable, 2 bad settings or usage.";

enum Mode {
    Run,
    Check,
    ListTasks,
}

#[tokio::main]
async fn main() -> ExitCode {
    let mode = match std::env::args().nth(1).as_deref() {
        None => Mode::Run,
        Some("--check") => Mode::Check,
        Some("--list-tasks") => Mode::ListTasks,
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("worker: unknown argument {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Mode::ListTasks = mode {
        return match lifecycle::load_registry() {
            Ok(registry) => {
                for name in registry.names() {
                    println!("{name}");
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("worker: {err}");
                ExitCode::from(2)
            }
        };
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("worker: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    match mode {
        Mode::Check => {
            let lines = check::check_all(&settings).await;
            for line in &lines {
                println!("{line}");
            }
            if lines.iter().all(|line| line.outcome.is_ok()) { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Mode::Run | Mode::ListTasks => match run_worker(settings, shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(%err, "worker failed to start");
                eprintln!("worker: {err}");
                ExitCode::from(1)
            }
        },
    }
}
