//! The producer client: typed enqueue over NATS, the `queued` record, and
//! waiting for a result without hammering Redis.

pub mod flood_status;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use di::{ARGS_DIGEST_LABEL, Envelope, RedisResultStore, ResultRecord, ResultStore, TaskRef, TaskStatus};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use settings::{NatsMode, Settings};

use crate::broker::publish::{PublishError, Published, Publisher};
use crate::broker::{self, BrokerError};

/// Why a producer call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Redis could not be reached.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
    /// The task was not accepted by the broker.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The result store failed.
    #[error(transparent)]
    Store(#[from] di::StoreError),
    /// The task id or a label is refused (nothing was written or sent).
    #[error(transparent)]
    Invalid(#[from] di::IdError),
    /// The task id is taken by a task with other arguments (nothing was
    /// sent): an id is an idempotency key, not a name to reuse.
    #[error("task {task_id} was already sent with other arguments; use a new task id")]
    Conflict {
        /// The task id.
        task_id: String,
    },
    /// The arguments could not be encoded.
    #[error("cannot encode the arguments: {0}")]
    Encode(#[from] di::CodecError),
    /// No final result within the time allowed.
    #[error("task {task_id} has no final result after {} (last status: {})", crate::telemetry::human(*.waited), .last.map_or("none", TaskStatus::name))]
    Timeout {
        /// The task.
        task_id: String,
        /// How long was waited.
        waited: Duration,
        /// The last status seen, if any.
        last: Option<TaskStatus>,
    },
}

/// Publishes tasks and reads their results. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    publisher: Publisher,
    store: Arc<dyn ResultStore>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("publisher", &self.publisher).finish_non_exhaustive()
    }
}

impl Producer {
    /// Connects to NATS (creating the streams if no worker has yet, so
    /// nothing published is dropped) and to Redis.
    pub async fn connect(settings: &Settings) -> Result<Self, ProducerError> {
        let client = broker::connect(&settings.nats, "courier-producer").await?;
        if settings.nats.mode == NatsMode::Jetstream {
            broker::check_jetstream(&client, &settings.nats).await?;
            broker::ensure_streams(&jetstream::new(client.clone()), &settings.nats).await?;
        }
        let store = RedisResultStore::connect(&settings.redis).await?;
        Ok(Self::new(Publisher::new(client, settings.nats.clone()), Arc::new(store)))
    }

    /// A producer over existing parts.
    pub fn new(publisher: Publisher, store: Arc<dyn ResultStore>) -> Self {
        Self { publisher, store }
    }

    /// Enqueues `task` with `args`: records `queued`, publishes with the
    /// task id as `Nats-Msg-Id`, and returns once the broker confirmed it.
    pub async fn enqueue<A: Serialize, O: DeserializeOwned>(
        &self,
        task: TaskRef<A, O>,
        args: &A,
    ) -> Result<TaskHandle<O>, ProducerError> {
        self.enqueue_with_id(task, di::new_task_id(), args).await
    }

    /// [`Producer::enqueue`] under a task id of the caller's choosing (an
    /// idempotency key): sending it again with the same arguments is a
    /// duplicate (`TaskHandle::duplicate`), with other arguments an error.
    pub async fn enqueue_with_id<A: Serialize, O: DeserializeOwned>(
        &self,
        task: TaskRef<A, O>,
        task_id: String,
        args: &A,
    ) -> Result<TaskHandle<O>, ProducerError> {
        let envelope = task.envelope_with_id(task_id, args)?;
        let published = self.enqueue_envelope(&envelope, Some(task.options().lane)).await?;
        Ok(TaskHandle {
            task_id: envelope.task_id,
            duplicate: published == Published::Duplicate,
            producer: self.clone(),
            _output: PhantomData,
        })
    }

    /// Enqueues a ready envelope (the CLI's path from JSON). The id and the
    /// labels are checked before anything is written; the envelope goes out
    /// with an [`di::ARGS_DIGEST_LABEL`] label. If the id has a record
    /// already: other arguments are [`ProducerError::Conflict`]; the same
    /// arguments with a final record are `Duplicate` without publishing;
    /// otherwise it is published and the stream's duplicate flag reported.
    pub async fn enqueue_envelope(
        &self,
        envelope: &Envelope,
        lane: Option<di::Lane>,
    ) -> Result<Published, ProducerError> {
        let envelope = digested(envelope)?;
        let mut queued = ResultRecord::new(envelope.task_name.clone(), TaskStatus::Queued, 0);
        queued.labels = envelope.labels.clone();
        if let Some(duplicate) = self.claim_record(&envelope, &queued, self.store.ttl()).await? {
            return Ok(duplicate);
        }
        Ok(self.publisher.publish(&envelope, lane).await?)
    }

