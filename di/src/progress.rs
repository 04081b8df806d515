//! Task progress: `ctx.progress(fraction, message)` from inside a task,
//! kept beside its record (`<prefix><task_id>:progress`, same TTL) so it can
//! never overwrite the record's status, and coalesced: at most one write per
//! [`MIN_GAP`] per task, the latest value always written.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ResultStore;

/// The least time between two progress writes of one task.
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// The longest progress message kept (characters).
pub const MAX_MESSAGE: usize = 200;

/// How far a task is, as it last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// From 0 to 1.
    pub fraction: f64,
    /// What it is doing.
    pub message: String,
    /// When it said so, Unix seconds.
    pub at: f64,
}

impl TaskProgress {
    /// A report, with the fraction clamped to 0..=1 and the message cut.
    pub fn new(fraction: f64, message: &str) -> Self {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        Self { fraction, message: message.chars().take(MAX_MESSAGE).collect(), at: crate::unix_now() }
    }
}

/// One task attempt's reports, coalesced.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    last_write: Option<Instant>,
    pending: Option<TaskProgress>,
    /// A write is on its way and will take `pending` with it.
    scheduled: bool,
}

impl Reporter {
    /// Keeps the report and makes sure it is written within [`MIN_GAP`].
    pub(crate) fn report(&self, store: Arc<dyn ResultStore>, task_id: &str, fraction: f64, message: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending = Some(TaskProgress::new(fraction, message));
        if state.scheduled {
            return;
        }
        state.scheduled = true;
        let wait = state.last_write.map_or(Duration::ZERO, |at| MIN_GAP.saturating_sub(at.elapsed()));
        let shared = self.state.clone();
        let task_id = task_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let progress = {
                let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                state.scheduled = false;
                state.last_write = Some(Instant::now());
                state.pending.take()
            };
            if let Some(progress) = progress
                && let Err(err) = store.set_progress(&task_id, &progress).await
            {
                tracing::debug!(%err, task_id, "progress not written");
            }
        });
    }
}
