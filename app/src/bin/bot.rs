//! `bot`: the Telegram bot. Long-polls `telegram.api_url`; `/report`
//! enqueues `test_di_task` for the chat, `/status <id>` answers from Redis.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier::cli::completions::Completions;
use courier::cli::{EXIT_CODES, Exit};
use courier::worker::shutdown;
use courier::{bot, telemetry};
use settings::Settings;

/// The Telegram bot: long-polls the Bot API until SIGINT or SIGTERM.
///
/// /report enqueues test_di_task for the chat; /status <task id> answers from
/// the result store. Needs telegram.token (COURIER_TELEGRAM__TOKEN or
/// settings/.secrets.toml); other settings as for the worker (README.md).
#[derive(Debug, Parser)]
#[command(name = "bot", version, after_help = EXIT_CODES)]
struct Cli {
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
    if let Some(Command::Completions(completions)) = Cli::parse().command {
        completions.print::<Cli>();
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("bot: {err}");
            return Exit::Usage.into();
        }
    };
    telemetry::init(&settings.log);
    telemetry::log_settings(&settings);
    match bot::run_bot(settings, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bot: {err}");
            Exit::from(&err).into()
        }
    }
}
