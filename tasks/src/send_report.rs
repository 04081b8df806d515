//! Sends a chat its report once per task id: reads the chat's items,
//! messages the total, and records the delivery under the task id.
//!
//! No database connection is held while Telegram answers (a slow Telegram
//! would otherwise take the whole pool). Instead a claim row, keyed by the
//! task id, moves through two short transactions of its own:
//! 1. claim: the row is written as `sending` with a lease (longer than the
//!    task's timeout) and the items are read; committed at once;
//! 2. the message is sent, with no connection held;
//! 3. the row is marked `sent` with the message id.
//!
//! A redelivery that finds the row `sent` sends nothing (`already_sent`);
//! one that finds it `sending` under a live lease is retried once the lease
//! ends (another run is in flight); one that finds it `sending` with the
//! lease expired takes it over, because the run that claimed it died (or
//! timed out) and may or may not have reached Telegram: at-least-once, never
//! silently lost. A failed send gives the claim up at once, so the retry
//! need not wait for the lease.

use di::prelude::*;
use di::sqlx::{self, AnyPool};

/// The task's time limit: a Telegram request (`telegram.request_timeout`,
/// 30 s by default) plus the two short transactions.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claim keeps other runs off: longer than [`TIMEOUT`], so a
/// live run is never taken over, with 5 s for clocks that disagree.
const LEASE: Duration = Duration::from_secs(35);

/// Whose report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    /// The Telegram chat, also the key of its report items.
    pub chat_id: i64,
}

/// What was delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Items in the report.
    pub item_count: i64,
    /// Sum of their amounts.
    pub total: i64,
    /// Telegram's id of the message.
    pub message_id: i64,
    /// True when an earlier run with this task id had already sent it.
    pub already_sent: bool,
}

/// Delivers the report, or reports the earlier delivery.
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<Output> {
    let pool = ctx.db_pool();
    let (item_count, total) = match claim(&pool, ctx.task_id(), args.chat_id).await? {
        Claim::Mine { item_count, total } => (item_count, total),
        Claim::Sent(output) => return Ok(output),
    };
    let text = format!("Your report: {item_count} items, total {total}.");
    let sent = match ctx.bot().send_message(args.chat_id, &text).await {
        Ok(sent) => sent,
        Err(err) => {
            // Nothing was delivered (or we cannot tell): give the claim up
            // so the retry sends. If this fails too, the lease runs out.
            let released = sqlx::query("DELETE FROM report_deliveries WHERE task_id = $1 AND state = 'sending'")
                .bind(ctx.task_id())
                .execute(&pool)
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not release the delivery claim; it expires with its lease");
            }
            return Err(err.into());
        }
    };
    let message_id = i64::from(sent.message_id);
    sqlx::query(
        "UPDATE report_deliveries SET state = 'sent', message_id = $1, item_count = $2, total = $3, lease_until = 0 \
         WHERE task_id = $4",
    )
    .bind(message_id)
    .bind(item_count)
    .bind(total)
    .bind(ctx.task_id())
    .execute(&pool)
    .await?;
    Ok(Output { item_count, total, message_id, already_sent: false })
}

/// What the claim transaction found.
enum Claim {
    /// This run holds the claim: send the report with these figures.
    Mine { item_count: i64, total: i64 },
    /// An earlier run sent it.
    Sent(Output),
}

/// Claims the delivery (new, or taken over from an expired lease) and
/// reads the items, in one short transaction.
async fn claim(pool: &AnyPool, task_id: &str, chat_id: i64) -> Result<Claim, Failure> {
    let now = di::unix_now() as i64;
    let lease_until = now + LEASE.as_secs() as i64;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO report_deliveries (task_id, chat_id, message_id, item_count, total, delivered_at, state, lease_until) \
         VALUES ($1, $2, 0, 0, 0, $3, 'sending', $4) ON CONFLICT (task_id) DO NOTHING",
    )
    .bind(task_id)
    .bind(chat_id)
    .bind(now)
    .bind(lease_until)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let mine = inserted
        || sqlx::query(
            "UPDATE report_deliveries SET lease_until = $1, delivered_at = $2 \
             WHERE task_id = $3 AND state = 'sending' AND lease_until <= $2",
        )
        .bind(lease_until)
        .bind(now)
        .bind(task_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
    if !mine {
        let (state, lease, message_id, item_count, total): (String, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT state, lease_until, message_id, item_count, total FROM report_deliveries WHERE task_id = $1",
        )
        .bind(task_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if state == "sent" {
            return Ok(Claim::Sent(Output { item_count, total, message_id, already_sent: true }));
        }
        let wait = Duration::from_secs(u64::try_from(lease - now).unwrap_or(0) + 1);
        return Err(Failure::retry_after("another run is sending this report; retry when its lease ends", wait));
    }
    let (item_count, total): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM report_items WHERE chat_id = $1",
    )
    .bind(chat_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim::Mine { item_count, total })
}

register_task!(run: Args => Output, TaskOptions::new().max_attempts(8).timeout(TIMEOUT));
