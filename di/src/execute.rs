//! The one-step execution API: envelope bytes in, outcome and result record
//! out. The broker loop and the tests both call it; it knows nothing of NATS.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::container::Container;
use crate::context::TaskContext;
use crate::enqueue::Enqueuer;
use crate::envelope::{Envelope, EnvelopeArguments};
pub use crate::outcome::{Delivery, Disposition, Execution, Outcome, ProcessError};
use crate::record::{ResultRecord, TaskError, TaskStatus};
use crate::registry::{Registry, RunError, TaskDef};
use crate::shape::DecodeLimits;
use crate::task::Failure;
use crate::{ResultStore, StoreError};

/// Runs envelopes against a registry and a container.
#[derive(Clone)]
pub struct Executor {
    registry: Arc<Registry>,
    container: Arc<dyn Container>,
    store: Arc<dyn ResultStore>,
    enqueuer: Arc<dyn Enqueuer>,
    /// Bounds on the envelopes it accepts: bytes, then shape.
    limits: DecodeLimits,
    /// The tasks running now, to tell them when a producer cancels one.
    cancellations: crate::cancel::Cancellations,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("tasks", &self.registry.names()).field("limits", &self.limits).finish()
    }
}

impl Executor {
    /// An executor; envelopes beyond `limits` are refused before decoding.
    pub fn new(
        registry: Arc<Registry>,
        container: Arc<dyn Container>,
        enqueuer: Arc<dyn Enqueuer>,
        limits: DecodeLimits,
    ) -> Self {
        let store: Arc<dyn ResultStore> = container.resolve();
        Self { registry, container, store, enqueuer, limits, cancellations: Default::default() }
    }

    /// Tells running tasks that a producer cancelled them, checking every
    /// `every` (one read of the running tasks' records); runs until dropped.
    pub async fn watch_cancellations(&self, every: std::time::Duration) {
        self.cancellations.watch(self.store.clone(), every).await;
    }

    /// The registry it runs from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The one step: decode, record `running` (learning what the task's
    /// record said before), count the attempt, run, record the outcome. A
    /// task whose record is already final does not run again; one whose
    /// attempts are all spent is failed. Every delivery reads the record
    /// (in the same round trip as the `running` write): delivery counts
    /// restart when a consumer is re-created, so they decide nothing.
    pub async fn process(&self, bytes: &[u8], delivery: &Delivery) -> Result<Execution, ProcessError> {
        let started = Instant::now();
        let (envelope, def) = match self.prepare(bytes) {
            Ok(found) => found,
            Err(rejected) => return self.reject(rejected, delivery.count.max(1), started).await,
        };
        record_on_span(Some(&envelope.task_id), Some(def.name()));
        let mut running = ResultRecord::new(def.name(), TaskStatus::Running, 1);
        running.labels = envelope.labels.clone();
        running.started_at = Some(running.updated_at);
        let previous = self.store.begin(&envelope.task_id, &running).await.map_err(ProcessError::NotStarted)?;
        let attempt = match previous {
            Some(record) if record.status.is_final() => {
                return Ok(already_finished(envelope.task_id, def.name().to_owned(), record, started));
            }
            Some(record) if matches!(record.status, TaskStatus::Running | TaskStatus::Retrying) => {
                record.attempt.saturating_add(1)
            }
            _ => 1,
        };
        let limit = def.options.retry.max_attempts;
        if attempt > limit {
            let outcome = Outcome::AttemptsExhausted { started: attempt - 1 };
            let mut execution = self.conclude(
                Some(envelope.task_id),
                Some(def.name().to_owned()),
                limit,
                Some(def),
                outcome,
                started.elapsed(),
            );
            if let Some(record) = &mut execution.record {
                record.labels = envelope.labels;
            }
            execution.arguments = Some(EnvelopeArguments { args: envelope.args, kwargs: envelope.kwargs });
            return self.saved(execution).await;
        }
        if attempt != running.attempt {
            running.attempt = attempt;
            self.store.put(&envelope.task_id, &running).await.map_err(ProcessError::NotStarted)?;
        }
        self.run_started(envelope, def, running, &delivery.interrupt, started).await
    }

