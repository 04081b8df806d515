//! `BotApi`: the Telegram Bot API, through teloxide.

use std::time::Duration;

use async_trait::async_trait;
use settings::TelegramSettings;
use shaku::{Component, Interface};
use teloxide::payloads::{CopyMessageSetters, SendMessageSetters};
use teloxide::prelude::Requester;
use teloxide::types::{ChatId, MessageId, ParseMode};
use teloxide::{ApiError, Bot, RequestError};

use std::sync::Arc;

use crate::error::{Component as Part, StartupError, scrub};
use crate::governor::{Admission, Governor, Lane};

/// A message the Bot API accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The chat it went to.
    pub chat_id: i64,
    /// Telegram's id of the message (0 when only logged).
    pub message_id: i32,
}

/// One message to send: a text, or a copy of a message that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The chat it goes to.
    pub chat_id: i64,
    /// What it is.
    pub content: Content,
}

/// What an [`Outgoing`] message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A text, formatted as `parse_mode` says (`HTML`, `MarkdownV2`,
    /// `Markdown`; `None`: plain).
    Text {
        /// The text.
        text: String,
        /// Telegram's parse mode.
        parse_mode: Option<String>,
    },
    /// A copy of message `message_id` of chat `from_chat_id` (any kind of
    /// message: a photo with its caption, a poll...), sent as the bot's own.
    Copy {
        /// The chat the message is in.
        from_chat_id: i64,
        /// Its id there.
        message_id: i32,
    },
}

impl Outgoing {
    /// A plain text.
    pub fn text(chat_id: i64, text: impl Into<String>) -> Self {
        Self { chat_id, content: Content::Text { text: text.into(), parse_mode: None } }
    }
}

/// Why a Bot API call failed, split by what the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    /// Telegram said "too many requests": try again after `retry_after`.
    /// The chat (or the bot) is frozen for every worker meanwhile.
    #[error("telegram rate limit: retry after {retry_after:?}")]
    RateLimited {
        /// The wait Telegram asked for.
        retry_after: Duration,
    },
    /// The flood-control governor has no budget for this message now: it
    /// was not sent; try again after `retry_after`.
    #[error("flood control: send again after {retry_after:?}")]
    Throttled {
        /// How long until the budget allows it.
        retry_after: Duration,
    },
    /// The network or Telegram itself failed: worth retrying.
    #[error("telegram unavailable: {0}")]
    Unavailable(String),
    /// Telegram refused the request (bad request, wrong token): retrying
    /// will not help.
    #[error("telegram refused: {0}")]
    Rejected(String),
    /// The chat cannot receive messages from this bot: the user blocked it,
    /// the account is gone, the bot was removed, or there is no such chat.
    /// Fatal for this chat; `reason` is what a broadcast records.
    #[error("chat unreachable ({}): {detail}", reason.code())]
    ChatGone {
        /// Why, as a stable code.
        reason: ChatGone,
        /// Telegram's description.
        detail: String,
    },
}

/// Why a chat cannot be messaged (Telegram's 403s and "chat not found").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatGone {
    /// 403: the user blocked the bot.
    Blocked,
    /// 403: the user's account is deactivated.
    Deactivated,
    /// 403: the bot was removed from the group, supergroup or channel.
    Kicked,
    /// 400: no such chat (or the bot never met the user).
    NotFound,
}

impl ChatGone {
    /// The stable code: `blocked`, `deactivated`, `kicked`, `not_found`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Deactivated => "deactivated",
            Self::Kicked => "kicked",
            Self::NotFound => "not_found",
        }
    }

    /// Reads a code written by [`ChatGone::code`].
    pub fn parse(code: &str) -> Option<Self> {
        [Self::Blocked, Self::Deactivated, Self::Kicked, Self::NotFound].into_iter().find(|c| c.code() == code)
    }

    /// The reason in a failure message that [`BotError::ChatGone`] wrote
    /// (`chat unreachable (blocked): ...`), wherever it stands in the text.
    pub fn in_message(text: &str) -> Option<Self> {
        let (_, rest) = text.split_once("chat unreachable (")?;
        Self::parse(rest.split_once(')')?.0)
    }
}

