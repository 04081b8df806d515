//! Cancelling tasks. `Producer::cancel` writes a final `cancelled` record
//! (only if the task has no final record yet). A task that has not started
//! then never runs: every delivery finds its record final and is acked. A
//! running task is told through its context: each worker reads, every half
//! second, the final records of the tasks it runs (one round trip for all)
//! and cancels the token of those cancelled, so `ctx.cancelled()` resolves
//! within about half a second on whichever worker runs it. A task that
//! stops then ends `cancelled` with its session rolled back; one that
//! ignores the signal and succeeds ends `success`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ResultStore;

/// Task id to the attempts running under it (one, unless a redelivery
/// overlaps a slow attempt), each with a number of its own.
type Running = HashMap<String, Vec<(u64, CancellationToken)>>;

/// The tasks running in this process, by task id.
#[derive(Debug, Clone, Default)]
pub struct Cancellations {
    running: Arc<Mutex<Running>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// Keeps a running task registered; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    cancellations: Cancellations,
    task_id: String,
    number: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut running = self.cancellations.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tokens) = running.get_mut(&self.task_id) {
            tokens.retain(|(number, _)| *number != self.number);
            if tokens.is_empty() {
                running.remove(&self.task_id);
            }
        }
    }
}

impl Cancellations {
    /// Registers `task_id` as running with `token` until the guard drops.
    pub(crate) fn enter(&self, task_id: &str, token: CancellationToken) -> Registered {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.entry(task_id.to_owned()).or_default().push((number, token));
        Registered { cancellations: self.clone(), task_id: task_id.to_owned(), number }
    }

    /// Every `every`: reads which running tasks were cancelled and cancels
    /// their tokens. Store errors are retried at the next round.
    pub async fn watch(&self, store: Arc<dyn ResultStore>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let ids: Vec<String> =
                self.running.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            let Ok(cancelled) = store.cancelled_among(&ids).await else { continue };
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            for id in cancelled {
                for (_, token) in running.get(&id).into_iter().flatten() {
                    token.cancel();
                }
            }
        }
    }
}
