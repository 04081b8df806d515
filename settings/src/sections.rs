//! The typed sections of [`crate::Settings`], one struct per table.

use std::time::Duration;

use serde::Deserialize;

use crate::{Secret, SecretUrl, SecretUrls, duration};

/// How tasks travel over NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsMode {
    /// A JetStream stream and durable consumer: at-least-once, survives restarts.
    Jetstream,
    /// Core NATS with a queue group: at-most-once; a task in flight during a
    /// crash or restart is lost. For those who accept that.
    Core,
}

impl NatsMode {
    /// The name as written in settings (`jetstream`, `core`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Jetstream => "jetstream",
            Self::Core => "core",
        }
    }
}

/// The broker: where tasks are published and pulled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// The servers (a list, or URLs separated by commas); each may carry a
    /// user and password or a token. The client tries them in random order
    /// and learns the rest of a cluster from the one it reaches.
    pub url: SecretUrls,
    /// JetStream or core NATS.
    pub mode: NatsMode,
    /// The JetStream stream that holds queued tasks.
    pub stream: String,
    /// The subject tasks are published to (queues are `<subject>.<queue>`).
    pub subject: String,
    /// The durable consumer every worker process binds to.
    pub durable: String,
    /// Where messages that will never succeed are copied, with the reason.
    pub dead_letter_subject: String,
    /// How long the server waits for an ack before it redelivers.
    #[serde(with = "duration")]
    pub ack_wait: Duration,
    /// The server's delivery limit for one message (a backstop; the worker
    /// counts attempts per task itself).
    pub max_deliver: i64,
    /// Delivered-but-unacked messages the consumer allows (retries waiting
    /// out a backoff count too).
    pub max_ack_pending: i64,
    /// Prefix of the completion notices (`<done_subject>.<task_id>`).
    pub done_subject: String,
    /// How long dead letters are kept.
    #[serde(with = "duration")]
    pub dead_letter_max_age: Duration,
    /// How long a `Nats-Msg-Id` is remembered for publish deduplication.
    #[serde(with = "duration")]
    pub duplicate_window: Duration,
    /// A retry that waits longer than this goes through the delayed stream
    /// (acked, holding no ack-pending slot) instead of a nak with delay.
    #[serde(with = "duration")]
    pub postpone_after: Duration,
    /// Copies of the task and dead-letter streams in a NATS cluster.
    pub stream_replicas: usize,
    /// The largest task envelope (bytes) a worker accepts.
    pub max_payload: usize,
    /// How long to wait for the server at start-up.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// CA certificate (PEM) to trust for TLS; setting it requires TLS.
    /// A `tls://` URL requires TLS too, trusting the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS, with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

/// The result store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL; may carry a password. With `cluster`,
    /// the seed nodes of a Redis Cluster (a list, or URLs separated by
    /// commas): the client learns the other nodes from whichever it reaches.
    pub url: SecretUrls,
    /// Whether `url` names the nodes of a Redis Cluster (off: one server).
    #[serde(default)]
    pub cluster: bool,
    /// How long a result record lives after its last write.
    #[serde(with = "duration")]
    pub result_ttl: Duration,
    /// Prepended to the task id to form the key (empty, like taskiq-redis).
    pub key_prefix: String,
    /// CA certificate (PEM) to trust for `rediss://` (else the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Accepted and ignored: every caller shares one multiplexed connection
    /// (per node on a cluster). Kept so settings files that name it load.
    pub pool_size: u32,
    /// How long to wait for a connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

/// The application database that tasks use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite:...` URL.
    pub url: SecretUrl,
    /// Pool size; bounds how many tasks hold a session at once.
    pub max_connections: u32,
    /// How long to wait for a connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

/// The Telegram Bot API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramSettings {
    /// The bot token; without one, messages are logged instead of sent.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Base URL of the Bot API (a local server, or a fake one in tests).
    pub api_url: String,
    /// Refuse to start without a token (on in `production`).
    pub require_token: bool,
    /// Timeout of one Bot API request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Flood control: Telegram's limits, shared by every worker of the bot.
    pub limits: TelegramLimits,
}

