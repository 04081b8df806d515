//! What every message handler shares: the executor, the publisher, the
//! store, metrics and flood control, and the two "retry only this" paths
//! (a record that could not be saved, a dead-letter copy that failed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use di::{Delivery, Execution, Executor, Lane, ProcessError, ResultStore};
use tokio_util::sync::CancellationToken;

use crate::broker::Topology;
use crate::broker::publish::Publisher;

/// When the result store is down: how long a message waits before it comes
/// back, and how often the store is probed before pulling resumes.
pub(crate) const STORE_RETRY: Duration = Duration::from_secs(2);
/// How often a dead-letter copy is tried before the message is handed back
/// (its failed record is kept, so the redelivery only retries the copy).
const DEAD_LETTER_TRIES: u32 = 5;

/// What the loop needs, shared by every message handler.
pub struct Runtime {
    /// Runs envelopes.
    pub executor: Executor,
    /// Dead letters go out through it.
    pub publisher: Publisher,
    /// The store, probed while it is unreachable.
    pub store: Arc<dyn ResultStore>,
    /// Progress-ack period (a third of `ack_wait`).
    pub progress_every: Duration,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<crate::http::metrics::Metrics>,
    /// Re-creates the streams when a dead-letter copy finds none (JetStream mode).
    pub topology: Option<Topology>,
    /// Flood control, to pace the bulk lane (`None`: a log-only bot).
    pub governor: Option<Arc<di::Governor>>,
    /// Campaign bookkeeping (JetStream workers with a database).
    pub campaigns: Option<crate::campaign::worker::CampaignGate>,
    /// The task index finished tasks are written to (`index.enabled`).
    pub index: Option<Arc<crate::index::Indexer>>,
    /// False while the store is unreachable: pulling pauses.
    pub(crate) store_ok: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("executor", &self.executor).field("store_ok", &self.store_ok).finish()
    }
}

/// Decrements the in-flight gauge however the execution ends (an abort
/// at the hard stop included).
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Runtime {
    /// A runtime over its parts.
    pub fn new(
        executor: Executor,
        publisher: Publisher,
        store: Arc<dyn ResultStore>,
        progress_every: Duration,
        metrics: Arc<crate::http::metrics::Metrics>,
        topology: Option<Topology>,
    ) -> Self {
        Self {
            executor,
            publisher,
            store,
            progress_every,
            metrics,
            topology,
            governor: None,
            campaigns: None,
            index: None,
            store_ok: AtomicBool::new(true),
        }
    }

    /// Paces the bulk lane by `governor`'s budget.
    pub fn with_governor(mut self, governor: Option<Arc<di::Governor>>) -> Self {
        self.governor = governor;
        self
    }

    /// Checks campaign messages before they run, and records their outcomes.
    pub fn with_campaigns(mut self, gate: crate::campaign::worker::CampaignGate) -> Self {
        self.campaigns = Some(gate);
        self
    }

    /// Writes finished tasks to the task index.
    pub fn with_index(mut self, index: Option<Arc<crate::index::Indexer>>) -> Self {
        self.index = index;
        self
    }

    /// Runs one message through the executor, counted as in flight.
    pub async fn execute(&self, bytes: &[u8], delivery: &Delivery) -> Result<Execution, ProcessError> {
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        self.executor.process(bytes, delivery).await
    }

    /// After a message is settled: counts it, and when its record is final
    /// wakes the producers waiting for it.
    pub async fn finished(&self, payload: &bytes::Bytes, execution: Execution) {
        self.metrics.observe(&execution);
        let already = matches!(execution.outcome, di::Outcome::AlreadyFinished(_));
        if let (Some(id), Some(record)) = (execution.task_id, execution.record)
            && record.status.is_final()
        {
            self.publisher.notify_done(&id).await;
            if let Some(index) = self.index.as_ref().filter(|_| !already) {
                index.add(id, payload, record, execution.arguments);
            }
        }
    }

    /// Marks the store unreachable: pulling pauses until it answers.
    pub(crate) fn store_failed(&self) {
        self.store_ok.store(false, Ordering::Release);
    }

    /// Retries saving a finished attempt's record (never the task) until it
    /// is saved (true) or `give_up` is cancelled (false).
    pub(crate) async fn save_until_saved(&self, execution: &Execution, give_up: &CancellationToken) -> bool {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.executor.save(execution).await {
                Ok(()) => return true,
                Err(err) => {
                    tracing::warn!(%err, retry_in = %crate::telemetry::human(pause), "record not saved yet; retrying the save only")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = give_up.cancelled() => return false,
            }
            pause = (pause * 2).min(STORE_RETRY);
        }
    }

    /// Copies a message to the dead letters, retrying the copy alone (and
    /// re-creating a missing dead-letter stream) a few times.
    pub(crate) async fn dead_letter(
        &self,
        payload: &bytes::Bytes,
        subject: &str,
        execution: &Execution,
        reason: &str,
        dedup: &str,
    ) -> Result<(), crate::broker::publish::PublishError> {
        let mut pause = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            let copied = self
                .publisher
                .dead_letter_named(
                    payload.clone(),
                    reason,
                    execution.task_id.as_deref(),
                    execution.task_name.as_deref(),
                    execution.attempt,
                    dedup,
                    subject,
                )
                .await;
            match copied {
                Ok(_) => return Ok(()),
                Err(err) if tries >= DEAD_LETTER_TRIES => return Err(err),
                Err(err) => {
                    tracing::warn!(%err, retry_in = %crate::telemetry::human(pause), "dead letter not stored; retrying the copy only");
                    if let Some(topology) = &self.topology
                        && let Err(err) = topology.ensure_lane(Lane::Transactional).await
                    {
                        tracing::warn!(%err, "cannot re-create the streams");
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
}
