//! The worker's side of campaigns: before a campaign message runs, the
//! [`CampaignGate`] looks at its campaign (a paused one parks it, a
//! cancelled one drops it); after it ends for good, its outcome is written
//! to its recipient row, a dead chat's follow-up task is enqueued, and a
//! campaign with nothing outstanding is marked done.
//!
//! Messages are recognised by their `Courier-Campaign` and
//! `Courier-Recipient` headers, and must be their row's live copy: the
//! `Nats-Msg-Id` `<campaign>:<chat>~g<generation>` of the row. An older
//! copy of the row's message (from before a pause) is dropped; headers that
//! match no row's message change nothing: the message runs as any other.

use di::{ChatGone, Execution, TaskStatus};
use sqlx::{AnyPool, Row};

use super::{CAMPAIGN_HEADER, CAMPAIGN_LABEL, RECIPIENT_HEADER, RECIPIENT_LABEL, store};
use crate::broker::publish::Publisher;

/// What to do with a campaign message before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Run,
    /// The campaign is paused: its row is `pending` again; acknowledge the
    /// message (a resume publishes the recipient again).
    Parked,
    /// A stale copy of a recipient's message: acknowledge, do not run.
    Dropped,
    /// The campaign or the recipient is cancelled: acknowledge, do not run,
    /// and give the task (its id and name) a final `cancelled` record.
    Cancelled {
        /// The recipient's task id.
        task_id: String,
        /// The campaign's task.
        task_name: String,
    },
}

/// The worker's campaign bookkeeping, over the application database.
#[derive(Debug, Clone)]
pub struct CampaignGate {
    pool: AnyPool,
    publisher: Publisher,
}

/// Longest failure reason kept in a recipient row.
const MAX_REASON: usize = 500;

impl CampaignGate {
    /// A gate over `pool` (the campaign tables must exist) that enqueues
    /// follow-up tasks through `publisher`.
    pub fn new(pool: AnyPool, publisher: Publisher) -> Self {
        Self { pool, publisher }
    }

    /// The campaign, recipient and message id a message's headers name, if any.
    pub fn recipient_of(headers: Option<&async_nats::HeaderMap>) -> Option<(String, i64, String)> {
        let headers = headers?;
        let campaign = headers.get(CAMPAIGN_HEADER)?.as_str().to_owned();
        let seq = headers.get(RECIPIENT_HEADER)?.as_str().parse().ok()?;
        // A retry postponed through the delayed stream was moved under a
        // message id of its own; the one the campaign gave it travels along.
        let message_id =
            headers.get(crate::schedule::ORIGIN_ID_HEADER).or_else(|| headers.get("Nats-Msg-Id"))?.as_str().to_owned();
        Some((campaign, seq, message_id))
    }

    /// Whether `execution` is a campaign recipient's task whose outcome
    /// [`CampaignGate::record`] writes (a final record with campaign labels).
    pub fn concerns(execution: &Execution) -> bool {
        execution.record.as_ref().is_some_and(|r| r.status.is_final() && r.labels.contains_key(CAMPAIGN_LABEL))
    }

