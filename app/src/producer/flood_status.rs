//! `producer governor`: the bot's shared flood-control state as people or
//! scripts read it: the limits, what each lane sends now, the backlog,
//! frozen chats and the paid lane's Stars.

use std::fmt::Write as _;

use di::{FrozenKey, GovernorStatus, TelegramBot};
use settings::{PaidWhenSpent, Settings, TelegramLimits};

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FloodStatusError {
    /// Telegram (`getMe`, for the bot's id) or Redis failed.
    #[error(transparent)]
    Unreachable(#[from] di::StartupError),
    /// No token: a log-only bot has no flood control.
    #[error("no flood control: no telegram.token (a log-only bot sends nothing), or telegram.limits.enforce = false")]
    NoBot,
    /// Redis answered with an error or not at all.
    #[error(transparent)]
    Store(#[from] di::governor::GovernorError),
}

/// Reads the state of the bot in `settings` (its id from `getMe`).
pub async fn read(settings: &Settings) -> Result<(i64, GovernorStatus), FloodStatusError> {
    let (bot, _) = TelegramBot::verify(&settings.telegram).await?;
    let governor = di::governor::connect(&bot, settings).await?.ok_or(FloodStatusError::NoBot)?;
    let bot_id = bot.bot_id().await.ok().flatten().unwrap_or_default();
    Ok((bot_id, governor.status().await?))
}

/// The state as lines for a terminal.
pub fn render(bot_id: i64, limits: &TelegramLimits, status: &GovernorStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bot {bot_id}: global {}/s (burst {}), private chat {}/s (burst {}), group {}/min (burst {}), paid {}/s",
        limits.global_per_second,
        limits.global_burst,
        limits.private_per_second,
        limits.private_burst,
        limits.group_per_minute,
        limits.group_burst,
        limits.paid_per_second
    );
    let rates: Vec<String> = status.rates.iter().map(|(lane, rate)| format!("{} {rate:.1}/s", lane.name())).collect();
    let _ = writeln!(out, "sending (last 5 s): {}", rates.join(", "));
    let _ = writeln!(out, "global backlog: {} ms", status.global_backlog.as_millis());
    let when_spent = match limits.paid_when_spent {
        PaidWhenSpent::Free => "then the free rate",
        PaidWhenSpent::Pause => "then paused until 00:00 UTC",
    };
    let _ =
        writeln!(out, "paid: {:.1} of {} Stars spent today ({when_spent})", status.stars_today, status.stars_budget);
    let _ = writeln!(out, "frozen by 429: {}", status.frozen_count);
    for (key, left) in &status.frozen {
        let _ = writeln!(out, "  {:<22} {:.1} s left", key_name(*key), left.as_secs_f64());
    }
    out
}

/// The state as one JSON object.
pub fn json(bot_id: i64, limits: &TelegramLimits, status: &GovernorStatus) -> serde_json::Value {
    let rates: serde_json::Map<String, serde_json::Value> =
        status.rates.iter().map(|(lane, rate)| (lane.name().to_owned(), (*rate).into())).collect();
    let frozen: Vec<serde_json::Value> = status
        .frozen
        .iter()
        .map(|(key, left)| serde_json::json!({"key": key_name(*key), "seconds_left": left.as_secs_f64()}))
        .collect();
    serde_json::json!({
        "bot_id": bot_id,
        "limits": {
            "global_per_second": limits.global_per_second,
            "private_per_second": limits.private_per_second,
            "group_per_minute": limits.group_per_minute,
            "paid_per_second": limits.paid_per_second,
        },
        "rates": rates,
        "global_backlog_ms": status.global_backlog.as_millis() as u64,
        "paid_stars_today": status.stars_today,
        "paid_stars_budget": status.stars_budget,
        "frozen_count": status.frozen_count,
        "frozen": frozen,
    })
}

fn key_name(key: FrozenKey) -> String {
    match key {
        FrozenKey::Bot => "bot (every chat)".to_owned(),
        FrozenKey::Chat(chat) => format!("chat {chat}"),
    }
}
