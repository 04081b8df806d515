//! Telegram's flood rules as a fake Bot API enforces them: the same three
//! limits as `telegram.limits` (global, per private chat, per group), as
//! token buckets (capacity = burst, refilled at the rate), so a sender that
//! keeps to the settings never sees a 429, and one that does not gets
//! `429 retry_after` like Telegram answers. Also chats told to be blocked
//! (403) or unknown (400), and injected 429s on a chat or the whole bot.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use settings::TelegramLimits;

/// How much earlier than its bucket allows a message may arrive: the
/// network and the scheduler move sends by a few milliseconds, which a
/// sender cannot control and Telegram tolerates.
pub const ARRIVAL_TOLERANCE: Duration = Duration::from_millis(30);

/// What the fake answers one `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Accept,
    /// 429 Too Many Requests, with `parameters.retry_after` in seconds.
    TooMany {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// 403: the user blocked the bot.
    Blocked,
    /// 403: the user's account is deactivated.
    Deactivated,
    /// 400: chat not found.
    NotFound,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: u32, now: Instant) -> Self {
        Self { rate, burst: f64::from(burst), tokens: f64::from(burst), at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Seconds until one token (with the arrival tolerance), or `None`
    /// if one is there.
    fn short_by(&self) -> Option<f64> {
        let need = 1.0 - self.rate * ARRIVAL_TOLERANCE.as_secs_f64();
        (self.tokens < need).then(|| (need - self.tokens) / self.rate)
    }
}

/// The rules and the state of one fake bot.
#[derive(Debug)]
pub struct FloodRules {
    limits: TelegramLimits,
    global: Bucket,
    /// Paid broadcasts (`allow_paid_broadcast`): outside the global limit.
    paid: Bucket,
    chats: HashMap<i64, Bucket>,
    blocked: HashSet<i64>,
    deactivated: HashSet<i64>,
    unknown: HashSet<i64>,
    frozen_chats: HashMap<i64, (Instant, u64)>,
    frozen_bot: Option<(Instant, u64)>,
    /// 429s answered so far.
    pub too_many: u64,
    /// Paid broadcasts accepted so far (0.1 Telegram Stars each).
    pub paid_accepted: u64,
}

impl FloodRules {
    /// Rules enforcing `limits`.
    pub fn new(limits: TelegramLimits) -> Self {
        let global = Bucket::new(limits.global_per_second, limits.global_burst, Instant::now());
        let paid = Bucket::new(limits.paid_per_second, limits.paid_burst, Instant::now());
        Self {
            limits,
            global,
            paid,
            paid_accepted: 0,
            chats: HashMap::new(),
            blocked: HashSet::new(),
            deactivated: HashSet::new(),
            unknown: HashSet::new(),
            frozen_chats: HashMap::new(),
            frozen_bot: None,
            too_many: 0,
        }
    }

    /// From now on, `chat_id` has blocked the bot (403).
    pub fn block(&mut self, chat_id: i64) {
        self.blocked.insert(chat_id);
    }

    /// From now on, `chat_id`'s account is deactivated (403).
    pub fn deactivate(&mut self, chat_id: i64) {
        self.deactivated.insert(chat_id);
    }

    /// From now on, `chat_id` does not exist (400).
    pub fn forget(&mut self, chat_id: i64) {
        self.unknown.insert(chat_id);
    }

    /// Every message to `chat_id` gets 429 with `retry_after` seconds for
    /// that long.
    pub fn inject_chat_429(&mut self, chat_id: i64, retry_after: u64) {
        self.frozen_chats.insert(chat_id, (Instant::now() + Duration::from_secs(retry_after), retry_after));
    }

    /// Every message gets 429 with `retry_after` seconds for that long.
    pub fn inject_global_429(&mut self, retry_after: u64) {
        self.frozen_bot = Some((Instant::now() + Duration::from_secs(retry_after), retry_after));
    }

    /// Judges one message to `chat_id` arriving now; an accepted one uses
    /// its tokens.
    pub fn judge(&mut self, chat_id: i64) -> Verdict {
        self.judge_message(chat_id, false)
    }

    /// Judges one message, `paid` when sent with `allow_paid_broadcast`
    /// (limited by `paid_per_second` instead of the global limit).
    pub fn judge_message(&mut self, chat_id: i64, paid: bool) -> Verdict {
        let now = Instant::now();
        if self.blocked.contains(&chat_id) {
            return Verdict::Blocked;
        }
        if self.deactivated.contains(&chat_id) {
            return Verdict::Deactivated;
        }
        if self.unknown.contains(&chat_id) {
            return Verdict::NotFound;
        }
        let frozen = [self.frozen_bot, self.frozen_chats.get(&chat_id).copied()];
        if let Some((until, _)) = frozen.into_iter().flatten().filter(|(until, _)| *until > now).max_by_key(|(u, _)| *u)
        {
            return self.too_many(until.saturating_duration_since(now).as_secs_f64());
        }
        let limits = &self.limits;
        let (rate, burst) = if chat_id < 0 {
            (limits.group_per_minute / 60.0, limits.group_burst)
        } else {
            (limits.private_per_second, limits.private_burst)
        };
        let chat = self.chats.entry(chat_id).or_insert_with(|| Bucket::new(rate, burst, now));
        chat.refill(now);
        let overall = if paid { &mut self.paid } else { &mut self.global };
        overall.refill(now);
        let short = [overall.short_by(), chat.short_by()]
            .into_iter()
            .flatten()
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
        if let Some(seconds) = short {
            return self.too_many(seconds);
        }
        overall.tokens -= 1.0;
        chat.tokens -= 1.0;
        self.paid_accepted += u64::from(paid);
        Verdict::Accept
    }

    fn too_many(&mut self, seconds: f64) -> Verdict {
        self.too_many += 1;
        // Telegram says whole seconds, at least one.
        Verdict::TooMany { retry_after: (seconds.ceil() as u64).max(1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TelegramLimits {
        TelegramLimits {
            enforce: true,
            global_per_second: 10.0,
            global_burst: 2,
            private_per_second: 1.0,
            private_burst: 2,
            group_per_minute: 20.0,
            group_burst: 1,
            interactive_reserve: 0.2,
            wait_threshold: Duration::from_millis(250),
            global_freeze_chats: 3,
            max_retry_after: Duration::from_secs(3600),
            fallback_per_second: 5.0,
            paid_per_second: 100.0,
            paid_burst: 5,
            paid_daily_stars: 0,
            paid_when_spent: settings::PaidWhenSpent::Free,
        }
    }

    #[test]
    fn bursts_then_429_with_retry_after() {
        let mut rules = FloodRules::new(limits());
        assert_eq!(rules.judge(1), Verdict::Accept);
        assert_eq!(rules.judge(1), Verdict::Accept);
        assert_eq!(rules.judge(1), Verdict::TooMany { retry_after: 1 });
        assert_eq!(rules.too_many, 1);
        // The global burst of 2 is used up too.
        assert!(matches!(rules.judge(2), Verdict::TooMany { .. }));
    }

    #[test]
    fn groups_get_one_message_then_wait_three_seconds() {
        let mut limits = limits();
        limits.global_burst = 10;
        let mut rules = FloodRules::new(limits);
        assert_eq!(rules.judge(-100), Verdict::Accept);
        assert_eq!(rules.judge(-100), Verdict::TooMany { retry_after: 3 });
        assert_eq!(rules.judge(5), Verdict::Accept, "other chats are not affected");
    }

    #[test]
    fn blocked_unknown_and_injected() {
        let mut rules = FloodRules::new(limits());
        rules.block(7);
        rules.forget(8);
        rules.deactivate(9);
        rules.inject_chat_429(10, 3);
        assert_eq!(rules.judge(7), Verdict::Blocked);
        assert_eq!(rules.judge(8), Verdict::NotFound);
        assert_eq!(rules.judge(9), Verdict::Deactivated);
        assert_eq!(rules.judge(10), Verdict::TooMany { retry_after: 3 });
        assert_eq!(rules.judge(11), Verdict::Accept);
        rules.inject_global_429(5);
        assert_eq!(rules.judge(12), Verdict::TooMany { retry_after: 5 });
    }

    #[test]
    fn paid_broadcasts_pass_a_spent_global_limit_but_not_the_chat_limit() {
        let mut rules = FloodRules::new(limits());
        assert_eq!(rules.judge(1), Verdict::Accept);
        assert_eq!(rules.judge(2), Verdict::Accept);
        assert!(matches!(rules.judge(3), Verdict::TooMany { .. }), "the global burst of 2 is used up");
        assert_eq!(rules.judge_message(3, true), Verdict::Accept);
        assert_eq!(rules.judge_message(4, true), Verdict::Accept);
        assert_eq!(rules.judge_message(3, true), Verdict::Accept, "the chat's burst of 2");
        assert!(matches!(rules.judge_message(3, true), Verdict::TooMany { .. }), "the chat's limit holds");
        assert_eq!(rules.paid_accepted, 3);
    }
}
