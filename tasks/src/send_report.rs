//! Sends a chat its report exactly once per task id: reads the chat's
//! items, messages the total, and records the delivery under the task id.
//!
//! The delivery row is claimed first, inside the task's transaction: a
//! redelivered task finds it and sends nothing, and on PostgreSQL a
//! concurrent duplicate waits for the first run's transaction. If the
//! process dies after Telegram accepted the message but before the commit,
//! the retry sends again: at-least-once, never silently lost.

use di::prelude::*;
use di::sqlx;

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
    let mut db = ctx.db().await?;
    let claimed = sqlx::query(
        "INSERT INTO report_deliveries (task_id, chat_id, message_id, item_count, total, delivered_at) \
         VALUES ($1, $2, 0, 0, 0, $3) ON CONFLICT (task_id) DO NOTHING",
    )
    .bind(ctx.task_id())
    .bind(args.chat_id)
    .bind(di::unix_now() as i64)
    .execute(&mut *db)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (message_id, item_count, total): (i64, i64, i64) =
            sqlx::query_as("SELECT message_id, item_count, total FROM report_deliveries WHERE task_id = $1")
                .bind(ctx.task_id())
                .fetch_one(&mut *db)
                .await?;
        return Ok(Output { item_count, total, message_id, already_sent: true });
    }

    let (item_count, total): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM report_items WHERE chat_id = $1",
    )
    .bind(args.chat_id)
    .fetch_one(&mut *db)
    .await?;
    let text = format!("Your report: {item_count} items, total {total}.");
    let sent = ctx.bot().send_message(args.chat_id, &text).await?;
    let message_id = i64::from(sent.message_id);
    sqlx::query("UPDATE report_deliveries SET message_id = $1, item_count = $2, total = $3 WHERE task_id = $4")
        .bind(message_id)
        .bind(item_count)
        .bind(total)
        .bind(ctx.task_id())
        .execute(&mut *db)
        .await?;
    Ok(Output { item_count, total, message_id, already_sent: false })
}

register_task!(run: Args => Output, TaskOptions::new().max_attempts(8));