impl BotError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected(_) | Self::ChatGone { .. })
    }
}

/// What tasks use to talk to Telegram users.
#[async_trait]
pub trait BotApi: Interface {
    /// Sends a text message to a chat (in the transactional lane when
    /// called outside a task; `ctx.bot()` sends in the task's lane).
    async fn send_message(&self, chat_id: i64, text: &str) -> Result<SentMessage, BotError>;

    /// Sends a text message in `lane`, through flood control where the
    /// component has it. Doubles need not care about lanes.
    async fn send_message_in(&self, lane: Lane, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        let _ = lane;
        self.send_message(chat_id, text).await
    }

    /// Sends `message` in `lane`: a text with a parse mode, or a copy of
    /// another message. Doubles that only know plain text answer
    /// `Rejected` for the rest.
    async fn send(&self, lane: Lane, message: &Outgoing) -> Result<SentMessage, BotError> {
        match &message.content {
            Content::Text { text, parse_mode: None } => self.send_message_in(lane, message.chat_id, text).await,
            _ => Err(BotError::Rejected("this BotApi sends plain text only".to_owned())),
        }
    }

    /// [`BotApi::send`], waiting up to `most` for the message's flood-control
    /// slot instead of answering `Throttled` past the usual threshold.
    async fn send_patiently(&self, lane: Lane, message: &Outgoing, most: Duration) -> Result<SentMessage, BotError> {
        let _ = most;
        self.send(lane, message).await
    }

    /// Checks the token and the API (`getMe`); returns the bot's username,
    /// or a description of why nothing is checked.
    async fn check(&self) -> Result<String, BotError>;

    /// The flood-control governor its sends go through, if any (the worker
    /// paces the bulk lane by it).
    fn governor(&self) -> Option<Arc<Governor>> {
        None
    }
}

/// The real [`BotApi`]: teloxide's `Bot`, or, with no token configured, a
/// stand-in that logs each message instead of sending it (the quick start
/// needs no Telegram account).
#[derive(Component, Clone, Default)]
#[shaku(interface = BotApi)]
pub struct TelegramBot {
    /// `None` means log-only.
    pub(crate) bot: Option<Bot>,
    /// The token, to scrub it from error messages (teloxide may echo URLs).
    #[shaku(default)]
    pub(crate) token: String,
    /// Flood control shared with every worker of this bot (`None`: log-only
    /// bots and doubles).
    #[shaku(default)]
    pub(crate) governor: Option<Arc<Governor>>,
}

/// How long a task that has already sent a message waits for the slot of
/// its next one (inside the task, holding its worker slot) before it is
/// handed back after all, which sends the earlier messages again.
pub const PATIENT_WAIT: Duration = Duration::from_secs(30);

/// A bot bound to one lane: what `TaskContext::bot` hands a task.
pub(crate) struct InLane {
    pub(crate) bot: Arc<dyn BotApi>,
    pub(crate) lane: Lane,
    /// Whether this attempt has sent a message (then it waits, see [`PATIENT_WAIT`]).
    pub(crate) sent: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl BotApi for InLane {
    async fn send_message(&self, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        self.send(self.lane, &Outgoing::text(chat_id, text)).await
    }

    async fn send_message_in(&self, lane: Lane, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        self.send(lane, &Outgoing::text(chat_id, text)).await
    }

    async fn send(&self, lane: Lane, message: &Outgoing) -> Result<SentMessage, BotError> {
        use std::sync::atomic::Ordering;
        let sent = if self.sent.load(Ordering::Acquire) {
            self.bot.send_patiently(lane, message, PATIENT_WAIT).await
        } else {
            self.bot.send(lane, message).await
        };
        if sent.is_ok() {
            self.sent.store(true, Ordering::Release);
        }
        sent
    }

    async fn send_patiently(&self, lane: Lane, message: &Outgoing, most: Duration) -> Result<SentMessage, BotError> {
        self.bot.send_patiently(lane, message, most).await
    }

    async fn check(&self) -> Result<String, BotError> {
        self.bot.check().await
    }

    fn governor(&self) -> Option<Arc<Governor>> {
        self.bot.governor()
    }
}

// Written by hand: teloxide's `Bot` would print the token.
impl std::fmt::Debug for TelegramBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.bot.is_some() { "telegram" } else { "log-only" };
        f.debug_struct("TelegramBot").field("mode", &mode).field("governed", &self.governor.is_some()).finish()
    }
}

