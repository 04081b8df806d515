//! The Telegram bot (the producer of the spec): long polling against
//! `telegram.api_url`; `/report` enqueues `test_di_task` for the chat,
//! `/status <task_id>` answers from the result store.
//!
//! A report's task id is derived from the update (`report-<chat>-<update>`)
//! and published with it as `Nats-Msg-Id`, so an update read twice (Telegram
//! serves an update again until a later `getUpdates` offset confirms it,
//! for example after a crash) is dropped by the broker as a duplicate
//! instead of queueing a second report. At shutdown the bot confirms what
//! it handled with one `getUpdates(offset = last + 1, timeout = 0)`, so a
//! clean restart reads nothing twice.

use std::future::Future;
use std::time::Duration;

use di::{BotApi, BotError as BotApiError, Lane, TaskStatus, TelegramBot};
use settings::Settings;
use teloxide::Bot;
use teloxide::payloads::GetUpdatesSetters;
use teloxide::prelude::Requester;
use teloxide::types::{ChatId, Message, UpdateId, UpdateKind};

use crate::broker::publish::Published;
use crate::producer::{Producer, ProducerError};

/// Why the bot could not run.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Polling Telegram needs a token.
    #[error("the bot needs telegram.token (settings/.secrets.toml or COURIER_TELEGRAM__TOKEN)")]
    NoToken,
    /// The Telegram settings are unusable.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
    /// NATS or Redis could not be reached.
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

const HELP: &str = "Commands:\n/report - prepare your report (you get a message when it is ready)\n/status <task id> - where a task is";

/// Long-poll timeout; teloxide adds it to the HTTP timeout itself.
const POLL_SECONDS: u32 = 25;

/// The longest flood-control pause a reply waits out.
const REPLY_WAIT: Duration = Duration::from_secs(3);

