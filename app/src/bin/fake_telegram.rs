//! `fake-telegram`: a fake Telegram Bot API on a port, enforcing the flood
//! limits of `telegram.limits` (the same settings the workers use) and
//! answering `429 retry_after` past them, as Telegram does. For load tests
//! and demos without a bot token: point `telegram.api_url` at it and set any
//! `telegram.token`.

use std::process::ExitCode;

use clap::Parser;
use courier::testing::fake_bot_api::FakeTelegram;
use settings::Settings;

/// A fake Telegram Bot API that enforces Telegram's flood limits.
///
/// Control routes: GET /_fake/stats (accepted, too_many, paid_accepted);
/// POST /_fake/429 {"chat_id": 5, "retry_after": 3} (no chat_id: the whole
/// bot); POST /_fake/block, /_fake/deactivate, /_fake/forget {"chat_id": 5}.
#[derive(Debug, Parser)]
#[command(name = "fake-telegram")]
struct Cli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    /// Accept everything (no flood limits).
    #[arg(long)]
    no_limits: bool,
    /// Requests and messages remembered (the oldest half is forgotten past it).
    #[arg(long, default_value_t = 100_000)]
    history: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let limits = if cli.no_limits {
        None
    } else {
        match Settings::load() {
            Ok(settings) => Some(settings.telegram.limits),
            Err(err) => {
                eprintln!("fake-telegram: {err}");
                return ExitCode::from(2);
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(&cli.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("fake-telegram: cannot listen on {}: {err}", cli.addr);
            return ExitCode::from(2);
        }
    };
    let fake = FakeTelegram::start_on(listener, limits.clone(), cli.history);
    match &limits {
        Some(l) => eprintln!(
            "fake Bot API at {} (global {}/s, private {}/s, group {}/min, paid {}/s)",
            fake.url, l.global_per_second, l.private_per_second, l.group_per_minute, l.paid_per_second
        ),
        None => eprintln!("fake Bot API at {} (no limits)", fake.url),
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("accepted {} messages; answered {} with 429", fake.accepted_count(), fake.too_many());
    ExitCode::SUCCESS
}
