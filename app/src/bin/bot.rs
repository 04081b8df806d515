//! `bot`: the Telegram bot. Long-polls `telegram.api_url`; `/report`
//! enqueues `test_di_task` for the chat, `/status <id>` answers from Redis.

use std::process::ExitCode;

use courier::{bot, shutdown, telemetry};
use settings::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).is_some() {
        eprintln!("usage: bot   (configured by settings; needs telegram.token)");
        return ExitCode::from(2);
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("bot: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    match bot::run_bot(settings, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bot: {err}");
            ExitCode::from(1)
        }
    }
}
