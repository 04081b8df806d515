//! Delayed tasks on the worker side: the indexer and the mover (see the
//! module above for the design, ARCHITECTURE.md for its failure modes).
//!
//! **Invariant:** a delayed task is in the delayed stream until a copy of it
//! is stored in the task stream (or it was cancelled); it is never moved
//! before its due time (Redis' clock), and once due it is moved within a
//! nap (at most [`MAX_NAP`]) plus the time a move takes, while NATS and
//! Redis answer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, AckKind, ErrorCode, consumer, stream};

use di::ResultStore;
use futures_util::StreamExt;
use settings::NatsSettings;
use tokio_util::sync::CancellationToken;

use super::index::{Claim, DueIndex};
use super::{DUE_HEADER, MOVE_ID_HEADER, TARGET_HEADER, delayed_stream, delayed_subject, index_durable};
use crate::broker::publish::{PublishError, Publisher, TASK_ID_HEADER, try_insert};
use crate::broker::{self, BrokerError};

/// Entries claimed at once.
const BATCH: usize = 256;
/// Moves in flight at once.
const MOVES_IN_FLIGHT: usize = 32;
/// How long a claim keeps other movers off an entry, at most (what a
/// mover killed mid-move makes its entries wait; a move's three requests
/// time out after a second each); never more than half the stream's
/// duplicate window, so a second move after a crash is still dropped as a
/// duplicate.
const MAX_LEASE: Duration = Duration::from_secs(10);
/// How soon an entry whose move failed is claimed again.
const RETRY_MOVE: Duration = Duration::from_secs(1);
/// The longest the mover sleeps (an entry indexed meanwhile waits no longer).
pub const MAX_NAP: Duration = Duration::from_millis(200);
/// How long the rebuild lock is held at most (a rebuilder that dies frees it).
const REBUILD_HOLD: Duration = Duration::from_secs(10);
/// The longest one NATS request of a move may take (the client's own
/// timeout is 5 s; a request lost in a server restart should not hold the
/// mover that long).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause after a failure of NATS or Redis.
const RETRY: Duration = Duration::from_millis(250);
/// How long one pull of the indexer waits, and its heartbeat. A rebuild on
/// any worker deletes and re-creates the indexer consumer; a pull still
/// waiting on the deleted one gets no answer (NATS 2.9 sends none), and
/// until the client notices, nothing is indexed: with the client's
/// defaults (30 s, 15 s) that held retries and delayed tasks up to 30 s
/// past due. A missed heartbeat now ends such a pull within two seconds.
const INDEX_PULL_EXPIRES: Duration = Duration::from_secs(5);
const INDEX_PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Creates (or reuses) the delayed stream: file storage (a restarted NATS
/// keeps what waits), limits retention (the indexer's acks remove nothing;
/// the mover deletes what it moved).
pub async fn ensure_stream(js: &jetstream::Context, settings: &NatsSettings) -> Result<stream::Stream, BrokerError> {
    let config = stream::Config {
        name: delayed_stream(settings),
        subjects: vec![delayed_subject(settings)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.stream_replicas,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| BrokerError::Topology { what: format!("stream {}", delayed_stream(settings)), source: e.into() })
}

/// The indexer consumer: every message of the delayed stream, from the first.
fn index_config(settings: &NatsSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(index_durable(settings)),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        // A batch delivered to a binding that then broke (a rebuild, a
        // missed heartbeat) comes back after this; indexing is a ZADD, so a
        // second delivery is harmless and a short wait keeps tasks on time.
        ack_wait: Duration::from_secs(3),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// One worker's share of delayed tasks: indexing and moving.
pub struct DelayedMover {
    js: jetstream::Context,
    settings: NatsSettings,
    publisher: Publisher,
    store: Arc<dyn ResultStore>,
    index: DueIndex,
    /// The lane subjects a message may be moved to.
    targets: Vec<String>,
    /// How many rebuilds this worker made: the indexer binds the new
    /// consumer at once when it moves past the one it bound after.
    rebuilt: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for DelayedMover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedMover").field("stream", &delayed_stream(&self.settings)).finish_non_exhaustive()
    }
}

impl DelayedMover {
    /// A mover over the worker's publisher and result store, with its own
    /// Redis connection for the index.
    pub fn new(
        publisher: Publisher,
        store: Arc<dyn ResultStore>,
        redis: di::redis_conn::RedisClient,
        key_prefix: &str,
    ) -> Self {
        let settings = publisher.settings().clone();
        let targets = di::Lane::ALL.iter().map(|lane| broker::lane_subject(&settings, *lane)).collect();
        Self {
            js: publisher.jetstream().clone(),
            index: DueIndex::new(redis, key_prefix, &delayed_stream(&settings)),
            settings,
            publisher,
            store,
            targets,
            rebuilt: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Indexes and moves until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.index_loop(&stop), self.move_loop(&stop));
    }

    /// Reads the delayed stream through the indexer consumer into the index.
    async fn index_loop(&self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            if let Err(reason) = self.index_until_broken(stop).await {
                tracing::info!(%reason, "delayed tasks: the indexer stopped; binding again");
                nap(RETRY, stop).await;
            }
        }
    }

    /// Binds the indexer consumer and indexes until it breaks (deleted for
    /// a rebuild, NATS gone), this worker rebuilt the index (`Ok`: bind
    /// again at once), or `stop`.
    async fn index_until_broken(&self, stop: &CancellationToken) -> Result<(), String> {
        // Rebuilds from now on are news; one before this binding is not.
        let mut rebuilt = self.rebuilt.subscribe();
        rebuilt.mark_unchanged();
        let stream = self.js.get_stream(delayed_stream(&self.settings)).await.map_err(|e| e.to_string())?;
        // Created, or updated to this configuration (a consumer from an
        // older version keeps its 30 s ack wait otherwise).
        let consumer: consumer::PullConsumer = match stream.create_consumer(index_config(&self.settings)).await {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::debug!(%err, "delayed tasks: the indexer consumer cannot be updated; using it as it is");
                stream.get_consumer(&index_durable(&self.settings)).await.map_err(|e| e.to_string())?
            }
        };
        let messages = consumer
            .stream()
            .expires(INDEX_PULL_EXPIRES)
            .heartbeat(INDEX_PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut batches = messages.ready_chunks(BATCH);
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                Ok(()) = rebuilt.changed() => return Ok(()),
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else { return Err("the consumer's message stream ended".to_owned()) };
            let mut broken = None;
            let mut messages = Vec::with_capacity(batch.len());
            for item in batch {
                match item {
                    Ok(message) => messages.push(message),
                    Err(err) => broken = Some(err.to_string()),
                }
            }
            self.index_messages(messages).await;
            if let Some(reason) = broken {
                return Err(reason);
            }
        }
    }

    /// Adds a batch to the index, then acks it; if Redis refuses, hands the
    /// batch back to be delivered again after `RETRY`.
    async fn index_messages(&self, messages: Vec<jetstream::Message>) {
        if messages.is_empty() {
            return;
        }
        let entries: Vec<(u64, u64)> = messages
            .iter()
            .filter_map(|message| {
                let sequence = message.info().ok()?.stream_sequence;
                // No readable due time: due now (a hostile or foreign message
                // is moved at once and judged by the worker, not kept forever).
                let due = message.headers.as_ref().and_then(due_ms).unwrap_or(0);
                Some((sequence, due))
            })
            .collect();
        let kind = match self.index.add(&entries).await {
            Ok(()) => AckKind::Ack,
            Err(err) => {
                tracing::warn!(%err, "delayed tasks: cannot index (Redis); redelivering shortly");
                AckKind::Nak(Some(RETRY))
            }
        };
        for message in messages {
            if let Err(err) = message.ack_with(kind).await {
                tracing::debug!(%err, "delayed tasks: ack of an indexed message failed; it will be indexed again");
            }
        }
    }

    /// Claims what is due and moves it, napping until the next entry is due.
    async fn move_loop(&self, stop: &CancellationToken) {
        let mut failing = false;
        while !stop.is_cancelled() {
            let lease = MAX_LEASE.min(self.settings.duplicate_window / 2).max(Duration::from_secs(1));
            let pause = match self.index.claim(BATCH, lease).await {
                Ok(Claim::Rebuild) => {
                    failing = false;
                    self.rebuild().await
                }
                Ok(Claim::Due { entries, next, now }) => {
                    failing = false;
                    let full = entries.len() == BATCH;
                    if self.move_all(entries, now).await {
                        if full {
                            Duration::ZERO
                        } else {
                            next.unwrap_or(MAX_NAP).clamp(Duration::from_millis(2), MAX_NAP)
                        }
                    } else {
                        RETRY
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(%err, "delayed tasks: cannot claim due tasks (Redis); retrying every second");
                    }
                    failing = true;
                    RETRY
                }
            };
            nap(pause, stop).await;
        }
    }

    /// The index is not known to be whole: one worker (the one that gets
    /// the lock) marks it whole and re-creates the indexer consumer, which
    /// then delivers every waiting message again. Returns the pause before
    /// the next claim.
    async fn rebuild(&self) -> Duration {
        match self.index.lock_rebuild(REBUILD_HOLD).await {
            Ok(true) => {}
            Ok(false) => return MAX_NAP,
            Err(err) => {
                tracing::warn!(%err, "delayed tasks: cannot take the rebuild lock");
                return RETRY;
            }
        }
        let result = self.recreate_index().await;
        if let Err(err) = self.index.unlock_rebuild().await {
            tracing::debug!(%err, "delayed tasks: the rebuild lock expires by itself");
        }
        match result {
            Ok(waiting) => {
                self.rebuilt.send_modify(|count| *count += 1);
                tracing::info!(waiting, "delayed tasks: index (re)built from the delayed stream");
                Duration::ZERO
            }
            Err(reason) => {
                tracing::warn!(%reason, "delayed tasks: cannot rebuild the index; trying again");
                RETRY
            }
        }
    }

    /// Marks the index as being rebuilt, deletes and re-creates the indexer
    /// consumer (which then delivers every waiting message again), and
    /// marks the index whole. A failure at any step leaves the marker
    /// saying `building`, so the next claim rebuilds again. Returns how many
    /// messages wait in the delayed stream.
    async fn recreate_index(&self) -> Result<u64, String> {
        self.index.mark_building().await.map_err(|e| e.to_string())?;
        let name = delayed_stream(&self.settings);
        let mut stream = match self.js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(_) => ensure_stream(&self.js, &self.settings).await.map_err(|e| e.to_string())?,
        };
        let durable = index_durable(&self.settings);
        match stream.delete_consumer(&durable).await {
            Ok(_) => {}
            // Absent on a first start: nothing to delete.
            Err(err) if matches!(err.kind(), ConsumerErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
                {}
            Err(err) => return Err(format!("cannot delete the indexer consumer: {err}")),
        }
        stream
            .get_or_create_consumer::<consumer::pull::Config>(&durable, index_config(&self.settings))
            .await
            .map_err(|e| e.to_string())?;
        self.index.mark_whole().await.map_err(|e| e.to_string())?;
        Ok(stream.info().await.map_err(|e| e.to_string())?.state.messages)
    }

    /// Moves claimed entries: reads each from the delayed stream, drops the
    /// cancelled ones, publishes the rest to their lane subjects, deletes
    /// what is done from the stream and the index. An entry whose move
    /// failed is given back at its due time (claimed again at the next
    /// claim); if even that fails, its lease ends it. False if any failed.
    async fn move_all(&self, entries: Vec<(u64, u64)>, now: u64) -> bool {
        if entries.is_empty() {
            return true;
        }
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, self.js.get_stream(delayed_stream(&self.settings))).await;
        let stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::warn!(%err, "delayed tasks: cannot open the delayed stream; the claimed tasks move later");
                self.give_back(&entries, RETRY_MOVE).await;
                return false;
            }
            Err(_) => {
                tracing::warn!("delayed tasks: NATS did not answer; the claimed tasks move later");
                self.give_back(&entries, RETRY_MOVE).await;
                return false;
            }
        };
        let fetched: Vec<((u64, u64), Fetched)> = futures_util::stream::iter(entries)
            .map(|entry| {
                let stream = &stream;
                async move { (entry, fetch(stream, entry.0).await) }
            })
            .buffer_unordered(MOVES_IN_FLIGHT)
            .collect()
            .await;
        let ids: Vec<String> = fetched
            .iter()
            .filter_map(|(_, f)| match f {
                Fetched::Found(message) => task_id(&message.headers),
                _ => None,
            })
            .collect();
        let cancelled = self.store.cancelled_among(&ids).await.unwrap_or_default();
        let outcomes: Vec<(u64, Moved)> = futures_util::stream::iter(fetched)
            .map(|(entry, fetched)| {
                let (stream, cancelled) = (&stream, &cancelled);
                async move {
                    let moved = match fetched {
                        Fetched::Gone => Moved::Done,
                        Fetched::Failed => Moved::Failed,
                        Fetched::Found(message) => match due_ms(&message.headers) {
                            // The index was wrong (a stream created again
                            // reuses sequences): back to its own due time.
                            Some(due) if due > now => Moved::Early(Duration::from_millis(due - now)),
                            _ => {
                                let id = task_id(&message.headers);
                                let dropped = id.as_ref().is_some_and(|id| cancelled.contains(id));
                                if (dropped || self.publish(message).await) && delete(stream, entry.0).await {
                                    Moved::Done
                                } else {
                                    Moved::Failed
                                }
                            }
                        },
                    };
                    (entry.0, moved)
                }
            })
            .buffer_unordered(MOVES_IN_FLIGHT)
            .collect()
            .await;
        let done: Vec<u64> =
            outcomes.iter().filter(|(_, m)| *m == Moved::Done).map(|(sequence, _)| *sequence).collect();
        let back: Vec<(u64, Duration)> = outcomes
            .iter()
            .filter_map(|(sequence, moved)| match moved {
                Moved::Done => None,
                Moved::Failed => Some((*sequence, RETRY_MOVE)),
                Moved::Early(wait) => Some((*sequence, *wait)),
            })
            .collect();
        if let Err(err) = self.index.remove(&done).await {
            // Each is claimed again after its lease, found gone, and removed.
            tracing::debug!(%err, "delayed tasks: cannot remove moved entries from the index");
        }
        let failed = outcomes.iter().any(|(_, m)| *m == Moved::Failed);
        if let Err(err) = self.index.release(&back).await {
            tracing::debug!(%err, "delayed tasks: cannot give claimed entries back; their lease ends them");
        }
        !failed
    }

    /// Gives claimed entries back, due again after `delay`.
    async fn give_back(&self, entries: &[(u64, u64)], delay: Duration) {
        let back: Vec<(u64, Duration)> = entries.iter().map(|(sequence, _)| (*sequence, delay)).collect();
        if let Err(err) = self.index.release(&back).await {
            tracing::debug!(%err, "delayed tasks: cannot give claimed entries back; their lease ends them");
        }
    }

    /// Publishes one delayed message to its lane subject (a target that is
    /// not a lane subject goes to the transactional one, which reroutes by
    /// the envelope's own label). True once the task stream has it.
    async fn publish(&self, message: async_nats::jetstream::message::StreamMessage) -> bool {
        let wanted = message.headers.get(TARGET_HEADER).map(|v| v.as_str().to_owned());
        let target = wanted.filter(|t| self.targets.contains(t)).unwrap_or_else(|| self.targets_default());
        // A message without a task id keeps its stream sequence as its
        // message id (the worker dead-letters what it cannot read).
        let task = task_id(&message.headers);
        // A move id is trusted only in the form `postpone` writes.
        let move_id = message.headers.get(MOVE_ID_HEADER).map(|v| v.as_str().to_owned()).filter(|id| {
            task.as_ref().is_some_and(|task| {
                id.strip_prefix(task.as_str())
                    .and_then(|rest| rest.strip_prefix(":r"))
                    .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            })
        });
        let id = move_id.or(task).unwrap_or_else(|| format!("delayed:{}", message.sequence));
        let headers = carried_headers(&message.headers);
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, self.publisher.send(target, &id, headers, message.payload));
        match sent.await.unwrap_or_else(|_| {
            Err(PublishError::Rejected { subject: "the lane".into(), source: "no answer in time".into() })
        }) {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(%err, task_id = %id, "delayed tasks: cannot move a due task; it is tried again after its lease");
                false
            }
        }
    }

    fn targets_default(&self) -> String {
        broker::lane_subject(&self.settings, di::Lane::Transactional)
    }

    /// How many delayed tasks the index holds (waiting, or being moved).
    pub async fn waiting(&self) -> Result<u64, String> {
        self.index.len().await.map_err(|e| e.to_string())
    }
}

