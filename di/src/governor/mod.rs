//! Flood control shared by every worker of one bot: Telegram's limits (about
//! 30 messages a second overall, 1 a second to one private chat, 20 a minute
//! to one group) enforced in Redis, so N workers on N machines send like one
//! careful sender.
//!
//! One Lua script per send, one round trip. Time comes from Redis `TIME`,
//! so worker clocks do not matter. The buckets are GCRA (a theoretical
//! arrival time per key, no counters to drift): the global one, a share of
//! it for traffic that is not interactive (the rest stays free for replies),
//! and one per chat (private chats by the second, groups and channels, whose
//! ids are negative, by the minute). A send is admitted with a wait: if the
//! wait is within `telegram.limits.wait_threshold` the slot is reserved and
//! the caller sleeps that long; a longer wait reserves nothing and the task
//! is handed back for that long, without spending an attempt; tasks handed
//! back for one chat (or held up by the lane's rate) come back spread one
//! interval apart, not together. A `429` from Telegram freezes that chat for
//! `retry_after` for every worker; 429s from several chats within a second
//! freeze the whole bot. The `paid` lane has a bucket of its own (up to 1000
//! a second, outside the global budget) and a daily Stars budget counted in
//! Redis. Every key carries the hash tag `{<bot id>}`, so one script's keys
//! share a Redis Cluster slot. The scripts are in `scripts.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::{RedisClient, RedisConn, SharedConn};
use serde::{Deserialize, Serialize};
use settings::TelegramLimits;

mod fallback;
mod scripts;
mod status;

use fallback::LocalLimiter;
use settings::PaidWhenSpent;
pub use status::{FrozenKey, GovernorStatus, MOST_FROZEN_LISTED};

/// Who a message is for, which decides its share of the bot's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// A reply to a user who is waiting: the bot's own tasks. Has a reserved
    /// share of the global budget.
    Interactive,
    /// Notifications a user expects soon (the default).
    #[default]
    Transactional,
    /// Broadcasts and other mass sends: never in front of the other lanes.
    Bulk,
    /// Paid broadcasts (`allow_paid_broadcast`): up to
    /// `telegram.limits.paid_per_second` outside the global budget, 0.1
    /// Telegram Stars a message, within `paid_daily_stars` a day; then as
    /// `paid_when_spent` says.
    Paid,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Lane; 4] = [Lane::Interactive, Lane::Transactional, Lane::Bulk, Lane::Paid];

    /// The lane's name as in labels and settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Transactional => "transactional",
            Self::Bulk => "bulk",
            Self::Paid => "paid",
        }
    }

    /// Reads a name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|lane| lane.name() == name)
    }
}

/// What flood control reports as it works (the worker's metrics implement
/// it). Every call names a lane: three values, so metric series stay few.
pub trait FloodObserver: Send + Sync + 'static {
    /// A message was admitted, to go after `waited`.
    fn admitted(&self, lane: Lane, waited: Duration);
    /// A message had no budget: its task is handed back for `wait`.
    fn deferred(&self, lane: Lane, wait: Duration);
    /// Telegram answered 429; `bot_wide` when that froze the whole bot.
    fn rate_limited(&self, lane: Lane, bot_wide: bool);
    /// Redis could not be reached (`true`: the per-process fallback is in
    /// force) or answers again (`false`).
    fn fallback(&self, active: bool);
    /// A paid broadcast was admitted (0.1 Telegram Stars).
    fn paid(&self) {}
}

/// The governor's answer for one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send after this wait (zero: at once); the slot is reserved.
    Go(Duration),
    /// Send after this wait as a paid broadcast (`allow_paid_broadcast`):
    /// the slot is reserved and 0.1 Stars counted as spent.
    GoPaid(Duration),
    /// Do not send now: nothing was reserved; try again after this long.
    Later(Duration),
}

/// Why the governor could not decide (Redis unreachable or refusing).
#[derive(Debug, Clone, thiserror::Error)]
#[error("flood-control store unavailable: {0}")]
pub struct GovernorError(pub String);

