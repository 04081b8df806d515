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

mod search;
mod write;

pub use search::{Found, Query, counts_since, get, search};
pub use write::{Row, writer_pool};

use write::{prune, write_rows, write_rows_pg};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use di::{DecodeLimits, Envelope, EnvelopeArguments, Registry, ResultRecord};
use settings::IndexSettings;
use sqlx::AnyPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest argument or result JSON kept per row.
const MAX_JSON: usize = 4096;
/// The longest error text kept.
const MAX_ERROR: usize = 2048;
/// The longest task id or task name kept (longer ones are refused
/// messages' recovered ones; valid ids have at most 128 bytes).
const MAX_ID: usize = 256;
/// The longest name and value a key (argument or label) may have to be searchable.
const MAX_KEY_VALUE: usize = 64;
/// Searchable values per task, at most.
const MAX_KEYS: usize = 16;
/// How long the writer gathers rows before it writes a partial batch.
const LINGER: Duration = Duration::from_millis(200);
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
        let (arguments, mut keys) = match &decoded {
            Some(decoded) => arguments_json(decoded, secret),
            None => ("{}".to_owned(), Vec::new()),
        };
        for (name, value) in &record.labels {
            if keys.len() >= MAX_KEYS {
                break;
            }
            if name.len() > MAX_KEY_VALUE {
                continue;
            }
            // The framework's own labels (the arguments' digest, the lane)
            // are on every task: searchable by task name and status instead.
            if name.starts_with("courier_") || name == "lane" {
                continue;
            }
            if let Some(value) = scalar(value) {
                keys.push((format!("label.{}", without_nul(name)), value));
            }
        }
        // A keyword argument `label.x` and a label `x` of the same value
        // would be one key twice, which would cost the whole batch.
        keys.sort_unstable();
        keys.dedup();
        let result = (!record.return_value.is_nil()).then(|| cut(&json(&record.return_value), MAX_JSON));
        let error =
            record.error.as_ref().map(|e| cut(&format!("{}: {}", e.exc_type, e.exc_message.join("; ")), MAX_ERROR));
        let finished = record.finished_at.unwrap_or(record.updated_at);
        let started = record.started_at.filter(|s| *s > 0.0);
        Row {
            // Valid ids hold no NUL and have at most 128 bytes; a refused
            // message's recovered one may not.
            task_id: cut(&task_id, MAX_ID),
            task_name: cut(&record.task_name, MAX_ID),
            status: record.status.name(),
            attempt: i64::from(record.attempt),
            labels: cut(&serde_json::to_string(&Labels(&record.labels)).unwrap_or_else(|_| "{}".into()), MAX_JSON),
            arguments,
            result,
            error,
            started_at: started.map(ms),
            finished_at: ms(finished),
            elapsed_ms: (record.execution_time * 1000.0) as i64,
            keys,
        }
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
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while buffer.len() < self.batch {
                tokio::select! {
                    row = rows.recv() => match row {
                        Some(row) => buffer.push(row),
                        None => break,
                    },
                    () = &mut linger => break,
                }
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

/// An argument as stored: its value, or the mask.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Shown<'a> {
    Value(Json<'a>),
    Masked(&'static str),
}

/// A MessagePack value written as JSON whatever it holds: a map key that is
/// not text is written as its text form (JSON keys are strings), so one odd
/// value never costs the row its other arguments.
struct Json<'a>(&'a rmpv::Value);

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use rmpv::Value;
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => s.serialize_i64(i),
                (None, Some(u)) => s.serialize_u64(u),
                (None, None) => s.serialize_unit(),
            },
            Value::F32(f) => s.serialize_f32(*f),
            Value::F64(f) => s.serialize_f64(*f),
            Value::String(text) => match text.as_str() {
                Some(text) => s.serialize_str(text),
                None => s.serialize_str(&String::from_utf8_lossy(text.as_bytes())),
            },
            Value::Binary(bytes) => s.serialize_bytes(bytes),
            Value::Array(items) => s.collect_seq(items.iter().map(Json)),
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    match key.as_str() {
                        Some(key) => map.serialize_entry(key, &Json(value))?,
                        None => map.serialize_entry(&key.to_string(), &Json(value))?,
                    }
                }
                map.end()
            }
            Value::Ext(kind, bytes) => s.collect_seq([Json(&Value::from(*kind)), Json(&Value::Binary(bytes.clone()))]),
        }
    }
}