/// What became of one claimed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// Moved (or dropped: cancelled, or gone from the stream).
    Done,
    /// Not moved: tried again soon.
    Failed,
    /// Not due yet by its own header: back until then.
    Early(Duration),
}

/// The headers a moved message keeps: not the server's (`Nats-*`: an
/// expected-stream header, say, would make the task stream refuse every
/// move) nor the delayed stream's own controls.
pub(crate) fn carried_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in stored.iter() {
        let name: &str = name.as_ref();
        let control = [DUE_HEADER, TARGET_HEADER, MOVE_ID_HEADER].iter().any(|c| c.eq_ignore_ascii_case(name));
        if control || name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
            continue;
        }
        if let Some(value) = values.first() {
            try_insert(&mut headers, name, value.as_str());
        }
    }
    headers
}

/// A delayed message read by sequence.
enum Fetched {
    Found(async_nats::jetstream::message::StreamMessage),
    /// Not in the stream (moved already): drop the index entry.
    Gone,
    /// NATS did not answer: leave the entry leased.
    Failed,
}

async fn fetch(stream: &stream::Stream, sequence: u64) -> Fetched {
    let Ok(fetched) = tokio::time::timeout(REQUEST_TIMEOUT, stream.get_raw_message(sequence)).await else {
        return Fetched::Failed;
    };
    match fetched {
        Ok(message) => Fetched::Found(message),
        Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Fetched::Gone,
        Err(err) if matches!(err.kind(), stream::RawMessageErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::NO_MESSAGE_FOUND) => {
            Fetched::Gone
        }
        Err(err) => {
            tracing::debug!(%err, sequence, "delayed tasks: cannot read a due task");
            Fetched::Failed
        }
    }
}