impl TelegramBot {
    /// Builds the bot from settings; makes no request (see [`BotApi::check`]).
    pub fn from_settings(settings: &TelegramSettings) -> Result<Self, StartupError> {
        let Some(token) = &settings.token else {
            return Ok(Self::log_only());
        };
        let misconfigured = |reason: String| StartupError::Misconfigured { component: Part::Telegram, reason };
        let api_url = settings
            .api_url
            .parse()
            .map_err(|err| misconfigured(format!("telegram.api_url {:?}: {err}", settings.api_url)))?;
        let client = teloxide::net::default_reqwest_settings()
            .timeout(settings.request_timeout)
            .build()
            .map_err(|err| misconfigured(format!("HTTP client: {err}")))?;
        let bot = Bot::with_client(token.expose(), client).set_api_url(api_url);
        Ok(Self { bot: Some(bot), token: token.expose().to_owned(), governor: None })
    }

    /// Builds the bot from settings and checks it (`getMe`); returns it with
    /// a one-line description for the start-up log and `worker --check`.
    pub async fn verify(settings: &TelegramSettings) -> Result<(Self, String), StartupError> {
        let bot = Self::from_settings(settings)?;
        let status = bot.check().await.map_err(|err| StartupError::Unreachable {
            component: Part::Telegram,
            url: settings.api_url.clone(),
            reason: err.to_string(),
        })?;
        Ok((bot, status))
    }

    /// The bot's id from `getMe` (flood control is keyed by it, never by
    /// the token); `None` for a log-only bot.
    pub async fn bot_id(&self) -> Result<Option<i64>, BotError> {
        let Some(bot) = &self.bot else { return Ok(None) };
        let me = bot.get_me().await.map_err(|e| self.map_error(e))?;
        Ok(Some(i64::try_from(me.id.0).unwrap_or(i64::MAX)))
    }

    /// Puts every message this bot sends through `governor`.
    pub fn with_governor(mut self, governor: Arc<Governor>) -> Self {
        self.governor = Some(governor);
        self
    }

    /// A bot that only logs; what `development` runs with no token.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// The teloxide client, when a token is configured (the `bot` binary
    /// polls updates through it).
    pub fn teloxide(&self) -> Option<&Bot> {
        self.bot.as_ref()
    }

    /// Whether messages really go to Telegram.
    pub fn is_live(&self) -> bool {
        self.bot.is_some()
    }

    fn map_error(&self, err: RequestError) -> BotError {
        let text = |e: &dyn std::fmt::Display| scrub(&e.to_string(), &[&self.token]);
        match err {
            RequestError::RetryAfter(secs) => BotError::RateLimited { retry_after: secs.duration() },
            RequestError::Network(e) => BotError::Unavailable(text(&e)),
            RequestError::Io(e) => BotError::Unavailable(text(&e)),
            RequestError::InvalidJson { source, .. } => BotError::Unavailable(text(&source)),
            RequestError::Api(ApiError::Unknown(description)) if is_server_side(&description) => {
                BotError::Unavailable(description)
            }
            RequestError::Api(api) => match chat_gone(&api) {
                Some(reason) => BotError::ChatGone { reason, detail: text(&api) },
                None => BotError::Rejected(text(&api)),
            },
            other => BotError::Rejected(text(&other)),
        }
    }
}

/// Which Telegram refusals mean the chat is gone for this bot. teloxide
/// tells them apart by description only (HTTP 400 and 403 look alike).
fn chat_gone(err: &ApiError) -> Option<ChatGone> {
    Some(match err {
        ApiError::BotBlocked => ChatGone::Blocked,
        ApiError::UserDeactivated => ChatGone::Deactivated,
        ApiError::ChatNotFound => ChatGone::NotFound,
        ApiError::BotKicked | ApiError::BotKickedFromSupergroup | ApiError::BotKickedFromChannel => ChatGone::Kicked,
        ApiError::Unknown(d) if d.contains("bot was kicked") => ChatGone::Kicked,
        _ => return None,
    })
}