    /// Enqueues `task` with `args` to run once `delay` has passed: records
    /// `scheduled` with the due time, and keeps the task in the broker (not
    /// in any process) until then. See [`Producer::enqueue_envelope_at`].
    pub async fn enqueue_in<A: Serialize, O: DeserializeOwned>(
        &self,
        task: TaskRef<A, O>,
        args: &A,
        delay: Duration,
    ) -> Result<TaskHandle<O>, ProducerError> {
        self.enqueue_at(task, args, SystemTime::now() + delay).await
    }

    /// Enqueues `task` with `args` to run at `due` (never before it; within
    /// about a second after it while the workers, NATS and Redis run).
    pub async fn enqueue_at<A: Serialize, O: DeserializeOwned>(
        &self,
        task: TaskRef<A, O>,
        args: &A,
        due: SystemTime,
    ) -> Result<TaskHandle<O>, ProducerError> {
        let envelope = task.envelope(args)?;
        let published = self.enqueue_envelope_at(&envelope, Some(task.options().lane), due).await?;
        Ok(TaskHandle {
            task_id: envelope.task_id,
            duplicate: published == Published::Duplicate,
            producer: self.clone(),
            _output: PhantomData,
        })
    }

    /// [`Producer::enqueue_envelope`] for a task due at `due`: the record
    /// says `scheduled` with `due_at` (and lives until the due time plus
    /// the result TTL); the envelope waits in the delayed stream, and a
    /// worker moves it to its lane once due. A due time already passed is
    /// an ordinary enqueue. Needs JetStream.
    pub async fn enqueue_envelope_at(
        &self,
        envelope: &Envelope,
        lane: Option<di::Lane>,
        due: SystemTime,
    ) -> Result<Published, ProducerError> {
        let Ok(delay) = due.duration_since(SystemTime::now()) else {
            return self.enqueue_envelope(envelope, lane).await;
        };
        if self.publisher.settings().mode != NatsMode::Jetstream {
            // Refused before a `scheduled` record is written for a task never sent.
            return Err(ProducerError::Publish(PublishError::NeedsJetstream));
        }
        let envelope = digested(envelope)?;
        let mut scheduled = ResultRecord::new(envelope.task_name.clone(), TaskStatus::Scheduled, 0);
        scheduled.labels = envelope.labels.clone();
        scheduled.due_at = Some(crate::schedule::unix_ms(due) as f64 / 1000.0);
        if let Some(duplicate) = self.claim_record(&envelope, &scheduled, self.store.ttl() + delay).await? {
            return Ok(duplicate);
        }
        Ok(self.publisher.publish_delayed(&envelope, lane, crate::schedule::unix_ms(due)).await?)
    }

    /// Writes `record` for a new task id. If the id has a record already:
    /// other arguments are [`ProducerError::Conflict`]; the same arguments
    /// with a final record are `Some(Duplicate)` (nothing to publish);
    /// otherwise `None` (publish: the stream reports a duplicate itself).
    async fn claim_record(
        &self,
        envelope: &Envelope,
        record: &ResultRecord,
        ttl: Duration,
    ) -> Result<Option<Published>, ProducerError> {
        // Never over a record that exists: the task id may have run already.
        if self.store.put_if_absent_for(&envelope.task_id, record, ttl).await? {
            return Ok(None);
        }
        let Some(existing) = self.store.get(&envelope.task_id).await? else { return Ok(None) };
        let digest = envelope.labels.get(ARGS_DIGEST_LABEL).and_then(|d| d.as_str());
        // A record without a digest (an older or a taskiq producer) counts as the same.
        if existing.labels.get(ARGS_DIGEST_LABEL).and_then(|d| d.as_str()).is_some_and(|d| Some(d) != digest) {
            return Err(ProducerError::Conflict { task_id: envelope.task_id.clone() });
        }
        Ok(existing.status.is_final().then_some(Published::Duplicate))
    }

