//! The worker loop (DESIGN §6): pull from the durable consumer, run at most
//! `worker.concurrency` tasks, save each result before acknowledging, and
//! stop gracefully.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use di::{Disposition, Execution, Executor, Outcome, ResultStore};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::publish::Publisher;

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// At shutdown, how long to wait for more messages of the last pull request
/// (to hand them straight back) before giving up on it.
const SHUTDOWN_DRAIN_IDLE: Duration = Duration::from_millis(200);
/// When the result store is down: how long a message waits before it comes
/// back, and how often the store is probed before pulling resumes.
const STORE_RETRY: Duration = Duration::from_secs(2);

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
    pub metrics: Arc<crate::metrics::Metrics>,
    /// False while the store is unreachable: pulling pauses.
    store_ok: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("executor", &self.executor).field("store_ok", &self.store_ok).finish()
    }
}

impl Runtime {
    /// A runtime over its parts.
    pub fn new(
        executor: Executor,
        publisher: Publisher,
        store: Arc<dyn ResultStore>,
        progress_every: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self { executor, publisher, store, progress_every, metrics, store_ok: AtomicBool::new(true) }
    }

    /// Runs one message through the executor, counted as in flight.
    pub async fn execute(&self, bytes: &[u8], attempt: u32) -> Result<Execution, di::StoreError> {
        self.metrics.in_flight.inc();
        let result = self.executor.process(bytes, attempt).await;
        self.metrics.in_flight.dec();
        result
    }

    /// After a message is settled: counts it, and when its record is final
    /// wakes the producers waiting for it.
    pub async fn finished(&self, execution: &Execution) {
        self.metrics.observe(execution);
        if let (Some(id), Some(record)) = (&execution.task_id, &execution.record)
            && record.status.is_final()
        {
            self.publisher.notify_done(id).await;
        }
    }
}

/// Serves `consumer` until `shutdown` is cancelled, then lets running tasks
/// finish within `grace`, naks what is left, and returns.
///
/// Delivery runs ahead of execution by at most `concurrency` messages (the
/// `delivered` window is twice the concurrency), so pulls come in batches
/// rather than one message at a time; a delivered message's handler sends
/// progress acks from the moment it arrives, so waiting for an execution
/// slot never runs out its `ack_wait`.
pub async fn serve(
    consumer: PullConsumer,
    runtime: Arc<Runtime>,
    concurrency: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(concurrency * 2));
    let executing = Arc::new(Semaphore::new(concurrency));
    let hard_stop = CancellationToken::new();
    let mut running = JoinSet::new();
    'pull: loop {
        let first = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break 'pull,
        };
        if !runtime.store_ok.load(Ordering::Acquire) && !wait_for_store(&runtime, &shutdown).await {
            break 'pull;
        }
        // Ask for exactly as many messages as there are free slots, so none
        // sits delivered-but-idle while its ack_wait runs out.
        let wanted = permits.available_permits() + 1;
        let mut batch = match consumer.batch().max_messages(wanted).expires(PULL_EXPIRES).messages().await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(%err, "pull request failed; retrying");
                drop(first);
                if sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                    break 'pull;
                }
                continue;
            }
        };
        let mut first = Some(first);
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                () = shutdown.cancelled() => {
                    // Messages of this pull that are still on their way: give them back.
                    while let Ok(Some(Ok(message))) = tokio::time::timeout(SHUTDOWN_DRAIN_IDLE, batch.next()).await {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    break 'pull;
                }
            };
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::trace!(%err, "pull status");
                    continue;
                }
            };
            let permit = match first.take() {
                Some(permit) => permit,
                None => permits.clone().acquire_owned().await.expect("the semaphore is never closed"),
            };
            running.spawn(handle(
                runtime.clone(),
                message,
                permit,
                executing.clone(),
                shutdown.clone(),
                hard_stop.clone(),
            ));
            while let Some(done) = running.try_join_next() {
                if let Err(err) = done {
                    tracing::error!(%err, "a message handler died");
                }
            }
        }
    }

    while running.try_join_next().is_some() {}
    let in_flight = running.len();
    if in_flight > 0 {
        tracing::info!(in_flight, grace = ?grace, "waiting for running tasks");
    }
    let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(remaining_tasks = running.len(), "shutdown timeout: naking the tasks still running");
        hard_stop.cancel();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while running.join_next().await.is_some() {} }).await;
        running.abort_all();
    }
}