/// How long the confirming `getUpdates` at shutdown may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the bot until `shutdown` resolves.
pub async fn run_bot(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), BotError> {
    if settings.telegram.token.is_none() {
        return Err(BotError::NoToken);
    }
    // getMe first: an unreachable server, a refused token and an answer that
    // is not the Bot API's are told apart (and exit differently).
    let (telegram, _) = di::verify_telegram(&settings.telegram).await?;
    let bot = telegram.teloxide().cloned().ok_or(BotError::NoToken)?;
    // Replies share the bot's flood-control budget with the workers, in the
    // interactive lane.
    let telegram = match di::governor::connect(&telegram, &settings).await? {
        Some(governor) => telegram.with_governor(governor),
        None => telegram,
    };
    let producer = Producer::connect(&settings).await?;
    tracing::info!(api_url = %settings.telegram.api_url, "bot ready: polling for updates");
    tokio::pin!(shutdown);
    let mut offset: i32 = 0;
    let mut backoff = Duration::from_millis(500);
    loop {
        let poll = bot.get_updates().offset(offset).timeout(POLL_SECONDS);
        let updates = tokio::select! {
            updates = poll => updates,
            () = &mut shutdown => break,
        };
        let updates = match updates {
            Ok(updates) => {
                backoff = Duration::from_millis(500);
                updates
            }
            Err(err) => {
                tracing::warn!(%err, retry_in = %crate::telemetry::human(backoff), "getUpdates failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        for update in updates {
            offset = offset.max(i32::try_from(update.id.0).unwrap_or(i32::MAX).saturating_add(1));
            if let UpdateKind::Message(message) = update.kind {
                handle_message(&telegram, &producer, update.id, &message).await;
            }
        }
    }
    // The last poll may never have reached Telegram (or was cut off while
    // waiting): say once more, and wait for nothing, what was handled.
    if offset > 0 {
        confirm(&bot, offset).await;
    }
    tracing::info!("bot stopped");
    Ok(())
}

/// Tells Telegram that every update below `offset` was handled, so none is
/// served again after a restart: a getUpdates that waits for nothing.
async fn confirm(bot: &Bot, offset: i32) {
    let request = bot.get_updates().offset(offset).timeout(0).limit(1);
    match tokio::time::timeout(CONFIRM_TIMEOUT, request).await {
        Ok(Ok(_)) => tracing::info!(offset, "confirmed the updates handled"),
        Ok(Err(err)) => tracing::warn!(offset, %err, "could not confirm the updates handled; they may be read again"),
        Err(_) => tracing::warn!(offset, "confirming the updates handled timed out; they may be read again"),
    }
}

/// Answers one message; every failure becomes a reply or a log line.
async fn handle_message(telegram: &TelegramBot, producer: &Producer, update: UpdateId, message: &Message) {
    let chat = message.chat.id;
    let text = message.text().unwrap_or("").trim();
    let (command, argument) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    // Commands may be addressed as /report@SomeBot.
    let command = command.split('@').next().unwrap_or(command);
    let reply = match command {
        "/report" => match report(producer, chat, update).await {
            Some(reply) => reply,
            None => return,
        },
        "/status" => status(producer, argument.trim()).await,
        "/start" | "/help" => HELP.to_owned(),
        _ => format!("I don't know that one.\n{HELP}"),
    };
    let mut sent = telegram.send_message_in(Lane::Interactive, chat.0, &reply).await;
    // A short pause for the budget (or a 429) is waited out once; a reply
    // that would wait longer is dropped with a log line.
    if let Err(BotApiError::Throttled { retry_after } | BotApiError::RateLimited { retry_after }) = sent
        && retry_after <= REPLY_WAIT
    {
        tokio::time::sleep(retry_after).await;
        sent = telegram.send_message_in(Lane::Interactive, chat.0, &reply).await;
    }
    if let Err(err) = sent {
        tracing::warn!(chat_id = chat.0, %err, "reply not sent");
    }
}

/// The task id of the report asked for in `update`: the same every time
/// the update is read. Chat ids are integers and update ids unsigned, so it
/// stays within the ASCII letters, digits and `-` of a valid task id, and
/// within 48 bytes.
pub fn report_task_id(chat: ChatId, update: UpdateId) -> String {
    format!("report-{}-{}", chat.0, update.0)
}

/// Enqueues the report; `None` when this update was already enqueued (read
/// again): the first reading replied.
async fn report(producer: &Producer, chat: ChatId, update: UpdateId) -> Option<String> {
    let task = tasks::test_di_task::TASK;
    let task_id = report_task_id(chat, update);
    let enqueued = match task.envelope_with_id(task_id.clone(), &tasks::test_di_task::Args { chat_id: chat.0 }) {
        // The bot's own tasks answer a user who is waiting: the interactive lane.
        Ok(envelope) => producer.enqueue_envelope(&envelope, Some(di::Lane::Interactive)).await,
        Err(err) => Err(ProducerError::from(err)),
    };
    Some(match enqueued {
        Ok(Published::Duplicate) => {
            tracing::info!(chat_id = chat.0, task.id = %task_id, "update read again: the report is already queued");
            return None;
        }
        Ok(Published::Stored) => {
            tracing::info!(chat_id = chat.0, task.id = %task_id, "report queued");
            format!("Your report is queued: task {task_id}\nI'll message you when it is ready.")
        }
        Err(err) => {
            tracing::error!(chat_id = chat.0, %err, "could not enqueue the report");
            "Sorry, I could not queue your report right now. Please try again in a minute.".to_owned()
        }
    })
}

async fn status(producer: &Producer, task_id: &str) -> String {
    let valid = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !valid {
        return "Usage: /status <task id>, with the id I gave you when you asked for a report.".to_owned();
    }
    match producer.result(task_id).await {
        Ok(Some(record)) => match record.status {
            TaskStatus::Success => format!("Task {task_id}: done."),
            TaskStatus::Failed => format!(
                "Task {task_id}: failed ({}).",
                record.error.map(|e| e.exc_type).unwrap_or_else(|| "unknown error".to_owned())
            ),
            TaskStatus::Retrying => format!("Task {task_id}: failed on attempt {}, will retry.", record.attempt),
            TaskStatus::Running => format!("Task {task_id}: running (attempt {}).", record.attempt),
            TaskStatus::Queued => format!("Task {task_id}: queued."),
            TaskStatus::Scheduled => format!("Task {task_id}: scheduled."),
            TaskStatus::Cancelled => format!("Task {task_id}: cancelled."),
        },
        Ok(None) => format!("I know no task {task_id} (or its record has expired)."),
        Err(err) => {
            tracing::warn!(%err, "status lookup failed");
            "Sorry, I cannot look that up right now.".to_owned()
        }
    }
}