    /// Replaces every record of `task_id` with a fresh `queued` one (before
    /// a replay).
    pub async fn reset_to_queued(&self, task_id: &str) -> Result<(), ProducerError> {
        let task_name = self.store.get(task_id).await?.map(|r| r.task_name).unwrap_or_default();
        self.store.delete(task_id).await?;
        self.store.put(task_id, &ResultRecord::new(task_name, TaskStatus::Queued, 0)).await?;
        Ok(())
    }

    /// Cancels `task_id`: a final `cancelled` record, unless it already has
    /// a final one. A queued (or scheduled, or retrying) task never runs; a
    /// running one is told through `ctx.cancelled()` within about a second
    /// and ends `cancelled` if it stops (a task that ignores the signal and
    /// finishes ends `success`). Returns the final status it already had,
    /// or `None` when the cancel was recorded.
    pub async fn cancel(&self, task_id: &str) -> Result<Option<TaskStatus>, ProducerError> {
        di::validate_task_id(task_id)?;
        let current = self.store.get(task_id).await?;
        let name = current.as_ref().map(|r| r.task_name.clone()).unwrap_or_default();
        // A scheduled task's cancel must outlive its due time, when the
        // worker that moves it looks for it.
        let until_due = current
            .and_then(|r| r.due_at)
            .and_then(|due| Duration::try_from_secs_f64(due - di::unix_now()).ok())
            .unwrap_or_default();
        if self
            .store
            .put_if_absent_for(task_id, &ResultRecord::cancelled(name, 0), self.store.ttl() + until_due)
            .await?
        {
            return Ok(None);
        }
        Ok(self.store.get(task_id).await?.map(|r| r.status).filter(|s| s.is_final()))
    }

    /// Cancels every unfinished task (queued, scheduled, running, retrying)
    /// whose record matches `filter` (as [`Producer::cancel`] each). Walks
    /// the records page by page; returns how many were cancelled. A task
    /// whose record expired, or one sent by a producer that writes no
    /// record, is not found this way.
    pub async fn cancel_matching(&self, filter: &CancelFilter) -> Result<u64, ProducerError> {
        let mut cursor = di::components::result_store::ScanCursor::default();
        let mut cancelled = 0;
        loop {
            let (next, page) = self.store.unfinished_page(cursor).await?;
            for (task_id, record) in page {
                if filter.matches(&record)
                    && di::validate_task_id(&task_id).is_ok()
                    && self.cancel(&task_id).await?.is_none()
                {
                    cancelled += 1;
                }
            }
            let Some(next) = next else { return Ok(cancelled) };
            cursor = next;
        }
    }

    /// One page of the records of unfinished tasks (and of finished ones
    /// whose records have not expired), as [`di::ResultStore::unfinished_page`]:
    /// start with `ScanCursor::default()`, stop when the next cursor is `None`.
    pub async fn unfinished_page(
        &self,
        cursor: di::components::result_store::ScanCursor,
    ) -> Result<(Option<di::components::result_store::ScanCursor>, di::components::result_store::Page), ProducerError>
    {
        Ok(self.store.unfinished_page(cursor).await?)
    }

    /// What `task_id` last said of its progress while running, if anything.
    pub async fn progress(&self, task_id: &str) -> Result<Option<di::TaskProgress>, ProducerError> {
        Ok(self.store.progress(task_id).await?)
    }

    /// Where `task_id` stands: its record and, while it runs (or after),
    /// what it last said of its progress. `None` when it has no record.
    pub async fn status(&self, task_id: &str) -> Result<Option<TaskState>, ProducerError> {
        let Some(record) = self.store.get(task_id).await? else { return Ok(None) };
        let progress = self.store.progress(task_id).await?;
        Ok(Some(TaskState { record, progress }))
    }

    /// The record of `task_id`, if any.
    pub async fn result(&self, task_id: &str) -> Result<Option<ResultRecord>, ProducerError> {
        Ok(self.store.get(task_id).await?)
    }

