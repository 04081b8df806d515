//! `board`: Courier Board, the web page that shows and steers the queue.
//! Serves on `board.addr` until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier::board::{Board, BoardError};
use courier::cli::completions::Completions;
use courier::cli::{EXIT_CODES, Exit};
use courier::telemetry;
use courier::worker::shutdown;
use settings::Settings;
// Links the task plug-ins: the board lists their names and schedules.
use tasks as _;

/// Courier Board: see and steer the queue from a browser.
///
/// Listens on board.addr (default 127.0.0.1:9465). Without board.password
/// (COURIER_BOARD__PASSWORD) it starts only on a loopback address.
#[derive(Debug, Parser)]
#[command(name = "board", version, after_help = EXIT_CODES)]
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
    let cli = Cli::parse();
    if let Some(Command::Completions(completions)) = &cli.command {
        completions.print::<Cli>();
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("board: {err}");
            return Exit::Usage.into();
        }
    };
    telemetry::init(&settings.log);
    telemetry::log_settings(&settings);
    let board = match Board::connect(settings).await {
        Ok(board) => board,
        Err(err) => {
            eprintln!("board: {err}");
            return exit(&err).into();
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    match courier::board::serve(board.clone(), stop.clone()).await {
        Ok(addr) => tracing::info!(%addr, login = board.login_required(), "board ready"),
        Err(err) => {
            eprintln!("board: {err}");
            return exit(&err).into();
        }
    }
    shutdown::signal().await;
    stop.cancel();
    tracing::info!("board stopped");
    ExitCode::SUCCESS
}

fn exit(err: &BoardError) -> Exit {
    match err {
        BoardError::NoPassword(_) | BoardError::Address { .. } | BoardError::Bind { .. } | BoardError::Registry(_) => {
            Exit::Usage
        }
        BoardError::Producer(_) | BoardError::Database(_) => Exit::Unavailable,
        BoardError::Migrate(_) => Exit::Failed,
    }
}