/// Deletes a moved message; true once it is gone (a second delete of a
/// message already deleted is an error from the server, and also "gone").
async fn delete(stream: &stream::Stream, sequence: u64) -> bool {
    let Ok(deleted) = tokio::time::timeout(REQUEST_TIMEOUT, stream.delete_message(sequence)).await else {
        return false;
    };
    match deleted {
        Ok(_) => true,
        Err(err) if matches!(err.kind(), stream::DeleteMessageErrorKind::JetStream(ref e) if e.error_code() == ErrorCode::NO_MESSAGE_FOUND) => {
            true
        }
        Err(err) => {
            tracing::debug!(%err, sequence, "delayed tasks: cannot delete a moved task; the stream drops the next move as a duplicate");
            false
        }
    }
}

fn due_ms(headers: &HeaderMap) -> Option<u64> {
    headers.get(DUE_HEADER).and_then(|v| v.as_str().parse::<u64>().ok())
}

fn task_id(headers: &HeaderMap) -> Option<String> {
    headers.get(TASK_ID_HEADER).map(|v| v.as_str().to_owned()).filter(|id| !id.is_empty())
}

/// Sleeps `pause` unless `stop` comes first.
async fn nap(pause: Duration, stop: &CancellationToken) {
    if pause.is_zero() {
        tokio::task::yield_now().await;
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = stop.cancelled() => {}
    }
}
