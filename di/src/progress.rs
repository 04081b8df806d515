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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::components::result_store::StoreError;
    use crate::record::ResultRecord;

    /// Counts progress writes and keeps the last one.
    #[derive(Default)]
    struct Counting {
        writes: AtomicUsize,
        last: Mutex<Option<TaskProgress>>,
    }

    #[async_trait]
    impl ResultStore for Counting {
        async fn put(&self, _: &str, _: &ResultRecord) -> Result<(), StoreError> {
            Ok(())
        }
        async fn put_if_absent(&self, _: &str, _: &ResultRecord) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn get(&self, _: &str) -> Result<Option<ResultRecord>, StoreError> {
            Ok(None)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn ttl(&self) -> Duration {
            Duration::from_secs(60)
        }
        async fn set_progress(&self, _: &str, progress: &TaskProgress) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            *self.last.lock().unwrap() = Some(progress.clone());
            Ok(())
        }
    }

    /// A task reporting every 5 ms for a second costs at most one write per
    /// `MIN_GAP` (plus the first), and the last report is the one stored.
    #[tokio::test]
    async fn reports_are_coalesced_and_the_last_one_is_written() {
        let store = Arc::new(Counting::default());
        let reporter = Reporter { state: Arc::default() };
        let started = Instant::now();
        let mut reports = 0;
        while started.elapsed() < Duration::from_secs(1) {
            reports += 1;
            reporter.report(store.clone(), "t", f64::from(reports) / 1000.0, &format!("step {reports}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(MIN_GAP * 2).await;
        let took = started.elapsed();
        let writes = store.writes.load(Ordering::SeqCst);
        let most = usize::try_from(took.as_millis() / MIN_GAP.as_millis()).unwrap() + 1;
        assert!(writes >= 2 && writes <= most, "{reports} reports in {took:?} made {writes} writes (at most {most})");
        let last = store.last.lock().unwrap().clone().unwrap();
        assert_eq!(last.message, format!("step {reports}"), "the latest report is written");
    }
}
