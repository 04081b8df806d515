//! The governor's stand-in while Redis cannot be reached: the same per-chat
//! limits in this process, and a small global rate of its own, so a worker
//! never sends unthrottled.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use settings::TelegramLimits;

use super::{Admission, Bucket, Plan};

/// The in-process stand-in while Redis is unreachable: the same per-chat
/// limits, and a global rate of `telegram.limits.fallback_per_second` (a
/// share small enough for several workers at once).
#[derive(Debug)]
pub(super) struct LocalLimiter {
    global: Bucket,
    plan: Plan,
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    global_tat: i64,
    chats: HashMap<i64, i64>,
    frozen: HashMap<i64, Instant>,
    /// When the last handed-back send of a chat was told to return (as the
    /// shared governor's `queue:<chat>`: returns are spread, not together).
    queue: HashMap<i64, i64>,
}

/// Chats remembered by the fallback before the oldest are forgotten.
const LOCAL_CHATS: usize = 10_000;

impl LocalLimiter {
    pub(super) fn new(limits: &TelegramLimits) -> Self {
        Self {
            global: Bucket::per_second(limits.fallback_per_second, 1),
            plan: Plan::new(limits),
            state: Mutex::new(LocalState::default()),
        }
    }

    pub(super) fn admit(&self, chat_id: i64, threshold_us: i64) -> Admission {
        let epoch = epoch();
        let now = i64::try_from(epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = state.frozen.get(&chat_id).copied() {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Admission::Later(left);
            }
            state.frozen.remove(&chat_id);
        }
        if state.chats.len() > LOCAL_CHATS {
            state.chats.retain(|_, tat| *tat > now);
        }
        if state.queue.len() > LOCAL_CHATS {
            state.queue.retain(|_, back| *back > now);
        }
        let chat = self.plan.chat(chat_id);
        let global_tat = state.global_tat.max(now);
        let chat_tat = state.chats.get(&chat_id).copied().unwrap_or(now).max(now);
        let wait = (global_tat - self.global.tau_us - now).max(chat_tat - chat.tau_us - now).max(0);
        if wait > threshold_us {
            let back = (now + wait).max(state.queue.get(&chat_id).copied().unwrap_or(0));
            state.queue.insert(chat_id, back + chat.interval_us.max(self.global.interval_us));
            return Admission::Later(Duration::from_micros((back - now).unsigned_abs()));
        }
        state.global_tat = global_tat + self.global.interval_us;
        state.chats.insert(chat_id, chat_tat + chat.interval_us);
        Admission::Go(Duration::from_micros(wait.unsigned_abs()))
    }

    pub(super) fn freeze(&self, chat_id: i64, retry_after: Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.frozen.len() > LOCAL_CHATS {
            let now = Instant::now();
            state.frozen.retain(|_, until| *until > now);
        }
        state.frozen.insert(chat_id, Instant::now() + retry_after);
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
