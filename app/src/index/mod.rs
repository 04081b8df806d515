//! The task index: every finished task as a row in the database
//! (`courier_task_index`, plus its searchable values in `courier_task_keys`),
//! so the board can search history by task, status, label or argument value
//! long after the result records' TTL has ended them in Redis.
//!
//! Off the hot path: after a task is settled and its producer told, the
//! worker turns it into its row (the arguments the executor decoded, as
//! JSON with the fields a task marks secret masked, cut to a few KiB) and
//! hands it to a bounded queue with `try_reserve`; a background writer
//! inserts up to `index.batch` rows at once. When the queue is full (a slow
//! or unreachable database), new rows are dropped, before being built, and
//! counted, and tasks never wait for the index: it is history, not the
//! source of truth (the result record is). A queued row holds no payload,
//! and every text in it is cut (arguments, result and labels to 4 KiB), so
//! the queue's memory is bounded by its length times about 16 KiB.
//! Rows older than `index.retention` are deleted.

mod copy;
mod row;
mod search;
mod write;

pub use search::{Found, Query, counts_since, get, search};
pub use write::{Row, prune, writer_pool};

use write::{write_rows, write_rows_pg};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use di::{DecodeLimits, Envelope, EnvelopeArguments, Registry, ResultRecord};
use settings::IndexSettings;
use sqlx::AnyPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the writer gathers rows before it writes a partial batch: a
/// batch costs the database about 1 ms besides its rows (BENCHMARKS.md), so
/// fuller batches cost less per row.
const LINGER: Duration = Duration::from_millis(500);
/// How often the gathering writer looks whether a batch is full: rows queued
/// meanwhile do not wake it one by one.
const LOOK_EVERY: Duration = Duration::from_millis(20);
/// How often old rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// What a secret field's value becomes.
pub const MASK: &str = "•••";

/// The worker's side: what builds rows, and a bounded queue in front of
/// the writer.
pub struct Indexer {
    queue: mpsc::Sender<Row>,
    dropped: Arc<AtomicU64>,
    secrets: HashMap<&'static str, &'static [&'static str]>,
    limits: DecodeLimits,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl Indexer {
    /// Starts the writer (it ends with `stop`, after writing what is queued)
    /// and returns the queue's sending side.
    /// On PostgreSQL, `postgres` is a pool of the writer's own (one
    /// connection is plenty): rows go in by `COPY`, where the portable
    /// path binds every value of a batch.
    pub fn start(
        pool: AnyPool,
        postgres: Option<sqlx::PgPool>,
        registry: &Registry,
        settings: &IndexSettings,
        limits: DecodeLimits,
        worker: String,
        stop: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (queue, rows) = mpsc::channel(settings.queue.max(1));
        let secrets = registry.tasks().map(|def| (def.name(), def.options.secret_fields)).collect();
        let writer =
            Writer { pool, batch: settings.batch.clamp(1, 2_000), retention: settings.retention, worker, postgres };
        let handle = tokio::spawn(writer.run(rows, stop));
        (Arc::new(Self { queue, dropped: Arc::new(AtomicU64::new(0)), secrets, limits }), handle)
    }

    /// Queues a finished task's row; never waits (a full queue drops it).
    /// `arguments` are the ones the executor decoded; without them, they
    /// are read from `payload` (within the worker's decode limits).
    pub fn add(&self, task_id: String, payload: &[u8], record: ResultRecord, arguments: Option<EnvelopeArguments>) {
        if !record.status.is_final() {
            return;
        }
        match self.queue.try_reserve() {
            Ok(slot) => slot.send(self.build(task_id, payload, record, arguments)),
            Err(err) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    match err {
                        mpsc::error::TrySendError::Full(()) => tracing::warn!(
                            dropped,
                            "task index: the queue is full (the database is slow or away); rows dropped"
                        ),
                        mpsc::error::TrySendError::Closed(()) => {
                            tracing::error!(dropped, "task index: the writer stopped; rows dropped (a bug: report it)")
                        }
                    }
                }
            }
        }
    }

    /// Rows dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Turns a finished task into its row.
    fn build(
        &self,
        task_id: String,
        payload: &[u8],
        record: ResultRecord,
        arguments: Option<EnvelopeArguments>,
    ) -> Row {
        // A message refused as too big or too deep is recorded as failed
        // and comes here too: its arguments show as `{}`.
        let decoded = arguments.or_else(|| Envelope::arguments_from_msgpack(payload, &self.limits).ok());
        let secret: &[&str] = self.secrets.get(record.task_name.as_str()).copied().unwrap_or_default();
        row::build(task_id, decoded.as_ref(), secret, record)
    }
}

struct Writer {
    pool: AnyPool,
    batch: usize,
    retention: Duration,
    worker: String,
    postgres: Option<sqlx::PgPool>,
}

impl Writer {
    async fn run(self, mut rows: mpsc::Receiver<Row>, stop: CancellationToken) {
        // A random first prune, so a fleet started together does not prune together.
        let mut next_prune = tokio::time::Instant::now() + Duration::from_secs(fastrand::u64(60..600));
        let mut buffer = Vec::with_capacity(self.batch);
        loop {
            let first = tokio::select! {
                row = rows.recv() => row,
                () = stop.cancelled() => { rows.close(); rows.recv().await }
            };
            let Some(first) = first else { break };
            buffer.push(first);
            let deadline = tokio::time::Instant::now() + LINGER;
            // Queued rows wait in the queue while the writer gathers: it
            // stops gathering when half the queue is taken (an
            // `index.queue` smaller than `index.batch` never fills a batch).
            while 1 + rows.len() < self.batch
                && rows.len() * 2 < rows.max_capacity()
                && tokio::time::Instant::now() < deadline
                && !stop.is_cancelled()
                && !rows.is_closed()
            {
                tokio::select! {
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                    () = stop.cancelled() => {}
                }
            }
            let ready = rows.len().min(self.batch - 1);
            if ready > 0 {
                rows.recv_many(&mut buffer, ready).await;
            }
            // One row per task id in a batch (a statement may not update a
            // row twice): the last one queued wins.
            let mut seen = std::collections::HashSet::with_capacity(buffer.len());
            let keep: Vec<bool> = buffer.iter().rev().map(|row| seen.insert(row.task_id.as_str())).collect();
            let mut keep = keep.into_iter().rev();
            buffer.retain(|_| keep.next().unwrap_or(true));
            self.write(&buffer).await;
            buffer.clear();
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                prune(&self.pool, self.retention).await;
            }
        }
    }

    /// Writes rows in one transaction (rows, then their keys); on failure
    /// they are lost to the index (logged), never retried forever.
    async fn write(&self, rows: &[Row]) {
        if rows.is_empty() {
            return;
        }
        let written = match &self.postgres {
            Some(pg) => write_rows_pg(pg, rows, &self.worker).await,
            None => write_rows(&self.pool, rows, &self.worker).await,
        };
        if let Err(err) = written {
            tracing::warn!(%err, rows = rows.len(), "task index: a batch was not written");
        }
    }
}
