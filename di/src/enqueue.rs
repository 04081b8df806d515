//! Enqueueing from inside a task: the trait, and an in-memory
//! implementation for tests. The NATS implementation lives in `app`.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::envelope::Envelope;

/// Why a task could not be enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The arguments could not be encoded.
    #[error("cannot encode the task: {0}")]
    Encode(String),
    /// The broker did not confirm the publish.
    #[error("broker did not accept the task: {0}")]
    Broker(String),
    /// This context has nowhere to send tasks.
    #[error("enqueueing is not available here")]
    Unavailable,
}

/// Somewhere tasks can be sent.
#[async_trait]
pub trait Enqueuer: Send + Sync + 'static {
    /// Publishes one envelope to its lane: the envelope's `lane` label if it
    /// has a valid one, else `lane` (the task's default).
    async fn enqueue(&self, envelope: Envelope, lane: crate::Lane) -> Result<(), EnqueueError>;
}

/// An [`Enqueuer`] that keeps what it is given (for tests).
#[derive(Debug, Clone, Default)]
pub struct InMemoryEnqueuer {
    queued: Arc<Mutex<Vec<Envelope>>>,
}

impl InMemoryEnqueuer {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything enqueued so far, in order.
    pub fn queued(&self) -> Vec<Envelope> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl Enqueuer for InMemoryEnqueuer {
    async fn enqueue(&self, envelope: Envelope, _lane: crate::Lane) -> Result<(), EnqueueError> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner).push(envelope);
        Ok(())
    }
}

/// An [`Enqueuer`] that refuses: for contexts with no broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnqueuer;

#[async_trait]
impl Enqueuer for NoEnqueuer {
    async fn enqueue(&self, _envelope: Envelope, _lane: crate::Lane) -> Result<(), EnqueueError> {
        Err(EnqueueError::Unavailable)
    }
}
