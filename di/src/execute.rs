//! The one-step execution API: envelope bytes in, outcome and result record
//! out. The broker loop and the tests both call it; it knows nothing of NATS.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::container::Container;
use crate::context::TaskContext;
use crate::enqueue::Enqueuer;
use crate::envelope::Envelope;
use crate::record::{ResultRecord, TaskError, TaskStatus};
use crate::registry::{Registry, RunError, TaskDef};
use crate::shape::DecodeLimits;
use crate::task::Failure;
use crate::{ResultStore, StoreError};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The task returned its output.
    Success(rmpv::Value),
    /// The task returned an error (or its session could not commit).
    Failed(Failure),
    /// The bytes are not a task envelope (or too large to consider).
    BadEnvelope(String),
    /// No task is registered under the envelope's name.
    UnknownTask(String),
    /// The arguments do not fit the task's `Args`.
    BadArguments(String),
    /// The attempt ran past the task's timeout.
    Timeout(Duration),
    /// The task panicked; the panic was caught.
    Panic(String),
}

impl Outcome {
    /// The record's error for a failed outcome.
    pub fn error(&self) -> Option<TaskError> {
        let (kind, message) = match self {
            Self::Success(_) => return None,
            Self::Failed(Failure::Retryable { message, .. }) => ("Retryable", message.clone()),
            Self::Failed(Failure::Fatal { message }) => ("Fatal", message.clone()),
            Self::BadEnvelope(m) => ("BadEnvelope", m.clone()),
            Self::UnknownTask(name) => ("UnknownTask", format!("no task is registered as {name:?}")),
            Self::BadArguments(m) => ("BadArguments", m.clone()),
            Self::Timeout(after) => ("Timeout", format!("the attempt ran longer than {after:?}")),
            Self::Panic(m) => ("Panic", format!("the task panicked: {m}")),
        };
        Some(TaskError::new(kind, message))
    }
}

/// What the caller (the broker loop) should do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: acknowledge it.
    Ack,
    /// Try again after `delay`.
    Retry {
        /// How long to wait.
        delay: Duration,
    },
    /// It will never succeed: record, dead-letter with `reason`, terminate.
    DeadLetter {
        /// Why, for the dead-letter copy.
        reason: String,
    },
}

/// Everything known about one processed message.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The task id, if one could be read.
    pub task_id: Option<String>,
    /// The task name, if the envelope decoded.
    pub task_name: Option<String>,
    /// The attempt this was.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// What to do with the message.
    pub disposition: Disposition,
    /// The record written (or to write) under the task id.
    pub record: Option<ResultRecord>,
    /// How long the task ran.
    pub elapsed: Duration,
}

/// Runs envelopes against a registry and a container.
#[derive(Clone)]
pub struct Executor {
    registry: Arc<Registry>,
    container: Arc<dyn Container>,
    store: Arc<dyn ResultStore>,
    enqueuer: Arc<dyn Enqueuer>,
    /// Bounds on the envelopes it accepts: bytes, then shape.
    limits: DecodeLimits,
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
        Self { registry, container, store, enqueuer, limits }
    }

    /// The registry it runs from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The one step: decode, record `running`, run, record the outcome.
    /// A store error is returned so the caller does not acknowledge a
    /// message whose result was not saved.
    pub async fn process(&self, bytes: &[u8], attempt: u32) -> Result<Execution, StoreError> {
        let started = Instant::now();
        let prepared = self.prepare(bytes);
        let (envelope, def) = match prepared {
            Ok(found) => found,
            Err((task_id, task_name, outcome)) => {
                record_on_span(task_id.as_deref(), task_name.as_deref());
                let execution = self.conclude(task_id, task_name, attempt, None, outcome, started.elapsed());
                self.save(&execution).await?;
                return Ok(execution);
            }
        };
        record_on_span(Some(&envelope.task_id), Some(def.name()));
        let mut running = ResultRecord::new(def.name(), TaskStatus::Running, attempt);
        running.labels = envelope.labels.clone();
        running.started_at = Some(running.updated_at);
        self.store.put(&envelope.task_id, &running).await?;

        let outcome = self.run(&envelope, def, attempt).await;
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
        self.save(&execution).await?;
        Ok(execution)
    }

    /// Decodes and looks up; an `Err` carries what could be read and why
    /// the message cannot run.
    #[allow(clippy::type_complexity)]
    fn prepare(&self, bytes: &[u8]) -> Result<(Envelope, &'static TaskDef), (Option<String>, Option<String>, Outcome)> {
        let max_payload = self.limits.max_payload;
        if bytes.len() > max_payload {
            let why = format!("payload of {} bytes exceeds nats.max_payload ({max_payload} bytes)", bytes.len());
            return Err((Envelope::salvage_task_id(bytes), None, Outcome::BadEnvelope(why)));
        }
        let envelope = Envelope::from_msgpack_within(bytes, &self.limits)
            .map_err(|e| (Envelope::salvage_task_id(bytes), None, Outcome::BadEnvelope(e.0)))?;
        match self.registry.get(&envelope.task_name) {
            Some(def) => Ok((envelope, def)),
            None => {
                let name = envelope.task_name.clone();
                Err((Some(envelope.task_id), Some(name.clone()), Outcome::UnknownTask(name)))
            }
        }
    }

    /// Runs one attempt with its timeout, catching panics, and ends the
    /// database session accordingly.
    async fn run(&self, envelope: &Envelope, def: &'static TaskDef, attempt: u32) -> Outcome {
        let ctx = TaskContext::new(
            envelope.task_id.clone(),
            def.name(),
            attempt,
            envelope.labels.clone(),
            self.container.clone(),
            self.enqueuer.clone(),
        );
        let future = AssertUnwindSafe(def.start(ctx.clone(), envelope)).catch_unwind();
        let outcome = match tokio::time::timeout(def.options.timeout, future).await {
            Err(_) => Outcome::Timeout(def.options.timeout),
            Ok(Err(panic)) => Outcome::Panic(panic_message(&*panic)),
            Ok(Ok(Err(RunError::BadArguments(why)))) => Outcome::BadArguments(why),
            Ok(Ok(Err(RunError::Failed(failure)))) => Outcome::Failed(failure),
            Ok(Ok(Ok(output))) => Outcome::Success(output),
        };
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
            Outcome::Success(_) => Disposition::Ack,
            Outcome::Failed(Failure::Retryable { retry_after, .. }) if attempts_left => {
                Disposition::Retry { delay: retry_after.unwrap_or_else(|| retry.delay(attempt)) }
            }
            Outcome::Timeout(_) if attempts_left => Disposition::Retry { delay: retry.delay(attempt) },
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
            (_, error) => {
                let status = if matches!(disposition, Disposition::Retry { .. }) {
                    TaskStatus::Retrying
                } else {
                    TaskStatus::Failed
                };
                let error = error.unwrap_or_else(|| TaskError::new("Unknown", "no error recorded"));
                let mut record = ResultRecord::failure(name, status, attempt, error);
                record.execution_time = elapsed.as_secs_f64();
                record
            }
        });
        Execution { task_id, task_name, attempt, outcome, disposition, record, elapsed }
    }

    async fn save(&self, execution: &Execution) -> Result<(), StoreError> {
        match (&execution.task_id, &execution.record) {
            (Some(id), Some(record)) => self.store.put(id, record).await,
            _ => Ok(()),
        }
    }
}

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
