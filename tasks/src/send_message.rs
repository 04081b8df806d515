//! Sends one message: the building block of notifications and broadcasts,
//! so a broadcast needs no code. A text (plain, or formatted with a parse
//! mode), or a copy of a message that exists (a photo with its caption, a
//! poll: anything), sent as the bot's own. Flood control, lanes and 429s
//! are the framework's business: this file only says what to send.

use di::prelude::*;
use di::{Content, Outgoing};

/// What to send where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {
    /// The chat (private chats are positive, groups and channels negative).
    pub chat_id: i64,
    /// The message text (ignored with `copy_from`).
    #[serde(default)]
    pub text: String,
    /// `HTML`, `MarkdownV2` or `Markdown`; plain text when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_mode: Option<String>,
    /// Send a copy of this message instead of `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_from: Option<CopyFrom>,
}

impl Args {
    /// A plain text to `chat_id`.
    pub fn text(chat_id: i64, text: impl Into<String>) -> Self {
        Self { chat_id, text: text.into(), ..Self::default() }
    }
}

/// A message to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFrom {
    /// The chat it is in.
    pub chat_id: i64,
    /// Its id there.
    pub message_id: i32,
}

/// What Telegram answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Telegram's id of the message (0 when the bot only logs).
    pub message_id: i32,
}

/// Sends it.
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<Output> {
    let content = match args.copy_from {
        Some(from) => Content::Copy { from_chat_id: from.chat_id, message_id: from.message_id },
        None if args.text.is_empty() => return Err(Failure::fatal("nothing to send: no text and no copy_from")),
        None => Content::Text { text: args.text, parse_mode: args.parse_mode },
    };
    let sent = ctx.bot().send(ctx.lane(), &Outgoing { chat_id: args.chat_id, content }).await?;
    Ok(Output { message_id: sent.message_id })
}

register_task!(run: Args => Output, TaskOptions::new().max_attempts(5));