/// Telegram reports 5xx trouble only through the description.
fn is_server_side(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    ["internal server error", "bad gateway", "service unavailable", "gateway timeout", "restart"]
        .iter()
        .any(|needle| d.contains(needle))
}

#[async_trait]
impl BotApi for TelegramBot {
    async fn send_message(&self, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        self.send_message_in(Lane::Transactional, chat_id, text).await
    }

    async fn send_message_in(&self, lane: Lane, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        self.send(lane, &Outgoing::text(chat_id, text)).await
    }

    async fn send(&self, lane: Lane, message: &Outgoing) -> Result<SentMessage, BotError> {
        self.send_within(lane, message, None).await
    }

    async fn send_patiently(&self, lane: Lane, message: &Outgoing, most: Duration) -> Result<SentMessage, BotError> {
        self.send_within(lane, message, Some(most)).await
    }

    fn governor(&self) -> Option<Arc<Governor>> {
        self.governor.clone()
    }

    async fn check(&self) -> Result<String, BotError> {
        let Some(bot) = &self.bot else {
            return Ok("no token: messages are logged, not sent".to_owned());
        };
        let me = bot.get_me().await.map_err(|e| self.map_error(e))?;
        Ok(format!("@{}", me.username()))
    }
}

impl TelegramBot {
    /// Sends through flood control, waiting up to `most` for the slot
    /// (`None`: `telegram.limits.wait_threshold`).
    async fn send_within(
        &self,
        lane: Lane,
        message: &Outgoing,
        most: Option<Duration>,
    ) -> Result<SentMessage, BotError> {
        let chat_id = message.chat_id;
        let Some(bot) = &self.bot else {
            tracing::info!(chat_id, content = ?message.content, "telegram (log-only, no token): message not sent");
            return Ok(SentMessage { chat_id, message_id: 0 });
        };
        let parse_mode = match &message.content {
            Content::Text { parse_mode: Some(mode), .. } => Some(
                ParseMode::try_from(mode.as_str())
                    .map_err(|()| BotError::Rejected(format!("parse mode {mode:?} (HTML, MarkdownV2, Markdown)")))?,
            ),
            _ => None,
        };
        let mut paid = false;
        if let Some(governor) = &self.governor {
            let wait = match governor.admit_within(chat_id, lane, most).await {
                Admission::Go(wait) => wait,
                Admission::GoPaid(wait) => {
                    paid = true;
                    wait
                }
                Admission::Later(retry_after) => return Err(BotError::Throttled { retry_after }),
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let sent = match &message.content {
            Content::Text { text, .. } => {
                let mut request = bot.send_message(ChatId(chat_id), text);
                if let Some(mode) = parse_mode {
                    request = request.parse_mode(mode);
                }
                let request = if paid { request.allow_paid_broadcast(true) } else { request };
                request.await.map(|m| SentMessage { chat_id: m.chat.id.0, message_id: m.id.0 })
            }
            Content::Copy { from_chat_id, message_id } => {
                let request = bot.copy_message(ChatId(chat_id), ChatId(*from_chat_id), MessageId(*message_id));
                let request = if paid { request.allow_paid_broadcast(true) } else { request };
                request.await.map(|id| SentMessage { chat_id, message_id: id.0 })
            }
        };
        match sent {
            Ok(sent) => Ok(sent),
            Err(RequestError::RetryAfter(secs)) => {
                let cap = self.governor.as_ref().map_or(Duration::MAX, |g| g.limits().max_retry_after);
                let retry_after = secs.duration().min(cap);
                if let Some(governor) = &self.governor {
                    let bot_wide = governor.rate_limited(chat_id, lane, retry_after).await;
                    tracing::warn!(chat_id, lane = lane.name(), ?retry_after, bot_wide, "telegram answered 429");
                }
                Err(BotError::RateLimited { retry_after })
            }
            Err(err) => Err(self.map_error(err)),
        }
    }
}