/// Probes the store until it answers (true) or shutdown comes (false).
async fn wait_for_store(runtime: &Runtime, shutdown: &CancellationToken) -> bool {
    tracing::warn!("result store unreachable: pulling is paused until it answers");
    loop {
        if runtime.store.ping().await.is_ok() {
            runtime.store_ok.store(true, Ordering::Release);
            tracing::info!("result store reachable again: pulling resumes");
            return true;
        }
        if sleep_or_shutdown(STORE_RETRY, shutdown).await {
            return false;
        }
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Waits for an execution slot, runs one message, and settles it with the
/// server. `_delivered` holds the message's place in the delivery window.
async fn handle(
    runtime: Arc<Runtime>,
    message: Message,
    _delivered: OwnedSemaphorePermit,
    executing: Arc<Semaphore>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let (attempt, sequence) = match message.info() {
        Ok(info) => (u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1), info.stream_sequence),
        Err(_) => (1, 0),
    };
    let span = tracing::info_span!(
        "task",
        task.id = tracing::field::Empty,
        task.name = tracing::field::Empty,
        task.attempt = attempt,
        task.outcome = tracing::field::Empty
    );
    async {
        let process = async {
            // Delivered, not started: at shutdown, hand it back untouched.
            let _slot = tokio::select! {
                slot = executing.acquire() => slot.expect("never closed"),
                () = shutdown.cancelled() => return None,
            };
            Some(runtime.execute(&message.payload, attempt).await)
        };
        let heartbeat = async {
            let mut every = tokio::time::interval(runtime.progress_every);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%err, "progress ack failed");
                }
            }
        };
        let result = tokio::select! {
            result = process => match result {
                Some(result) => result,
                None => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
            },
            () = heartbeat => unreachable!("the heartbeat never ends"),
            () = hard_stop.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                tracing::warn!("stopped by the shutdown timeout; handed back to the queue");
                return;
            }
        };
        match result {
            Err(err) => {
                runtime.store_ok.store(false, Ordering::Release);
                tracing::warn!(%err, "result not saved: the message comes back later");
                let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
            }
            Ok(execution) => {
                settle(&runtime, &message, &execution, sequence).await;
                runtime.finished(&execution).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Acks, naks or terminates according to the execution.
async fn settle(runtime: &Runtime, message: &Message, execution: &Execution, sequence: u64) {
    let elapsed_ms = execution.elapsed.as_secs_f64() * 1000.0;
    let outcome = match &execution.disposition {
        Disposition::Ack => "success",
        Disposition::Retry { .. } => "retry",
        Disposition::DeadLetter { .. } => "failed",
    };
    tracing::Span::current().record("task.outcome", outcome);
    match &execution.disposition {
        Disposition::Ack => {
            for attempt in 1..=3 {
                match message.double_ack().await {
                    Ok(()) => break,
                    Err(err) if attempt == 3 => tracing::warn!(%err, "ack not confirmed; the task may run again"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            tracing::info!(elapsed_ms, "task succeeded");
        }
        Disposition::Retry { delay } => {
            let _ = message.ack_with(AckKind::Nak(Some(*delay))).await;
            tracing::info!(elapsed_ms, retry_in = ?delay, error = %describe(&execution.outcome), "task failed; will retry");
        }
        Disposition::DeadLetter { reason } => {
            let dedup = if sequence > 0 { sequence.to_string() } else { di::new_task_id() };
            match runtime
                .publisher
                .dead_letter(
                    message.payload.clone(),
                    reason,
                    execution.task_id.as_deref(),
                    execution.attempt,
                    &dedup,
                    message.subject.as_str(),
                )
                .await
            {
                Ok(_) => {
                    let _ = message.ack_with(AckKind::Term).await;
                    tracing::warn!(elapsed_ms, %reason, "task failed for good; dead-lettered");
                }
                Err(err) => {
                    // Without its dead-letter copy the message must not vanish.
                    let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
                    tracing::warn!(%err, "dead letter not stored; the message comes back");
                }
            }
        }
    }
}

fn describe(outcome: &Outcome) -> String {
    outcome.error().map(|e| format!("{}: {}", e.exc_type, e.message())).unwrap_or_default()
}