/// Telegram's limits as the governor enforces them. A bucket with rate `r`
/// and burst `b` lets at most `b + r * t` messages through in any `t`.
/// Telegram publishes approximations; a `429` is the ground truth.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramLimits {
    /// Whether sends go through flood control at all. Only for a Bot API
    /// that has no limits (a fake, or measuring flood control's own cost):
    /// with `false`, N workers send N times too fast to Telegram.
    pub enforce: bool,
    /// Messages per second to all chats together.
    pub global_per_second: f64,
    /// How many of them may go at once.
    pub global_burst: u32,
    /// Messages per second to one private chat.
    pub private_per_second: f64,
    /// How many may go to one private chat at once.
    pub private_burst: u32,
    /// Messages per minute to one group or channel (negative chat ids).
    pub group_per_minute: f64,
    /// How many may go to one group at once.
    pub group_burst: u32,
    /// Share of the global rate kept for the interactive lane (0 to 0.9):
    /// other lanes together never use more than the rest.
    pub interactive_reserve: f64,
    /// A send that would wait up to this long waits inside the task; a
    /// longer wait hands the task back for that long (no attempt spent).
    #[serde(with = "duration")]
    pub wait_threshold: Duration,
    /// 429s from this many different chats within a second freeze the
    /// whole bot for the shortest of their `retry_after`s, not only those chats.
    pub global_freeze_chats: u32,
    /// The longest freeze a 429 sets (and the longest a task waits for
    /// one): a `retry_after` past it is cut to it.
    #[serde(with = "duration")]
    pub max_retry_after: Duration,
    /// Messages per second one worker process sends while Redis is
    /// unreachable (the shared budget cannot be read; keep it small).
    pub fallback_per_second: f64,
    /// Messages per second the `paid` lane sends with
    /// `allow_paid_broadcast` (Telegram allows up to 1000), outside the
    /// global budget; each costs 0.1 Telegram Stars.
    pub paid_per_second: f64,
    /// How many paid messages may go at once.
    pub paid_burst: u32,
    /// Stars the paid lane may spend per UTC day (10 messages a Star);
    /// 0 sends nothing paid.
    pub paid_daily_stars: u64,
    /// What the paid lane does once the day's Stars are spent.
    pub paid_when_spent: PaidWhenSpent,
}

/// What the paid lane does once `paid_daily_stars` are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaidWhenSpent {
    /// Sends on at the free rate, inside the global budget like `bulk`.
    Free,
    /// Sends nothing more until the next UTC day.
    Pause,
}

/// The worker process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty is off.
    pub http_addr: String,
    /// At most this many tasks run at once in one process.
    pub concurrency: usize,
    /// How long running tasks may take to finish after a shutdown signal.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Connections the HTTP server holds at once; more are closed on accept,
    /// so idle clients cannot use up the process' file descriptors.
    pub http_max_connections: usize,
    /// How long a connection may take to send a request's headers, and how
    /// long an idle keep-alive connection is kept.
    #[serde(with = "duration")]
    pub http_header_timeout: Duration,
    /// The deepest nesting an envelope may have (the envelope is level 1).
    pub decode_max_depth: usize,
    /// The most MessagePack values (array elements, map keys and values) in
    /// one envelope.
    pub decode_max_items: u64,
    /// The most memory (bytes, estimated before decoding) one decoded
    /// envelope may take.
    pub decode_max_bytes: u64,
}

/// How the binaries log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// The level or tracing directives; `RUST_LOG` overrides it.
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
}

/// What a schedule does about ticks that passed while no worker ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissedTicks {
    /// Forget them: the next tick is the next one after start-up.
    #[default]
    Skip,
    /// Run the latest missed tick once at start-up (if the schedule has run
    /// before), then go on as usual.
    Once,
}

impl MissedTicks {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Once => "once",
        }
    }
}

/// A cron schedule (`[default.schedules.<name>]`): every worker keeps the
/// clock, and each tick enqueues `task` once fleet-wide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// The registered task to enqueue.
    pub task: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first.
    pub cron: String,
    /// The IANA time zone the fields are read in.
    #[serde(default = "utc")]
    pub tz: String,
    /// The task's arguments (a table; fields left out take their defaults).
    #[serde(default)]
    pub args: figment::value::Dict,
    /// The lane, if not the task's own.
    #[serde(default)]
    pub lane: Option<String>,
    /// Ticks missed while no worker ran: `skip` (the default) or `once`.
    #[serde(default)]
    pub missed: MissedTicks,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// The board (`board` binary): the web page that shows and steers the queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSettings {
    /// Where it listens (`127.0.0.1:9465`).
    pub addr: String,
    /// The password of its login page. Without one the board starts only on
    /// a loopback address, and then asks for no login.
    #[serde(default)]
    pub password: Option<Secret>,
    /// How long a login lasts.
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// Connections held at once (more are closed on accept).
    pub max_connections: usize,
    /// Time to send a request's headers, and to stay idle between requests.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
}

/// The task index: finished tasks written to the database in batches, off
/// the hot path, so history outlives the result TTL and can be searched by
/// argument (the board's task search).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSettings {
    /// Workers index what they finish.
    pub enabled: bool,
    /// Rows older than this are deleted.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Rows per insert.
    pub batch: usize,
    /// Finished tasks waiting to be written; past it new ones are not
    /// indexed (counted in the worker's `/metrics` as
    /// `courier_task_index_dropped_total`), so a slow database never slows tasks.
    pub queue: usize,
}