    /// Runs `bytes` as attempt `attempt` without reading the store first
    /// (tests of retry behaviour and idempotency).
    pub async fn process_attempt(&self, bytes: &[u8], attempt: u32) -> Result<Execution, ProcessError> {
        let started = Instant::now();
        match self.prepare(bytes) {
            Ok((envelope, def)) => {
                record_on_span(Some(&envelope.task_id), Some(def.name()));
                self.run_attempt(envelope, def, attempt, &CancellationToken::new(), started).await
            }
            Err(rejected) => self.reject(rejected, attempt, started).await,
        }
    }

    /// Writes `running`, then runs the attempt.
    async fn run_attempt(
        &self,
        envelope: Envelope,
        def: &'static TaskDef,
        attempt: u32,
        interrupt: &CancellationToken,
        started: Instant,
    ) -> Result<Execution, ProcessError> {
        let mut running = ResultRecord::new(def.name(), TaskStatus::Running, attempt);
        running.labels = envelope.labels.clone();
        running.started_at = Some(running.updated_at);
        self.store.put(&envelope.task_id, &running).await.map_err(ProcessError::NotStarted)?;
        self.run_started(envelope, def, running, interrupt, started).await
    }

    /// Runs the body (interruptible) of an attempt whose `running` record
    /// is written, and records the outcome.
    async fn run_started(
        &self,
        envelope: Envelope,
        def: &'static TaskDef,
        running: ResultRecord,
        interrupt: &CancellationToken,
        started: Instant,
    ) -> Result<Execution, ProcessError> {
        let attempt = running.attempt;
        let outcome = self.run(&envelope, def, attempt, interrupt).await;
        let mut execution = self.conclude(
            Some(envelope.task_id.clone()),
            Some(def.name().to_owned()),
            attempt,
            Some(def),
            outcome,
            started.elapsed(),
        );
        if let Some(record) = &mut execution.record {
            record.labels = envelope.labels;
            record.started_at = running.started_at;
        }
        execution.arguments = Some(EnvelopeArguments { args: envelope.args, kwargs: envelope.kwargs });
        self.saved(execution).await
    }

    /// Records a message that cannot run (bad bytes, unknown task).
    async fn reject(&self, rejected: Rejected, attempt: u32, started: Instant) -> Result<Execution, ProcessError> {
        let (task_id, task_name, outcome) = rejected;
        record_on_span(task_id.as_deref(), task_name.as_deref());
        let execution = self.conclude(task_id, task_name, attempt, None, outcome, started.elapsed());
        self.saved(execution).await
    }

    /// Fails a message the broker stopped delivering after `deliveries`
    /// deliveries (its `max_deliver`): a final `failed` record, unless the
    /// task already has a final one (then that one decides: ack or dead letter).
    pub async fn fail_undeliverable(&self, bytes: &[u8], deliveries: u64) -> Result<Execution, StoreError> {
        let started = Instant::now();
        let (task_id, task_name, labels) = match self.prepare(bytes) {
            Ok((envelope, def)) => (Some(envelope.task_id), Some(def.name().to_owned()), envelope.labels),
            Err((task_id, task_name, _)) => (task_id, task_name, Default::default()),
        };
        let mut attempt = 0;
        if let Some(id) = &task_id
            && let Some(record) = self.store.get(id).await?
        {
            if record.status.is_final() {
                let name = task_name.unwrap_or_else(|| record.task_name.clone());
                return Ok(already_finished(id.clone(), name, record, started));
            }
            attempt = record.attempt;
        }
        let outcome = Outcome::Undeliverable { deliveries };
        let mut execution = self.conclude(task_id, task_name, attempt, None, outcome, started.elapsed());
        if let Some(record) = &mut execution.record {
            record.labels = labels;
        }
        self.save(&execution).await?;
        Ok(execution)
    }

    /// Saves the execution's record, or hands the execution back with the
    /// store's error so the caller retries the save alone.
    async fn saved(&self, execution: Execution) -> Result<Execution, ProcessError> {
        match self.save(&execution).await {
            Ok(()) => Ok(execution),
            Err(error) => Err(ProcessError::NotSaved { execution: Box::new(execution), error }),
        }
    }

