//! The spec's dependency-injection check: a `SELECT` through the injected
//! database, a message through the injected bot, and a report of both.

use di::prelude::*;

/// Whom to tell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    /// The Telegram chat to message.
    pub chat_id: i64,
}

/// What the task saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// `PostgreSQL` or `SQLite`: where the `SELECT` ran.
    pub db_backend: String,
    /// What `SELECT 1` returned.
    pub select_one: i64,
    /// The chat that was messaged.
    pub chat_id: i64,
    /// Telegram's id of the message (0 when the bot only logs).
    pub message_id: i32,
}

/// Runs the check.
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<Output> {
    let select_one: i64 = {
        let mut db = ctx.db().await?;
        di::sqlx::query_scalar("SELECT CAST(1 AS BIGINT)").fetch_one(&mut *db).await?
    };
    let db_backend = ctx.db_backend();
    let text = format!(
        "Your report is ready (task {}): the database ({db_backend}) answered SELECT 1 = {select_one}.",
        ctx.task_id()
    );
    let sent = ctx.bot().send_message(args.chat_id, &text).await?;
    Ok(Output { db_backend: db_backend.to_owned(), select_one, chat_id: sent.chat_id, message_id: sent.message_id })
}

register_task!(run: Args => Output);
