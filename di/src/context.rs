//! `TaskContext`: what a running task knows (its id, attempt, labels) and
//! the components it may ask for, including its own database session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::container::Container;
use crate::enqueue::Enqueuer;
use crate::task::{Failure, TaskRef};
use crate::{BotApi, Db};

/// A task's database session: one connection in one transaction, begun
/// when the task first asks and ended by the runtime (commit on success,
/// rollback otherwise). Use it as an executor: `query.execute(&mut *db)`.
pub type DbSession<'a> = MappedMutexGuard<'a, AnyConnection>;

/// Everything a running task can see. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    task_id: String,
    task_name: String,
    attempt: u32,
    lane: crate::Lane,
    labels: BTreeMap<String, rmpv::Value>,
    container: Arc<dyn Container>,
    enqueuer: Arc<dyn Enqueuer>,
    /// `None` until the task first calls [`TaskContext::db`].
    session: Mutex<Option<Transaction<'static, Any>>>,
    /// Counts follow-up tasks, to give them stable ids.
    enqueued: AtomicU32,
    /// Set once this attempt sent a Telegram message: later sends wait for
    /// their slot inside the task rather than hand the task back, which
    /// would send the earlier messages again.
    sent: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when a producer cancels this task while it runs.
    cancel: tokio_util::sync::CancellationToken,
    /// Progress reports, coalesced.
    progress: crate::progress::Reporter,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.inner.task_id)
            .field("task_name", &self.inner.task_name)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for one attempt of one task.
    pub fn new(
        task_id: impl Into<String>,
        task_name: impl Into<String>,
        attempt: u32,
        lane: crate::Lane,
        labels: BTreeMap<String, rmpv::Value>,
        container: Arc<dyn Container>,
        enqueuer: Arc<dyn Enqueuer>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                task_id: task_id.into(),
                task_name: task_name.into(),
                attempt,
                lane,
                labels,
                container,
                enqueuer,
                session: Mutex::new(None),
                enqueued: AtomicU32::new(0),
                sent: Arc::default(),
                cancel: tokio_util::sync::CancellationToken::new(),
                progress: crate::progress::Reporter::default(),
            }),
        }
    }

    /// The task id: the same on every redelivery and retry, so it is the
    /// task's idempotency key.
    pub fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    /// The registered task name.
    pub fn task_name(&self) -> &str {
        &self.inner.task_name
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The labels the task was sent with.
    pub fn labels(&self) -> &BTreeMap<String, rmpv::Value> {
        &self.inner.labels
    }

    /// The task's database session, begun on first use. Hold it only while
    /// querying: another `db()` call waits until it is dropped.
    pub async fn db(&self) -> Result<DbSession<'_>, Failure> {
        let mut slot = self.inner.session.lock().await;
        if slot.is_none() {
            let db: Arc<dyn Db> = self.inner.container.resolve();
            *slot = Some(db.pool().begin().await?);
        }
        Ok(MutexGuard::map(slot, |slot| match slot {
            Some(tx) => &mut **tx,
            None => unreachable!("the session was begun above"),
        }))
    }

    /// The database pool itself, for a task's own short transactions that
    /// must commit before the task ends (a claim written before a slow
    /// call). Most tasks want [`TaskContext::db`]; a connection taken from
    /// here is not the session's and never sees its uncommitted writes.
    pub fn db_pool(&self) -> AnyPool {
        let db: Arc<dyn Db> = self.inner.container.resolve();
        db.pool().clone()
    }

    /// `"PostgreSQL"` or `"SQLite"`.
    pub fn db_backend(&self) -> &'static str {
        let db: Arc<dyn Db> = self.inner.container.resolve();
        db.backend()
    }

    /// Resolves when a producer cancels this task (`Producer::cancel`),
    /// within about a second on whichever worker runs it. A task that stops
    /// then (returning any error, e.g. [`crate::Failure::cancelled`]) ends
    /// `cancelled` and its database session is rolled back; a task that
    /// ignores it and succeeds ends `success`.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Whether a producer cancelled this task.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// The token [`TaskContext::cancelled`] waits on (for the executor).
    pub fn cancel_token(&self) -> tokio_util::sync::CancellationToken {
        self.inner.cancel.clone()
    }

    /// Reports how far the task is: `fraction` from 0 to 1 and a short
    /// message, readable by `Producer::progress` and `producer result
    /// --watch` while it runs. Cheap to call often: at most four writes a
    /// second reach the store, the latest value always among them.
    pub fn progress(&self, fraction: f64, message: &str) {
        let store: Arc<dyn crate::ResultStore> = self.inner.container.resolve();
        self.inner.progress.report(store, &self.inner.task_id, fraction, message);
    }

    /// The lane this task's Telegram messages travel in.
    pub fn lane(&self) -> crate::Lane {
        self.inner.lane
    }

    /// The Telegram Bot API, sending in this task's lane through the
    /// flood-control governor.
    pub fn bot(&self) -> Arc<dyn BotApi> {
        Arc::new(crate::components::bot::InLane {
            bot: self.inner.container.resolve(),
            lane: self.inner.lane,
            sent: self.inner.sent.clone(),
        })
    }

    /// Enqueues a follow-up task and returns its id. The id is derived from
    /// this task's id and the call's order, so a retried task enqueues the
    /// same ids again and the broker drops the duplicates. An id or label
    /// that [`crate::ids`] refuses (a parent id near the length limit, say)
    /// is a fatal failure.
    pub async fn enqueue<A: Serialize, O: DeserializeOwned>(
        &self,
        task: TaskRef<A, O>,
        args: &A,
    ) -> Result<String, Failure> {
        let n = self.inner.enqueued.fetch_add(1, Ordering::Relaxed) + 1;
        let task_id = format!("{}.{n}", self.inner.task_id);
        let mut envelope = task.envelope_with_id(task_id.clone(), args)?;
        envelope.labels.insert("parent_task_id".to_owned(), rmpv::Value::from(self.inner.task_id.as_str()));
        // A bad id fails the same way on every retry: fatal, nothing published.
        crate::ids::validate_task_id(&envelope.task_id)
            .and_then(|()| crate::ids::validate_labels(&envelope.labels))
            .map_err(|e| Failure::fatal(format!("enqueue {}: {e}", task.name())))?;
        self.inner
            .enqueuer
            .enqueue(envelope, task.options().lane)
            .await
            .map_err(|e| Failure::retryable(format!("enqueue {}: {e}", task.name())))?;
        Ok(task_id)
    }

    /// Ends the session: commit if the task succeeded, roll back otherwise.
    /// A task that never asked for the database has nothing to end.
    pub(crate) async fn finish_session(&self, success: bool) -> Result<(), sqlx::Error> {
        let tx = self.inner.session.lock().await.take();
        match tx {
            // Boxed: sqlx's futures are large, and every task's future
            // would carry them, session or not.
            Some(tx) if success => Box::pin(tx.commit()).await,
            Some(tx) => Box::pin(tx.rollback()).await,
            None => Ok(()),
        }
    }
}