/// The labels as stored: each value as text, cut.
struct Labels<'a>(&'a BTreeMap<String, rmpv::Value>);

impl serde::Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(name, value)| (name, Label(value))))
    }
}

struct Label<'a>(&'a rmpv::Value);

impl serde::Serialize for Label<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_str() {
            // Most labels: short text, written as it is.
            Some(text) if text.len() <= MAX_KEY_VALUE * 2 && !text.contains('\0') => s.serialize_str(text),
            _ => s.serialize_str(&cut(&json(self.0), MAX_KEY_VALUE * 2)),
        }
    }
}

/// The stored arguments' JSON shape, `{"args": [...], "kwargs": {...}}`,
/// secret fields masked.
struct Stored<'a> {
    decoded: &'a EnvelopeArguments,
    secret: &'a [&'a str],
}

impl<'a> Stored<'a> {
    /// A positional argument (Python producers send the fields in order: a
    /// task with secret fields has them all masked, having no names to match).
    fn positional(&self, value: &'a rmpv::Value) -> Shown<'a> {
        if self.secret.is_empty() { Shown::Value(Json(value)) } else { Shown::Masked(MASK) }
    }

    fn named(&self, name: &str, value: &'a rmpv::Value) -> Shown<'a> {
        if self.secret.contains(&name) { Shown::Masked(MASK) } else { Shown::Value(Json(value)) }
    }
}

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut stored = s.serialize_struct("Stored", 2)?;
        stored.serialize_field("args", &Args(self))?;
        stored.serialize_field("kwargs", &Kwargs(self))?;
        stored.end()
    }
}

struct Args<'s, 'a>(&'s Stored<'a>);

impl serde::Serialize for Args<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.decoded.args.iter().map(|value| self.0.positional(value)))
    }
}

struct Kwargs<'s, 'a>(&'s Stored<'a>);

impl serde::Serialize for Kwargs<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.decoded.kwargs.iter().map(|(name, value)| (name.as_str(), self.0.named(name, value))))
    }
}

/// The arguments as stored (JSON, secret fields masked, cut) and the
/// searchable keyword values. Serialized straight from the decoded values.
fn arguments_json(decoded: &EnvelopeArguments, secret: &[&str]) -> (String, Vec<(String, String)>) {
    let keys = decoded
        .kwargs
        .iter()
        .filter(|(name, _)| !secret.contains(&name.as_str()) && name.len() <= MAX_KEY_VALUE)
        .filter_map(|(name, value)| Some((without_nul(name), scalar(value)?)))
        .take(MAX_KEYS)
        .collect();
    let json = serde_json::to_string(&Stored { decoded, secret }).unwrap_or_else(|_| "{}".to_owned());
    (cut(&json, MAX_JSON), keys)
}

/// A short scalar as searchable text (numbers, strings, booleans).
fn scalar(value: &rmpv::Value) -> Option<String> {
    let text = match value {
        rmpv::Value::Integer(n) => n.to_string(),
        rmpv::Value::String(s) => without_nul(s.as_str()?),
        rmpv::Value::Boolean(b) => b.to_string(),
        rmpv::Value::F64(f) => f.to_string(),
        _ => return None,
    };
    (text.len() <= MAX_KEY_VALUE).then_some(text)
}

/// `text` without NUL characters (PostgreSQL's text cannot hold them).
fn without_nul(text: &str) -> String {
    if text.contains('\0') { text.replace('\0', "") } else { text.to_owned() }
}

