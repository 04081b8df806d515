//! The worker's side of campaigns: before a campaign message runs, the
//! [`CampaignGate`] looks at its campaign (a paused one parks it, a
//! cancelled one drops it); after it ends for good, its outcome is written
//! to its recipient row, a dead chat's follow-up task is enqueued, and a
//! campaign with nothing outstanding is marked done.
//!
//! Messages are recognised by their `campaign` and `recipient` headers (the
//! fan-out sets them; labels travel as headers too). A header naming no
//! campaign row changes nothing: the message runs as any other.

use di::{ChatGone, Execution, TaskStatus};
use sqlx::{AnyPool, Row};

use super::{CAMPAIGN_LABEL, RECIPIENT_LABEL, store};
use crate::publish::Publisher;

/// What to do with a campaign message before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Run,
    /// The campaign is paused: its row is `pending` again; acknowledge the
    /// message (a resume publishes the recipient again).
    Parked,
    /// The campaign or the recipient is cancelled: acknowledge, do not run.
    Dropped,
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

    /// The campaign and recipient a message's headers name, if any.
    pub fn recipient_of(headers: Option<&async_nats::HeaderMap>) -> Option<(String, i64)> {
        let headers = headers?;
        let campaign = headers.get(CAMPAIGN_LABEL)?.as_str().to_owned();
        let seq = headers.get(RECIPIENT_LABEL)?.as_str().parse().ok()?;
        Some((campaign, seq))
    }

    /// Decides about one campaign message. Reads the database every time
    /// (one indexed lookup): a pause holds from the next message on.
    pub async fn check(&self, campaign: &str, seq: i64) -> Result<Verdict, sqlx::Error> {
        let row = sqlx::query(
            "SELECT r.status AS recipient, c.status AS campaign FROM courier_campaign_recipients r \
             JOIN courier_campaigns c ON c.id = r.campaign_id WHERE r.campaign_id = $1 AND r.seq = $2",
        )
        .bind(campaign)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(Verdict::Run) };
        let recipient: String = row.try_get("recipient")?;
        let status: String = row.try_get("campaign")?;
        Ok(match (recipient.as_str(), status.as_str()) {
            ("cancelled", _) | (_, "cancelled") => Verdict::Dropped,
            ("queued" | "pending", "paused") => {
                // Only while still paused: a resume that raced this must not
                // lose the recipient.
                let parked = sqlx::query(
                    "UPDATE courier_campaign_recipients SET status = 'pending', updated_at = $3 \
                     WHERE campaign_id = $1 AND seq = $2 AND status IN ('queued', 'pending') AND EXISTS (\
                       SELECT 1 FROM courier_campaigns WHERE id = $1 AND status = 'paused')",
                )
                .bind(campaign)
                .bind(seq)
                .bind(store::now())
                .execute(&self.pool)
                .await?
                .rows_affected();
                if parked == 1 { Verdict::Parked } else { Verdict::Run }
            }
            _ => Verdict::Run,
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
        let (status, message_id, reason, gone) = match record.status {
            TaskStatus::Success => {
                let message_id = record.return_value.as_map().and_then(|fields| {
                    fields.iter().find(|(k, _)| k.as_str() == Some("message_id")).and_then(|(_, v)| v.as_i64())
                });
                ("sent", message_id, None, None)
            }
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
             WHERE campaign_id = $1 AND seq = $2 AND status IN ('pending', 'queued', 'cancelled')",
        )
        .bind(&campaign)
        .bind(seq)
        .bind(status)
        .bind(message_id)
        .bind(reason)
        .bind(store::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if let Some(gone) = gone
            && updated == 1
        {
            self.follow_up(&campaign, execution, gone).await?;
        }
        let _ = store::finish_if_complete(&self.pool, &campaign).await;
        Ok(gone.is_some())
    }

    /// Enqueues the campaign's follow-up task for a dead chat (once: its
    /// task id is `<campaign>:<chat>:gone`).
    async fn follow_up(&self, campaign: &str, execution: &Execution, gone: ChatGone) -> Result<(), sqlx::Error> {
        let follow_up: Option<String> = sqlx::query("SELECT follow_up FROM courier_campaigns WHERE id = $1")
            .bind(campaign)
            .fetch_optional(&self.pool)
            .await?
            .and_then(|row| row.try_get("follow_up").ok().flatten());
        let (Some(task), Some(task_id)) = (follow_up, &execution.task_id) else { return Ok(()) };
        let Some(chat_id) = task_id.rsplit(':').next().and_then(|c| c.parse::<i64>().ok()) else { return Ok(()) };
        let args = FollowUp { chat_id, reason: gone.code(), campaign_id: campaign };
        match di::Envelope::new(format!("{task_id}:gone"), &task, &args) {
            Ok(envelope) => {
                if let Err(err) = self.publisher.publish(&envelope, None).await {
                    tracing::warn!(%err, campaign, chat_id, "follow-up task not enqueued");
                }
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