    /// Decodes and looks up; an `Err` carries what could be read and why
    /// the message cannot run.
    fn prepare(&self, bytes: &[u8]) -> Result<(Envelope, &'static TaskDef), Rejected> {
        let max_payload = self.limits.max_payload;
        if bytes.len() > max_payload {
            let why = format!("payload of {} bytes exceeds nats.max_payload ({max_payload} bytes)", bytes.len());
            return Err((Envelope::salvage_task_id(bytes), None, Outcome::BadEnvelope(why)));
        }
        let envelope = Envelope::from_msgpack_within(bytes, &self.limits)
            .map_err(|e| (Envelope::salvage_task_id(bytes), None, Outcome::BadEnvelope(e.0)))?;
        // From a foreign producer: recorded under the raw id (any bytes make
        // a Redis key) and dead-lettered, never run.
        let invalid = match crate::ids::validate_task_id(&envelope.task_id) {
            Err(e) => Some(format!("invalid task id: {e}")),
            Ok(()) => crate::ids::validate_labels(&envelope.labels).err().map(|e| format!("invalid label: {e}")),
        };
        if let Some(why) = invalid {
            let task_id = Some(envelope.task_id).filter(|id| !id.is_empty());
            return Err((task_id, Some(envelope.task_name), Outcome::BadEnvelope(why)));
        }
        match self.registry.get(&envelope.task_name) {
            Some(def) => Ok((envelope, def)),
            None => {
                let name = envelope.task_name.clone();
                Err((Some(envelope.task_id), Some(name.clone()), Outcome::UnknownTask(name)))
            }
        }
    }

    /// Runs one attempt with its timeout, catching panics, and ends the
    /// database session accordingly. `interrupt` stops the body only: a
    /// body that has returned always has its outcome kept.
    async fn run(
        &self,
        envelope: &Envelope,
        def: &'static TaskDef,
        attempt: u32,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let lane = envelope.lane().unwrap_or(def.options.lane);
        let ctx = TaskContext::new(
            envelope.task_id.clone(),
            def.name(),
            attempt,
            lane,
            envelope.labels.clone(),
            self.container.clone(),
            self.enqueuer.clone(),
        );
        let _cancellable = self.cancellations.enter(&envelope.task_id, ctx.cancel_token());
        let future = AssertUnwindSafe(def.start(ctx.clone(), envelope)).catch_unwind();
        let body = tokio::time::timeout(def.options.timeout, future);
        let finished = tokio::select! {
            biased;
            finished = body => finished,
            () = interrupt.cancelled() => {
                let _ = ctx.finish_session(false).await;
                return Outcome::Interrupted;
            }
        };
        let outcome = match finished {
            Err(_) => Outcome::Timeout(def.options.timeout),
            Ok(Err(panic)) => Outcome::Panic(panic_message(&*panic)),
            Ok(Ok(Err(RunError::BadArguments(why)))) => Outcome::BadArguments(why),
            Ok(Ok(Err(RunError::Failed(failure)))) => Outcome::Failed(failure),
            Ok(Ok(Ok(output))) => Outcome::Success(output),
        };
        // Told to stop and did not succeed: cancelled (a task that ignores
        // the signal and finishes keeps its success).
        let outcome =
            if ctx.is_cancelled() && !matches!(outcome, Outcome::Success(_)) { Outcome::Cancelled } else { outcome };
        let success = matches!(outcome, Outcome::Success(_));
        match ctx.finish_session(success).await {
            Ok(()) => outcome,
            Err(e) if success => Outcome::Failed(Failure::retryable(format!("commit failed: {e}"))),
            Err(e) => {
                tracing::warn!(task.id = %envelope.task_id, error = %e, "rollback failed; the connection is discarded");
                outcome
            }
        }
    }

