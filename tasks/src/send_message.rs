//! Sends one text message: the building block of notifications and
//! broadcasts, so a broadcast needs no code. Flood control, lanes and 429s
//! are the framework's business: this file only says what to send.

use di::prelude::*;

/// What to send where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    /// The chat (private chats are positive, groups and channels negative).
    pub chat_id: i64,
    /// The message text.
    pub text: String,
}

/// What Telegram answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Telegram's id of the message (0 when the bot only logs).
    pub message_id: i32,
}

/// Sends it.
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<Output> {
    let sent = ctx.bot().send_message(args.chat_id, &args.text).await?;
    Ok(Output { message_id: sent.message_id })
}

register_task!(run: Args => Output, TaskOptions::new().max_attempts(5));