/// One bucket: the time between two sends and how many may go at once.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    interval_us: i64,
    tau_us: i64,
}

impl Bucket {
    fn per_second(rate: f64, burst: u32) -> Self {
        let interval_us = (1_000_000.0 / rate.max(1e-6)).round() as i64;
        Self { interval_us, tau_us: interval_us * i64::from(burst.max(1) - 1) }
    }
}

/// The limits as buckets.
#[derive(Debug, Clone)]
struct Plan {
    global: Bucket,
    shared: Bucket,
    private: Bucket,
    group: Bucket,
    paid: Bucket,
    /// The day's Stars budget, in tenths (one paid message each).
    paid_tenths: i64,
    pause_when_spent: bool,
    threshold_us: i64,
}

impl Plan {
    fn new(limits: &TelegramLimits) -> Self {
        let shared_rate = limits.global_per_second * (1.0 - limits.interactive_reserve);
        Self {
            global: Bucket::per_second(limits.global_per_second, limits.global_burst),
            shared: Bucket::per_second(shared_rate, limits.global_burst),
            private: Bucket::per_second(limits.private_per_second, limits.private_burst),
            group: Bucket::per_second(limits.group_per_minute / 60.0, limits.group_burst),
            paid: Bucket::per_second(limits.paid_per_second, limits.paid_burst),
            paid_tenths: i64::try_from(limits.paid_daily_stars.saturating_mul(10)).unwrap_or(i64::MAX),
            pause_when_spent: limits.paid_when_spent == PaidWhenSpent::Pause,
            threshold_us: i64::try_from(limits.wait_threshold.as_micros()).unwrap_or(i64::MAX),
        }
    }

    fn chat(&self, chat_id: i64) -> Bucket {
        if chat_id < 0 { self.group } else { self.private }
    }
}