    /// Waits until `task_id` has a final record (success or failed). Wakes
    /// on the worker's completion notice; polls with backoff (1 ms doubling
    /// to 50 ms) as well, in case a notice is lost, so a long task costs
    /// Redis 20 reads a second at most.
    pub async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultRecord, ProducerError> {
        let started = Instant::now();
        // Subscribe before the first read: a notice cannot slip between them.
        let mut notices = self.publisher.subscribe_done(task_id).await;
        let mut pause = Duration::from_millis(1);
        let mut last = None;
        loop {
            if let Some(record) = self.store.get(task_id).await? {
                if record.status.is_final() {
                    return Ok(record);
                }
                last = Some(record.status);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(ProducerError::Timeout { task_id: task_id.to_owned(), waited, last });
            }
            let nap = tokio::time::sleep(pause.min(timeout - waited));
            match notices.as_mut() {
                Some(notices) => {
                    tokio::select! {
                        _ = notices.next() => {}
                        () = nap => {}
                    }
                }
                None => nap.await,
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// How many of `task_ids` have finished (one round trip for Redis).
    pub async fn count_final(&self, task_ids: &[String]) -> Result<usize, ProducerError> {
        Ok(self.store.count_final(task_ids).await?)
    }

    /// The publisher (for replays and raw payloads).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}

/// A task's record and its progress ([`Producer::status`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskState {
    /// The record: status, attempt, times, result or error.
    pub record: ResultRecord,
    /// What the task last said of its progress (`ctx.progress`), if it did.
    pub progress: Option<di::TaskProgress>,
}

/// Which unfinished tasks [`Producer::cancel_matching`] cancels: every
/// condition given must hold (an empty filter matches nothing).
#[derive(Debug, Clone, Default)]
pub struct CancelFilter {
    /// The registered task name.
    pub task_name: Option<String>,
    /// Labels the task was sent with (`key`, value as text).
    pub labels: Vec<(String, String)>,
    /// A broadcast campaign's tasks (its `campaign` label). Cancelling the
    /// campaign itself (`Campaigns::cancel`) is what stops its recipients
    /// not reached yet; this finds its tasks that have a record.
    pub campaign: Option<String>,
}

impl CancelFilter {
    fn matches(&self, record: &ResultRecord) -> bool {
        if self.task_name.is_none() && self.labels.is_empty() && self.campaign.is_none() {
            return false;
        }
        let name_ok = self.task_name.as_ref().is_none_or(|name| *name == record.task_name);
        let campaign = self.campaign.iter().map(|id| (crate::campaign::CAMPAIGN_LABEL.to_owned(), id.clone()));
        let labels_ok = self.labels.iter().cloned().chain(campaign).all(|(key, wanted)| {
            record.labels.get(&key).is_some_and(|value| match value.as_str() {
                Some(text) => text == wanted,
                None => value.to_string() == wanted,
            })
        });
        name_ok && labels_ok && !record.status.is_final()
    }
}

/// The envelope, checked (task id, labels) and labelled with its
/// arguments' digest.
fn digested(envelope: &Envelope) -> Result<Envelope, ProducerError> {
    di::validate_task_id(&envelope.task_id)?;
    di::validate_labels(&envelope.labels)?;
    let digest = envelope.args_digest();
    let mut envelope = envelope.clone();
    envelope.labels.insert(ARGS_DIGEST_LABEL.to_owned(), digest.as_str().into());
    Ok(envelope)
}

/// A task that was enqueued: its id, and a typed way to its output.
#[derive(Debug, Clone)]
pub struct TaskHandle<O> {
    /// The task id.
    pub task_id: String,
    /// True if this id was sent before with the same arguments: nothing new
    /// was queued, and the handle follows the first send's task.
    pub duplicate: bool,
    producer: Producer,
    _output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> TaskHandle<O> {
    /// Waits for the final record.
    pub async fn wait(&self, timeout: Duration) -> Result<ResultRecord, ProducerError> {
        self.producer.wait(&self.task_id, timeout).await
    }

    /// Waits and decodes the output; a failed task is `Ok(Err(record))`.
    pub async fn output(&self, timeout: Duration) -> Result<Result<O, ResultRecord>, ProducerError> {
        let record = self.wait(timeout).await?;
        if record.status != TaskStatus::Success {
            return Ok(Err(record));
        }
        Ok(Ok(di::envelope::decode_value(record.return_value)?))
    }
}
