//! What one processed message came to: how the attempt ended (`Outcome`),
//! what the broker loop should do with the message (`Disposition`), how it
//! was delivered (`Delivery`), and why a step could not finish
//! (`ProcessError`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::record::{ResultRecord, TaskError, TaskStatus};
use crate::task::Failure;

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
    /// The worker stopped the attempt (its shutdown timeout ran out); the
    /// message goes back to the queue.
    Interrupted,
    /// A redelivery of a task whose record is already final (its ack or its
    /// dead letter was lost): the task does not run again.
    AlreadyFinished(TaskStatus),
    /// Every attempt the task allows was started, and the last one never
    /// finished (the worker running it died).
    AttemptsExhausted {
        /// Attempts started.
        started: u32,
    },
    /// The broker stopped delivering the message: it reached the
    /// consumer's `max_deliver` without an outcome.
    Undeliverable {
        /// How often it was delivered.
        deliveries: u64,
    },
    /// A producer cancelled the task while it ran, and it stopped (it
    /// returned without success); its database session was rolled back.
    Cancelled,
}

impl Outcome {
    /// The record's error for a failed outcome.
    pub fn error(&self) -> Option<TaskError> {
        let (kind, message) = match self {
            Self::Success(_) => return None,
            Self::Failed(Failure::Retryable { message, .. }) => ("Retryable", message.clone()),
            Self::Failed(Failure::Fatal { message }) => ("Fatal", message.clone()),
            Self::Failed(Failure::Throttled { message, .. }) => ("Throttled", message.clone()),
            Self::BadEnvelope(m) => ("BadEnvelope", m.clone()),
            Self::UnknownTask(name) => ("UnknownTask", format!("no task is registered as {name:?}")),
            Self::BadArguments(m) => ("BadArguments", m.clone()),
            Self::Timeout(after) => ("Timeout", format!("the attempt ran longer than {after:?}")),
            Self::Panic(m) => ("Panic", format!("the task panicked: {m}")),
            Self::Interrupted => ("Interrupted", "the worker stopped the attempt at shutdown".to_owned()),
            Self::Cancelled => ("Cancelled", "cancelled by request".to_owned()),
            Self::AlreadyFinished(TaskStatus::Success) => return None,
            Self::AlreadyFinished(TaskStatus::Cancelled) => ("Cancelled", "cancelled by request".to_owned()),
            Self::AlreadyFinished(status) => ("AlreadyFinished", format!("the task already ended {status}")),
            Self::AttemptsExhausted { started } => (
                "AttemptsExhausted",
                format!("{started} attempts were started and the last never finished (the worker running it died?)"),
            ),
            Self::Undeliverable { deliveries } => (
                "MaxDeliveries",
                format!(
                    "delivered {deliveries} times without an outcome (the consumer's max_deliver); \
                     it will not be delivered again"
                ),
            ),
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
    /// The attempt was interrupted: hand the message back at once.
    HandBack,
}

/// How a message reached the worker.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The broker's delivery count, from 1. Above 1 the stored record is
    /// read to learn how many attempts really started: a delivery that
    /// never ran the task (naked while the store was down, handed back at
    /// shutdown) spends no attempt.
    pub count: u32,
    /// Cancelled when the worker must give up on running attempts (its
    /// shutdown timeout ran out). It interrupts only the task body: once
    /// the body has returned, its outcome is always recorded.
    pub interrupt: CancellationToken,
}

impl Delivery {
    /// A first delivery that nothing interrupts.
    pub fn first() -> Self {
        Self { count: 1, interrupt: CancellationToken::new() }
    }
}

/// Why [`Executor::process`] could not finish its step.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The store could not be read or written before the task started: the
    /// task did not run, and the message should come back later.
    #[error("the task did not start: {0}")]
    NotStarted(#[source] StoreError),
    /// The task ran but its record could not be saved. Retry the save
    /// ([`Executor::save`]), never the task.
    #[error("the task ran but its record was not saved: {error}")]
    NotSaved {
        /// What is known of the attempt.
        execution: Box<Execution>,
        /// Why the save failed.
        #[source]
        error: StoreError,
    },
}

/// Everything known about one processed message. Its `Debug` shows how
/// many arguments there were, never their values (a task's secret fields
/// are among them).
#[derive(Clone)]
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
    /// The message's arguments, when the executor decoded it for this
    /// outcome (for the task index, which would otherwise decode the
    /// message again); `None` otherwise.
    pub arguments: Option<crate::EnvelopeArguments>,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("task_id", &self.task_id)
            .field("task_name", &self.task_name)
            .field("attempt", &self.attempt)
            .field("outcome", &self.outcome)
            .field("disposition", &self.disposition)
            .field("record", &self.record)
            .field("elapsed", &self.elapsed)
            .field("arguments", &self.arguments.as_ref().map(|a| (a.args.len(), a.kwargs.len())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_debug_shows_no_argument_value() {
        let execution = Execution {
            task_id: Some("t1".into()),
            task_name: Some("send".into()),
            attempt: 1,
            outcome: Outcome::Cancelled,
            disposition: Disposition::Ack,
            record: None,
            elapsed: Duration::ZERO,
            arguments: Some(crate::EnvelopeArguments {
                args: vec![rmpv::Value::from("positional-s3cr3t")],
                kwargs: [("token".to_owned(), rmpv::Value::from("named-s3cr3t"))].into(),
            }),
        };
        let shown = format!("{execution:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Some((1, 1))"), "the counts: {shown}");
    }
}