/// The governor of one bot: Redis first, a conservative in-process limiter
/// while Redis cannot answer (never unthrottled).
pub struct Governor {
    /// Keys start with this (the result store's prefix, then `tg:{<bot id>}:`).
    prefix: String,
    plan: Plan,
    limits: TelegramLimits,
    redis: Option<SharedConn>,
    admit: redis::Script,
    budget: redis::Script,
    freeze: redis::Script,
    status: redis::Script,
    fallback: LocalLimiter,
    /// Whether the last decision came from the fallback (logged on change).
    falling_back: std::sync::atomic::AtomicBool,
    observer: std::sync::OnceLock<Arc<dyn FloodObserver>>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor").field("prefix", &self.prefix).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Governor {
    /// A governor for bot `bot_id` (from `getMe`, never the token) over
    /// `redis` (`None`: in-process only, for a bot with no Redis at hand).
    pub fn new(bot_id: i64, key_prefix: &str, limits: TelegramLimits, redis: Option<RedisClient>) -> Self {
        Self {
            prefix: format!("{key_prefix}tg:{{{bot_id}}}:"),
            plan: Plan::new(&limits),
            fallback: LocalLimiter::new(&limits),
            limits,
            redis: redis.map(SharedConn::new),
            admit: redis::Script::new(scripts::ADMIT),
            budget: redis::Script::new(scripts::BUDGET),
            freeze: redis::Script::new(scripts::FREEZE),
            status: redis::Script::new(scripts::STATUS),
            falling_back: std::sync::atomic::AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Reports every decision to `observer` from now on (set once).
    pub fn observe(&self, observer: Arc<dyn FloodObserver>) {
        let _ = self.observer.set(observer);
    }

    fn fallback_changed(&self, active: bool) {
        use std::sync::atomic::Ordering;
        if self.falling_back.swap(active, Ordering::AcqRel) != active {
            if active {
                tracing::warn!("flood control falls back to the per-process limit: Redis is unreachable");
            } else {
                tracing::info!("flood control is shared again: Redis answers");
            }
            if let Some(observer) = self.observer.get() {
                observer.fallback(active);
            }
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &TelegramLimits {
        &self.limits
    }

    /// The key prefix of this bot's flood-control state.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Asks to send one message to `chat_id` in `lane`.
    pub async fn admit(&self, chat_id: i64, lane: Lane) -> Admission {
        self.admit_within(chat_id, lane, None).await
    }

    /// [`Governor::admit`], reserving the slot for a wait up to `most`
    /// (`None`: `telegram.limits.wait_threshold`).
    pub async fn admit_within(&self, chat_id: i64, lane: Lane, most: Option<Duration>) -> Admission {
        let threshold_us =
            most.map_or(self.plan.threshold_us, |most| i64::try_from(most.as_micros()).unwrap_or(i64::MAX));
        let admission = match self.admit_shared(chat_id, lane, threshold_us).await {
            Ok(admission) => {
                self.fallback_changed(false);
                admission
            }
            Err(err) => {
                tracing::debug!(%err, "flood-control store unavailable");
                self.fallback_changed(true);
                self.fallback.admit(chat_id, threshold_us)
            }
        };
        if let Some(observer) = self.observer.get() {
            match admission {
                Admission::Go(wait) => observer.admitted(lane, wait),
                Admission::GoPaid(wait) => {
                    observer.admitted(lane, wait);
                    observer.paid();
                }
                Admission::Later(wait) => observer.deferred(lane, wait),
            }
        }
        admission
    }

    async fn admit_shared(&self, chat_id: i64, lane: Lane, threshold_us: i64) -> Result<Admission, GovernorError> {
        let mut conn = self.conn().await?;
        let plan = &self.plan;
        let chat = plan.chat(chat_id);
        let none = Bucket { interval_us: 0, tau_us: 0 };
        let shared = if lane == Lane::Interactive { none } else { plan.shared };
        let paid = if lane == Lane::Paid { plan.paid } else { none };
        let mut call = self.admit.prepare_invoke();
        for key in ["freeze", &format!("freeze:{chat_id}"), "global", "shared", &format!("chat:{chat_id}"), "paid"] {
            call.key(self.key(key));
        }
        call.key(self.key(&format!("queue:{chat_id}")))
            .key(self.key("queue:global"))
            .key(self.key("stars"))
            .key(self.key("rates"))
            .key(self.key("queue:paid"));
        call.arg(plan.global.interval_us)
            .arg(plan.global.tau_us)
            .arg(shared.interval_us)
            .arg(shared.tau_us)
            .arg(chat.interval_us)
            .arg(chat.tau_us)
            .arg(threshold_us)
            .arg(lane.name())
            .arg(paid.interval_us)
            .arg(paid.tau_us)
            .arg(plan.paid_tenths)
            .arg(u8::from(plan.pause_when_spent));
        let (go, wait_us, paid): (i64, i64, i64) = call.invoke_async(&mut conn).await.map_err(|e| self.failed(e))?;
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        Ok(match (go, paid) {
            (1, 1) => Admission::GoPaid(wait),
            (1, _) => Admission::Go(wait),
            _ => Admission::Later(wait),
        })
    }

    /// How many messages of a paced lane (`bulk`, `paid`; at most `most`)
    /// its budget would let through now, or how long until one: those
    /// lanes pull no faster. Without Redis, `most` (the sends themselves
    /// are still limited).
    pub async fn budget(&self, lane: Lane, most: usize) -> (usize, Duration) {
        let plan = &self.plan;
        let paid = if lane == Lane::Paid { plan.paid } else { Bucket { interval_us: 0, tau_us: 0 } };
        let asked = async {
            let mut conn = self.conn().await?;
            let mut call = self.budget.prepare_invoke();
            for key in ["freeze", "global", "shared", "paid", "stars"] {
                call.key(self.key(key));
            }
            call.arg(plan.global.interval_us)
                .arg(plan.global.tau_us)
                .arg(plan.shared.interval_us)
                .arg(plan.shared.tau_us)
                .arg(paid.interval_us)
                .arg(paid.tau_us)
                .arg(most)
                .arg(plan.paid_tenths)
                .arg(u8::from(plan.pause_when_spent));
            let (n, wait_us): (i64, i64) = call.invoke_async(&mut conn).await.map_err(|e| self.failed(e))?;
            Ok::<_, GovernorError>((usize::try_from(n).unwrap_or(0), Duration::from_micros(wait_us.unsigned_abs())))
        };
        asked.await.unwrap_or((most, Duration::ZERO))
    }

    /// [`Governor::budget`] of the bulk lane.
    pub async fn bulk_budget(&self, most: usize) -> (usize, Duration) {
        self.budget(Lane::Bulk, most).await
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Telegram answered 429 for `chat_id`: freezes that chat for
    /// `retry_after` (at most `telegram.limits.max_retry_after`) for every
    /// worker, and the bot, when several chats were refused within a second,
    /// for the shortest of their waits. Returns whether the bot is frozen.
    pub async fn rate_limited(&self, chat_id: i64, lane: Lane, retry_after: Duration) -> bool {
        let retry_after = retry_after.min(self.limits.max_retry_after);
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        self.fallback.freeze(chat_id, retry_after);
        let frozen = async {
            let mut conn = self.conn().await?;
            let mut call = self.freeze.prepare_invoke();
            call.key(self.key(&format!("freeze:{chat_id}")))
                .key(self.key("freeze"))
                .key(self.key("recent429"))
                .key(self.key("frozen"))
                .key(self.key("recent429:shortest"))
                .arg(ms)
                .arg(chat_id)
                .arg(self.limits.global_freeze_chats);
            let bot: i64 = call.invoke_async(&mut conn).await.map_err(|e| self.failed(e))?;
            Ok::<_, GovernorError>(bot == 1)
        };
        let bot_wide = match frozen.await {
            Ok(bot) => bot,
            Err(err) => {
                tracing::warn!(%err, chat_id, "cannot share the 429 freeze; frozen in this process only");
                false
            }
        };
        if let Some(observer) = self.observer.get() {
            observer.rate_limited(lane, bot_wide);
        }
        bot_wide
    }

    async fn conn(&self) -> Result<RedisConn, GovernorError> {
        let shared = self.redis.as_ref().ok_or_else(|| GovernorError("no Redis configured".to_owned()))?;
        shared.get().await.map_err(|e| GovernorError(e.to_string()))
    }

    fn failed(&self, err: redis::RedisError) -> GovernorError {
        if let Some(shared) = &self.redis {
            shared.after_error(&err);
        }
        GovernorError(err.to_string())
    }
}

/// The governor of the bot in `settings` (its id from `getMe`), over the
/// Redis of `settings.redis`; `None` for a log-only bot, which sends
/// nothing, and when `telegram.limits.enforce` is off (said in a warning).
pub async fn connect(
    bot: &crate::TelegramBot,
    settings: &settings::Settings,
) -> Result<Option<Arc<Governor>>, crate::StartupError> {
    use crate::error::Component as Part;
    let unreachable = |reason: String| crate::StartupError::Unreachable {
        component: Part::Telegram,
        url: settings.telegram.api_url.clone(),
        reason,
    };
    if !settings.telegram.limits.enforce && bot.is_live() {
        tracing::warn!("flood control is off (telegram.limits.enforce = false): messages go out unthrottled");
        return Ok(None);
    }
    let Some(bot_id) = bot.bot_id().await.map_err(|err| unreachable(err.to_string()))? else { return Ok(None) };
    let client = crate::components::result_store::redis_client(&settings.redis).map_err(|err| {
        crate::StartupError::unreachable(
            Part::Redis,
            settings.redis.url.redacted(),
            &err,
            &[&settings.redis.url.password().unwrap_or_default()],
        )
    })?;
    let limits = settings.telegram.limits.clone();
    let governor = Governor::new(bot_id, &settings.redis.key_prefix, limits, Some(client));
    // The scripts must run: a Redis that refuses them (an ACL without
    // EVAL, a managed service without Lua) would leave every worker on the
    // small fallback limit for good, saying so only in a warning.
    if let Err(err) = governor.status().await {
        return Err(crate::StartupError::Refused {
            component: Part::Redis,
            url: settings.redis.url.redacted(),
            reason: format!("the flood-control scripts cannot run: {err}"),
        });
    }
    Ok(Some(Arc::new(governor)))
}