    /// Classifies an outcome into a disposition and a record.
    fn conclude(
        &self,
        task_id: Option<String>,
        task_name: Option<String>,
        attempt: u32,
        def: Option<&'static TaskDef>,
        outcome: Outcome,
        elapsed: Duration,
    ) -> Execution {
        let retry = def.map(|d| d.options.retry).unwrap_or(crate::task::RetryPolicy::NONE);
        let attempts_left = attempt < retry.max_attempts;
        let disposition = match &outcome {
            Outcome::Success(_) | Outcome::Cancelled => Disposition::Ack,
            // Telegram's limits, not the task: retried without spending the attempt.
            Outcome::Failed(Failure::Throttled { retry_after, .. }) => Disposition::Retry { delay: *retry_after },
            Outcome::Failed(Failure::Retryable { retry_after, .. }) if attempts_left => {
                Disposition::Retry { delay: retry_after.unwrap_or_else(|| retry.delay(attempt)) }
            }
            Outcome::Timeout(_) if attempts_left => Disposition::Retry { delay: retry.delay(attempt) },
            Outcome::Interrupted => Disposition::HandBack,
            other => {
                let mut reason = other.error().map(|e| format!("{}: {}", e.exc_type, e.message())).unwrap_or_default();
                if matches!(other, Outcome::Failed(Failure::Retryable { .. }) | Outcome::Timeout(_)) {
                    reason = format!("{reason} (attempt {attempt} of {})", retry.max_attempts);
                }
                Disposition::DeadLetter { reason }
            }
        };
        let name = task_name.clone().unwrap_or_default();
        let record = task_id.as_ref().map(|_| match (&outcome, outcome.error()) {
            (Outcome::Success(value), _) => ResultRecord::success(name, attempt, value.clone(), elapsed.as_secs_f64()),
            (Outcome::Cancelled, _) => ResultRecord::cancelled(name, attempt),
            (_, error) => {
                let status = if matches!(disposition, Disposition::Retry { .. } | Disposition::HandBack) {
                    TaskStatus::Retrying
                } else {
                    TaskStatus::Failed
                };
                let error = error.unwrap_or_else(|| TaskError::new("Unknown", "no error recorded"));
                // A throttled attempt is not spent: the next delivery runs
                // this attempt number again.
                let spent = if matches!(outcome, Outcome::Failed(Failure::Throttled { .. })) {
                    attempt.saturating_sub(1)
                } else {
                    attempt
                };
                let mut record = ResultRecord::failure(name, status, spent, error);
                record.execution_time = elapsed.as_secs_f64();
                record
            }
        });
        Execution { task_id, task_name, attempt, outcome, disposition, record, elapsed, arguments: None }
    }

    /// Writes the execution's record (nothing for a task that had already
    /// finished, or for bytes without a task id).
    pub async fn save(&self, execution: &Execution) -> Result<(), StoreError> {
        if matches!(execution.outcome, Outcome::AlreadyFinished(_)) {
            return Ok(());
        }
        match (&execution.task_id, &execution.record) {
            (Some(id), Some(record)) => self.store.put(id, record).await,
            _ => Ok(()),
        }
    }
}

/// The redelivery of a finished task: acked if it succeeded, dead-lettered
/// again (its copy may be what was lost) if it failed.
fn already_finished(task_id: String, task_name: String, record: ResultRecord, started: Instant) -> Execution {
    let disposition = match (&record.status, &record.error) {
        // Cancelled by a producer (before it ran, or while): nothing to copy.
        (TaskStatus::Success | TaskStatus::Cancelled, _) => Disposition::Ack,
        (_, error) => Disposition::DeadLetter {
            reason: error.as_ref().map_or_else(|| "failed".to_owned(), |e| format!("{}: {}", e.exc_type, e.message())),
        },
    };
    Execution {
        task_id: Some(task_id),
        task_name: Some(task_name),
        attempt: record.attempt,
        outcome: Outcome::AlreadyFinished(record.status),
        disposition,
        record: Some(record),
        elapsed: started.elapsed(),
        arguments: None,
    }
}

/// What could be read of a message that cannot run, and why: task id,
/// task name, outcome.
type Rejected = (Option<String>, Option<String>, Outcome);

/// Fills the fields the caller's span declared (`task.id`, `task.name`)
/// as soon as they are known, for every log line that follows.
fn record_on_span(task_id: Option<&str>, task_name: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(id) = task_id {
        span.record("task.id", id);
    }
    if let Some(name) = task_name {
        span.record("task.name", name);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}
