//! Broadcast campaigns: one task sent to many chats at Telegram's limit,
//! with progress, pause, resume, cancel and a report.
//!
//! A campaign is a task name, shared arguments and a list of recipients.
//! Its state lives in the database (`courier_campaigns`, one row per
//! recipient in `courier_campaign_recipients`), so every counter is a count
//! of rows and exact after any crash. The fan-out ([`Campaigns::fan_out`])
//! publishes each pending recipient as one task in the campaign's lane
//! (`bulk` by default) with task id `<campaign id>:<chat id>`, so a re-run
//! sends nothing twice; it reads the recipients page by page, never all at
//! once. Workers check a campaign message before running it
//! ([`worker::CampaignGate`]): a paused campaign's message is parked (its
//! row back to `pending`, the message acknowledged) and a cancelled one's
//! dropped; after it runs, its outcome is written to its row.
//!
//! The recipient row's life: `pending` (not in the stream) → `queued`
//! (marked, then published, with the row's `generation` in its message id)
//! → `sent`, `blocked`, `deactivated`, `kicked`, `not_found`, `failed` or
//! `cancelled`. A pause moves `queued` to `parked` as its message arrives;
//! a resume publishes `parked` (and `pending`) rows in a new generation;
//! workers drop any message that is not its row's live copy.

mod api;
pub mod cli;
pub mod recipients;
mod store;
pub mod worker;

use std::collections::BTreeMap;

use serde::Serialize;

pub use api::{CampaignSpec, Campaigns, FanOut};
pub use store::ReportRow;

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    /// Recipients are being imported.
    Draft,
    /// Sending.
    Running,
    /// No further sends until resumed; pending recipients stay pending.
    Paused,
    /// Stopped for good; the recipients not reached are `cancelled`.
    Cancelled,
    /// Every recipient has a final outcome.
    Done,
}

impl CampaignStatus {
    /// The name stored in the database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Draft, Self::Running, Self::Paused, Self::Cancelled, Self::Done].into_iter().find(|s| s.name() == name)
    }
}

/// One campaign as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Campaign {
    /// Its id (a task-id prefix: 1-64 of A-Z a-z 0-9 - _ .).
    pub id: String,
    /// The task every recipient gets.
    pub task_name: String,
    /// The shared arguments (each recipient's `chat_id` is added).
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// The lane its tasks run in.
    pub lane: di::Lane,
    /// Where it is.
    pub status: CampaignStatus,
    /// The task enqueued once per dead chat, if any.
    pub follow_up: Option<String>,
    /// Whether every recipient is imported.
    pub imported: bool,
    /// How many times it was resumed.
    pub generation: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// When the fan-out began.
    pub started_at: Option<i64>,
    /// When it ended (done or cancelled).
    pub finished_at: Option<i64>,
}

/// Recipients by status: every row counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Every recipient imported.
    pub total: u64,
    /// Count per recipient status (`pending`, `queued`, `sent`, ...).
    pub by_status: BTreeMap<String, u64>,
}

impl Counters {
    /// The count of one status.
    pub fn get(&self, status: &str) -> u64 {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    /// Recipients without a final outcome yet.
    pub fn outstanding(&self) -> u64 {
        OUTSTANDING_STATUSES.iter().map(|s| self.get(s)).sum()
    }

    /// Chats the bot cannot message (blocked, deactivated, kicked, not found).
    pub fn dead(&self) -> u64 {
        DEAD_STATUSES.iter().map(|s| self.get(s)).sum()
    }
}

/// The recipient statuses that mean the chat is gone for this bot.
pub const DEAD_STATUSES: [&str; 4] = ["blocked", "deactivated", "kicked", "not_found"];

/// The recipient statuses without a final outcome.
pub const OUTSTANDING_STATUSES: [&str; 3] = ["pending", "queued", "parked"];

/// Every recipient status, for counters that list each (zeros included).
pub const RECIPIENT_STATUSES: [&str; 10] =
    ["pending", "queued", "parked", "sent", "blocked", "deactivated", "kicked", "not_found", "failed", "cancelled"];

/// Why a campaign operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The database schema could not be brought up to date.
    #[error("campaign migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// NATS or the database could not be reached at start.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
    /// Connecting to NATS failed.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] crate::broker::publish::PublishError),
    /// No campaign has this id.
    #[error("no campaign {0:?}")]
    NotFound(String),
    /// The id exists with another task or other arguments.
    #[error("campaign {0:?} exists with another task or other arguments")]
    Conflict(String),
    /// The operation does not fit the campaign's status.
    #[error("campaign {id:?} is {status}: cannot {action}")]
    Status {
        /// The campaign.
        id: String,
        /// Its status.
        status: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The specification is unusable (unknown task, bad id, arguments).
    #[error("{0}")]
    Invalid(String),
    /// A recipient source could not be read.
    #[error(transparent)]
    Recipients(#[from] recipients::RecipientError),
}

/// The framework's own migrations (campaigns), in a table of their own
/// (`_courier_migrations`) so they never mix with the application's.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_courier_migrations");
    migrator
}

/// Checks a campaign id: 1-64 of A-Z a-z 0-9 - _ . (it prefixes task ids).
pub fn validate_id(id: &str) -> Result<(), CampaignError> {
    let fine = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(CampaignError::Invalid(format!("{id:?} is not a campaign id (1-64 of A-Z a-z 0-9 - _ .)")))
    }
}

/// A new campaign id: `c-` and 12 hex digits.
pub fn new_id() -> String {
    // Random digits: a task id's first 12 are its time (UUID v7).
    format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The task id of `chat_id`'s task in campaign `id`.
pub fn task_id(id: &str, chat_id: i64) -> String {
    format!("{id}:{chat_id}")
}

/// The labels that mark a campaign task in its envelope and record.
pub const CAMPAIGN_LABEL: &str = "campaign";
/// The recipient's `seq` in its campaign.
pub const RECIPIENT_LABEL: &str = "recipient";
/// The NATS headers the workers' gate reads (namespaced: a producer's own
/// labels travel as headers too).
pub const CAMPAIGN_HEADER: &str = "Courier-Campaign";
/// The recipient's `seq`, as a header.
pub const RECIPIENT_HEADER: &str = "Courier-Recipient";

/// The `Nats-Msg-Id` of a recipient's message in one generation.
pub fn message_id(task_id: &str, generation: i64) -> String {
    format!("{task_id}~g{generation}")
}