    /// Decides about one campaign message. Reads the database every time
    /// (one indexed lookup): a pause holds from the next message on.
    pub async fn check(&self, campaign: &str, seq: i64, message_id: &str) -> Result<Verdict, sqlx::Error> {
        let row = sqlx::query(
            "SELECT r.status AS recipient, r.chat_id, r.generation, c.status AS campaign, c.task_name \
             FROM courier_campaign_recipients r JOIN courier_campaigns c ON c.id = r.campaign_id \
             WHERE r.campaign_id = $1 AND r.seq = $2",
        )
        .bind(campaign)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(Verdict::Run) };
        let recipient: String = row.try_get("recipient")?;
        let status: String = row.try_get("campaign")?;
        let generation: i64 = row.try_get("generation")?;
        let task_id = super::task_id(campaign, row.try_get("chat_id")?);
        if message_id != super::message_id(&task_id, generation) {
            // An older copy of this row's message is dropped; anything else
            // only borrowed the headers and runs as any task.
            let stale = message_id.strip_prefix(&task_id).is_some_and(|rest| rest.starts_with("~g"));
            return Ok(if stale { Verdict::Dropped } else { Verdict::Run });
        }
        Ok(match (recipient.as_str(), status.as_str()) {
            // Not reached when it was cancelled: its task ends `cancelled`.
            ("cancelled" | "pending" | "queued" | "parked", "cancelled") | ("cancelled", _) => {
                Verdict::Cancelled { task_id, task_name: row.try_get("task_name")? }
            }
            // Reached (sent, a dead chat, failed): a late copy, its outcome stands.
            (_, "cancelled") => Verdict::Dropped,
            ("queued", "paused") => {
                // Only while still paused: a resume that raced this must not
                // lose the recipient.
                let parked = sqlx::query(
                    "UPDATE courier_campaign_recipients SET status = 'parked', updated_at = $4 \
                     WHERE campaign_id = $1 AND seq = $2 AND status = 'queued' AND generation = $3 AND EXISTS (\
                       SELECT 1 FROM courier_campaigns WHERE id = $1 AND status = 'paused')",
                )
                .bind(campaign)
                .bind(seq)
                .bind(generation)
                .bind(store::now())
                .execute(&self.pool)
                .await?
                .rows_affected();
                if parked == 1 { Verdict::Parked } else { Verdict::Run }
            }
            // Sent, a dead chat, failed: this copy came late (a republished
            // page after the duplicate window); the outcome stands.
            ("queued", _) => Verdict::Run,
            _ => Verdict::Dropped,
        })
    }

    /// Writes a finished campaign task's outcome to its recipient row (a
    /// record that is not final, or not a campaign's, changes nothing).
    /// Returns whether the chat is gone for the bot: an expected outcome of
    /// a broadcast, which the campaign records instead of a dead letter.
    pub async fn record(&self, execution: &Execution) -> Result<bool, sqlx::Error> {
        let Some(record) = &execution.record else { return Ok(false) };
        if !record.status.is_final() {
            return Ok(false);
        }
        let label = |key: &str| record.labels.get(key).and_then(rmpv::Value::as_str).map(str::to_owned);
        let (Some(campaign), Some(seq)) = (label(CAMPAIGN_LABEL), label(RECIPIENT_LABEL)) else { return Ok(false) };
        let Ok(seq) = seq.parse::<i64>() else { return Ok(false) };
        // Only the recipient's own task (`<campaign>:<chat>`) writes its row.
        let chat_id = execution
            .task_id
            .as_deref()
            .and_then(|id| id.strip_prefix(campaign.as_str()))
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|chat| chat.parse::<i64>().ok());
        let Some(chat_id) = chat_id else { return Ok(false) };
        let (status, message_id, reason, gone) = match record.status {
            TaskStatus::Success => {
                let message_id = record.return_value.as_map().and_then(|fields| {
                    fields.iter().find(|(k, _)| k.as_str() == Some("message_id")).and_then(|(_, v)| v.as_i64())
                });
                ("sent", message_id, None, None)
            }
            TaskStatus::Cancelled => ("cancelled", None, None, None),
            _ => {
                let error = record.error.as_ref();
                let text = error.map(|e| format!("{}: {}", e.exc_type, e.message())).unwrap_or_default();
                let gone = error.and_then(|e| ChatGone::in_message(&e.message()));
                let status = gone.map_or("failed", ChatGone::code);
                let reason: String = text.chars().take(MAX_REASON).collect();
                (status, None, Some(reason), gone)
            }
        };
        let updated = sqlx::query(
            "UPDATE courier_campaign_recipients SET status = $3, message_id = $4, reason = $5, updated_at = $6 \
             WHERE campaign_id = $1 AND seq = $2 AND chat_id = $7 \
             AND status IN ('pending', 'queued', 'parked', 'cancelled', 'failed')",
        )
        .bind(&campaign)
        .bind(seq)
        .bind(status)
        .bind(message_id)
        .bind(reason)
        .bind(store::now())
        .bind(chat_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let ours = updated == 1
            || sqlx::query(
                "SELECT 1 FROM courier_campaign_recipients WHERE campaign_id = $1 AND seq = $2 AND chat_id = $3",
            )
            .bind(&campaign)
            .bind(seq)
            .bind(chat_id)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !ours {
            return Ok(false);
        }
        if let Some(gone) = gone {
            // Every time, not only when the row changed: a crash between the
            // row and the publish must not lose it (its task id makes it once).
            self.follow_up(&campaign, chat_id, gone).await?;
        }
        let _ = store::finish_if_complete(&self.pool, &campaign).await;
        Ok(gone.is_some())
    }

    /// Enqueues the campaign's follow-up task for a dead chat (once: its
    /// task id is `<campaign>:<chat>:gone`).
    async fn follow_up(&self, campaign: &str, chat_id: i64, gone: ChatGone) -> Result<(), sqlx::Error> {
        let follow_up: Option<String> = sqlx::query("SELECT follow_up FROM courier_campaigns WHERE id = $1")
            .bind(campaign)
            .fetch_optional(&self.pool)
            .await?
            .and_then(|row| row.try_get("follow_up").ok().flatten());
        let Some(task) = follow_up else { return Ok(()) };
        let args = FollowUp { chat_id, reason: gone.code(), campaign_id: campaign };
        let task_id = format!("{}:gone", super::task_id(campaign, chat_id));
        match di::Envelope::new(task_id, &task, &args) {
            Ok(envelope) => {
                // A publish that fails brings the message back, to try again.
                self.publisher.publish(&envelope, None).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            }
            Err(err) => tracing::warn!(%err, campaign, "follow-up task not built"),
        }
        Ok(())
    }
}

/// The arguments a follow-up task gets.
#[derive(Debug, serde::Serialize)]
struct FollowUp<'a> {
    chat_id: i64,
    reason: &'a str,
    campaign_id: &'a str,
}