fn json(value: &rmpv::Value) -> String {
    match value {
        rmpv::Value::String(s) if s.as_str().is_some() => s.as_str().unwrap_or_default().to_owned(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
/// NUL characters are dropped: PostgreSQL's text cannot hold them, and one
/// in an error message would cost its whole batch.
fn cut(text: &str, max: usize) -> String {
    if text.contains('\0') {
        return cut(&text.replace('\0', ""), max);
    }
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_are_masked_and_not_searchable() {
        let envelope = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([
                ("chat_id".into(), rmpv::Value::from(42)),
                ("token".into(), rmpv::Value::from("s3cr3t-value")),
                ("text".into(), rmpv::Value::from("x".repeat(500))),
            ]),
        };
        let (json, keys) = arguments_json(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains(MASK), "{json}");
        assert_eq!(keys, vec![("chat_id".to_owned(), "42".to_owned())], "long values and secrets are not keys");
    }

    #[test]
    fn positional_arguments_of_a_task_with_secrets_are_masked_and_odd_keys_do_not_panic() {
        let mut envelope = Envelope::new("t".into(), "send", &()).unwrap();
        envelope.args = vec![rmpv::Value::from("s3cr3t"), rmpv::Value::Map(vec![(rmpv::Value::Nil, 1.into())])];
        let envelope =
            Envelope::arguments_from_msgpack(&envelope.to_msgpack().unwrap(), &DecodeLimits::DEFAULT).unwrap();
        let (json, _) = arguments_json(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        let (json, _) = arguments_json(&envelope, &[]);
        assert!(json.contains("s3cr3t"), "no secrets declared: shown as sent: {json}");
    }

    #[test]
    fn odd_values_keep_the_other_arguments() {
        let odd = rmpv::Value::Map(vec![(rmpv::Value::Nil, 1.into()), (rmpv::Value::from(7), "x".into())]);
        let decoded = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([("odd".into(), odd), ("chat_id".into(), rmpv::Value::from(42))]),
        };
        let (json, keys) = arguments_json(&decoded, &[]);
        assert_eq!(json, r#"{"args":[],"kwargs":{"chat_id":42,"odd":{"nil":1,"7":"x"}}}"#);
        assert_eq!(keys, vec![("chat_id".to_owned(), "42".to_owned())]);
    }

    #[test]
    fn a_row_is_bounded_and_holds_each_key_once() {
        let (queue, _rows) = mpsc::channel(1);
        let indexer =
            Indexer { queue, dropped: Arc::default(), secrets: HashMap::new(), limits: DecodeLimits::DEFAULT };
        let arguments = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([("label.x".into(), rmpv::Value::from("1")), ("y".repeat(65), 2.into())]),
        };
        let mut record = ResultRecord::new("t", di::TaskStatus::Success, 1);
        record.labels.insert("x".into(), "1".into());
        for i in 0..200 {
            record.labels.insert(format!("many{i}"), "v".repeat(100).into());
        }
        let row = indexer.build("i".repeat(1_000), &[], record, Some(arguments));
        assert_eq!(row.keys.iter().filter(|(name, _)| name == "label.x").count(), 1, "{:?}", row.keys);
        assert!(row.keys.iter().all(|(name, _)| name.len() <= MAX_KEY_VALUE + "label.".len()));
        assert!(row.labels.len() <= MAX_JSON + '…'.len_utf8(), "{}", row.labels.len());
        assert!(row.task_id.len() <= MAX_ID + '…'.len_utf8());
    }

    #[test]
    fn cut_keeps_characters_whole() {
        let text = "é".repeat(100);
        let short = cut(&text, 11);
        assert!(short.len() <= 11 + '…'.len_utf8(), "{short}");
        assert!(short.ends_with('…'));
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("a\0b", 10), "ab", "no NUL reaches PostgreSQL");
    }
}
