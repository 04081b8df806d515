//! `worker`: runs tasks until SIGINT/SIGTERM. `--check` tests the registry
//! and every component; `--list-tasks` prints the registered tasks;
//! `--print-settings` the merged settings with secrets masked.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier::cli::completions::Completions;
use courier::cli::output::{print_json, print_text};
use courier::cli::tasks as listing;
use courier::cli::{EXIT_CODES, Exit};
use courier::worker::check;
use courier::worker::{lifecycle, shutdown};
use courier::{run_worker, telemetry};
use settings::Settings;
// Links the task plug-ins; without a name the linker drops their registrations.
use tasks as _;

/// A task makes about a hundred small allocations; with glibc's allocator
/// they were a fifth of the worker's instructions (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs Courier tasks until SIGINT or SIGTERM.
///
/// Settings: settings/settings.toml (in $COURIER_SETTINGS_DIR), COURIER_ENV=<profile>,
/// COURIER_<SECTION>__<KEY>=<value>; README.md lists every key.
#[derive(Debug, Parser)]
#[command(name = "worker", version, after_help = EXIT_CODES, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Check the task registry and connect to NATS, the database, Redis and
    /// Telegram; print one line each.
    #[arg(long, group = "mode")]
    check: bool,
    /// Print the registered tasks (names, one per line; --json: with their arguments).
    #[arg(long, group = "mode")]
    list_tasks: bool,
    /// Print the merged settings as TOML, secrets masked, and the layers they came from.
    #[arg(long, group = "mode")]
    print_settings: bool,
    /// With --check, --list-tasks or --print-settings: JSON for scripts.
    #[arg(long, requires = "mode")]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a shell completion script.
    #[command(after_help = EXIT_CODES)]
    Completions(Completions),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Completions(completions)) = &cli.command {
        completions.print::<Cli>();
        return ExitCode::SUCCESS;
    }
    if cli.list_tasks {
        return list_tasks(cli.json).into();
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("worker: {err}");
            return Exit::Usage.into();
        }
    };
    if cli.print_settings {
        return print_settings(&settings, cli.json).into();
    }
    telemetry::init(&settings.log);
    telemetry::log_settings(&settings);
    if cli.check {
        let lines = check::check_all(&settings).await;
        if cli.json {
            print_json(&lines);
        } else {
            lines.iter().for_each(|line| println!("{line}"));
        }
        return check::exit(&lines).into();
    }
    match run_worker(settings, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker: {err}");
            Exit::from(&err).into()
        }
    }
}

fn list_tasks(json: bool) -> Exit {
    match lifecycle::load_registry() {
        Ok(registry) if json => {
            print_json(&listing::describe(&registry));
            Exit::Ok
        }
        Ok(registry) => {
            registry.names().iter().for_each(|name| println!("{name}"));
            Exit::Ok
        }
        Err(err) => {
            eprintln!("worker: {err}");
            Exit::Usage
        }
    }
}

fn print_settings(settings: &Settings, json: bool) -> Exit {
    if json {
        print_json(&serde_json::json!({
            "profile": settings.sources.profile,
            "files": settings.sources.files,
            "environment": settings.sources.env_keys,
            "settings": settings.masked(),
        }));
    } else {
        print_text(&format!("# layers: {}\n{}", settings.sources, settings.to_masked_toml()));
    }
    Exit::Ok
}
