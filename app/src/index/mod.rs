//! The task index: every finished task as a row in the database
//! (`courier_task_index`, plus its searchable values in `courier_task_keys`),
//! so the board can search history by task, status, label or argument value
//! long after the result records' TTL has ended them in Redis.
//!
//! Off the hot path: a finished task costs the worker one `try_send` into a
//! bounded queue (the payload's bytes are shared, not copied). A background
//! writer decodes the arguments, masks the fields a task marks secret, and
//! inserts up to `index.batch` rows in one statement. When the queue is full
//! (a slow or unreachable database), new rows are dropped and counted, and
//! tasks never wait for the index: it is history, not the source of truth
//! (the result record is). Rows older than `index.retention` are deleted.

mod search;

pub use search::{Found, Query, counts_since, get, search};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use di::{Envelope, Registry, ResultRecord};
use settings::IndexSettings;
use sqlx::AnyPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest argument or result JSON kept per row.
const MAX_JSON: usize = 4096;
/// The longest error text kept.
const MAX_ERROR: usize = 2048;
/// The longest value a key (argument or label) may have to be searchable.
const MAX_KEY_VALUE: usize = 64;
/// Searchable values per task, at most.
const MAX_KEYS: usize = 16;
/// How long the writer gathers rows before it writes a partial batch.
const LINGER: Duration = Duration::from_millis(200);
/// How often old rows are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement when pruning.
const PRUNE_CHUNK: i64 = 10_000;
/// What a secret field's value becomes.
pub const MASK: &str = "•••";

/// One finished task waiting to be written.
struct Pending {
    payload: Bytes,
    record: ResultRecord,
    task_id: String,
}

/// The worker's side: a bounded queue in front of the writer.
pub struct Indexer {
    queue: mpsc::Sender<Pending>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl Indexer {
    /// Starts the writer (it ends with `stop`, after writing what is queued)
    /// and returns the queue's sending side.
    pub fn start(
        pool: AnyPool,
        postgres: bool,
        registry: &Registry,
        settings: &IndexSettings,
        worker: String,
        stop: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (queue, rows) = mpsc::channel(settings.queue.max(1));
        let secrets: HashMap<&'static str, &'static [&'static str]> =
            registry.tasks().map(|def| (def.name(), def.options.secret_fields)).collect();
        let writer = Writer {
            pool,
            secrets,
            batch: settings.batch.clamp(1, 2_000),
            retention: settings.retention,
            worker,
            postgres,
        };
        let handle = tokio::spawn(writer.run(rows, stop));
        (Arc::new(Self { queue, dropped: Arc::new(AtomicU64::new(0)) }), handle)
    }

    /// Queues a finished task; never waits (a full queue drops it).
    pub fn add(&self, task_id: &str, payload: &Bytes, record: &ResultRecord) {
        let pending = Pending { payload: payload.clone(), record: record.clone(), task_id: task_id.to_owned() };
        if let Err(err) = self.queue.try_send(pending) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                match err {
                    mpsc::error::TrySendError::Full(_) => tracing::warn!(
                        dropped,
                        "task index: the queue is full (the database is slow or away); rows dropped"
                    ),
                    mpsc::error::TrySendError::Closed(_) => {
                        tracing::error!(dropped, "task index: the writer stopped; rows dropped (a bug: report it)")
                    }
                }
            }
        }
    }

    /// Rows dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Writer {
    pool: AnyPool,
    secrets: HashMap<&'static str, &'static [&'static str]>,
    batch: usize,
    retention: Duration,
    worker: String,
    postgres: bool,
}

impl Writer {
    async fn run(self, mut rows: mpsc::Receiver<Pending>, stop: CancellationToken) {
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
            let built: Vec<Row> = buffer.drain(..).filter_map(|p| self.build(p)).collect();
            self.write(&built).await;
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                prune(&self.pool, self.retention).await;
            }
        }
    }

    /// Turns a finished task into its row; None for what is not final.
    fn build(&self, pending: Pending) -> Option<Row> {
        let record = pending.record;
        if !record.status.is_final() {
            return None;
        }
        let envelope = Envelope::from_msgpack(&pending.payload).ok();
        let secret: &[&str] = self.secrets.get(record.task_name.as_str()).copied().unwrap_or_default();
        let (arguments, mut keys) = match &envelope {
            Some(envelope) => arguments(envelope, secret),
            None => ("{}".to_owned(), Vec::new()),
        };
        for (name, value) in &record.labels {
            if keys.len() >= MAX_KEYS {
                break;
            }
            // The framework's own labels (the arguments' digest, the lane)
            // are on every task: searchable by task name and status instead.
            if let Some(value) = scalar(value).filter(|_| !name.starts_with("courier_") && name != "lane") {
                keys.push((format!("label.{name}"), value));
            }
        }
        let labels: BTreeMap<&String, String> =
            record.labels.iter().map(|(k, v)| (k, cut(&json(v), MAX_KEY_VALUE * 2))).collect();
        let result = (!record.return_value.is_nil()).then(|| cut(&json(&record.return_value), MAX_JSON));
        let error =
            record.error.as_ref().map(|e| cut(&format!("{}: {}", e.exc_type, e.exc_message.join("; ")), MAX_ERROR));
        let finished = record.finished_at.unwrap_or(record.updated_at);
        let started = record.started_at.filter(|s| *s > 0.0);
        Some(Row {
            task_id: pending.task_id,
            task_name: record.task_name,
            status: record.status.name(),
            attempt: i64::from(record.attempt),
            labels: serde_json::to_string(&labels).unwrap_or_else(|_| "{}".into()),
            arguments,
            result,
            error,
            started_at: started.map(ms),
            finished_at: ms(finished),
            elapsed_ms: (record.execution_time * 1000.0) as i64,
            keys,
        })
    }

    /// Writes rows in one transaction (rows, then their keys); on failure
    /// they are lost to the index (logged), never retried forever.
    async fn write(&self, rows: &[Row]) {
        if rows.is_empty() {
            return;
        }
        if let Err(err) = write_rows(&self.pool, rows, &self.worker, self.postgres).await {
            tracing::warn!(%err, rows = rows.len(), "task index: a batch was not written");
        }
    }
}

/// One row of the index, as written.
#[derive(Debug, Clone)]
pub struct Row {
    task_id: String,
    task_name: String,
    status: &'static str,
    attempt: i64,
    labels: String,
    arguments: String,
    result: Option<String>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: i64,
    elapsed_ms: i64,
    keys: Vec<(String, String)>,
}

/// The columns bound per row.
const COLUMNS: usize = 12;

async fn write_rows(pool: &AnyPool, rows: &[Row], worker: &str, postgres: bool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if postgres {
        // History, not the source of truth: a database crash may lose the
        // last few hundred milliseconds of it, and the commit waits for no
        // disk flush (this transaction only).
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    }
    // SQLite allows 32,766 bound values, PostgreSQL 65,535: chunks stay under both.
    for chunk in rows.chunks(2_000) {
        let mut sql = String::from(
            "INSERT INTO courier_task_index (task_id, task_name, status, attempt, labels, arguments, result, error, \
             started_at, finished_at, elapsed_ms, worker) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..COLUMNS {
                if c > 0 {
                    sql.push(',');
                }
                sql.push('$');
                sql.push_str(&(i * COLUMNS + c + 1).to_string());
            }
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (task_id) DO UPDATE SET task_name = excluded.task_name, status = excluded.status, \
             attempt = excluded.attempt, labels = excluded.labels, arguments = excluded.arguments, \
             result = excluded.result, error = excluded.error, started_at = excluded.started_at, \
             finished_at = excluded.finished_at, elapsed_ms = excluded.elapsed_ms, worker = excluded.worker",
        );
        // Placeholders only: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.task_id.as_str())
                .bind(row.task_name.as_str())
                .bind(row.status)
                .bind(row.attempt)
                .bind(row.labels.as_str())
                .bind(row.arguments.as_str())
                .bind(row.result.as_deref())
                .bind(row.error.as_deref())
                .bind(row.started_at)
                .bind(row.finished_at)
                .bind(row.elapsed_ms)
                .bind(worker);
        }
        query.execute(&mut *tx).await?;
    }
    let keys: Vec<(&Row, &(String, String))> = rows.iter().flat_map(|r| r.keys.iter().map(move |k| (r, k))).collect();
    for chunk in keys.chunks(4_000) {
        let mut sql = String::from("INSERT INTO courier_task_keys (name, value, task_id, finished_at) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let n = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
        }
        sql.push_str(" ON CONFLICT (name, value, task_id) DO UPDATE SET finished_at = excluded.finished_at");
        // Placeholders only: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (row, (name, value)) in chunk {
            query = query.bind(name.as_str()).bind(value.as_str()).bind(row.task_id.as_str()).bind(row.finished_at);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Deletes rows past the retention, a chunk at a time.
async fn prune(pool: &AnyPool, retention: Duration) {
    let before = ms(di::unix_now()) - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
    for table in ["courier_task_keys", "courier_task_index"] {
        loop {
            let key = if table == "courier_task_keys" { "name, value, task_id" } else { "task_id" };
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE finished_at < $1 LIMIT {PRUNE_CHUNK})"
            );
            // The table and column names are constants; the time is bound.
            match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(before).execute(pool).await {
                Ok(done) if done.rows_affected() as i64 >= PRUNE_CHUNK => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(%err, table, "task index: old rows not deleted; trying again in an hour");
                    break;
                }
            }
        }
    }
}

/// The arguments as stored (JSON, secret fields masked, cut) and the
/// searchable keyword values.
fn arguments(envelope: &Envelope, secret: &[&str]) -> (String, Vec<(String, String)>) {
    let mut keys = Vec::new();
    let kwargs: BTreeMap<&String, serde_json::Value> = envelope
        .kwargs
        .iter()
        .map(|(name, value)| {
            if secret.contains(&name.as_str()) {
                return (name, serde_json::Value::String(MASK.into()));
            }
            if keys.len() < MAX_KEYS
                && let Some(text) = scalar(value)
            {
                keys.push((name.clone(), text));
            }
            (name, serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
        })
        .collect();
    // Positional arguments (Python producers) are the fields in order: a
    // task with secret fields has them all masked, having no names to match.
    let args: Vec<serde_json::Value> = envelope
        .args
        .iter()
        .map(|value| {
            if secret.is_empty() {
                serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
            } else {
                serde_json::Value::String(MASK.into())
            }
        })
        .collect();
    let mut all = serde_json::Map::new();
    all.insert("args".into(), serde_json::Value::Array(args));
    all.insert("kwargs".into(), serde_json::to_value(&kwargs).unwrap_or(serde_json::Value::Null));
    let all = serde_json::Value::Object(all);
    (cut(&all.to_string(), MAX_JSON), keys)
}

/// A short scalar as searchable text (numbers, strings, booleans).
fn scalar(value: &rmpv::Value) -> Option<String> {
    let text = match value {
        rmpv::Value::Integer(n) => n.to_string(),
        rmpv::Value::String(s) => s.as_str()?.to_owned(),
        rmpv::Value::Boolean(b) => b.to_string(),
        rmpv::Value::F64(f) => f.to_string(),
        _ => return None,
    };
    (text.len() <= MAX_KEY_VALUE).then_some(text)
}

fn json(value: &rmpv::Value) -> String {
    match value {
        rmpv::Value::String(s) if s.as_str().is_some() => s.as_str().unwrap_or_default().to_owned(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn cut(text: &str, max: usize) -> String {
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
        let envelope = Envelope {
            task_id: "t".into(),
            task_name: "send".into(),
            labels: BTreeMap::new(),
            labels_types: None,
            args: vec![],
            kwargs: BTreeMap::from([
                ("chat_id".into(), rmpv::Value::from(42)),
                ("token".into(), rmpv::Value::from("s3cr3t-value")),
                ("text".into(), rmpv::Value::from("x".repeat(500))),
            ]),
        };
        let (json, keys) = arguments(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains(MASK), "{json}");
        assert_eq!(keys, vec![("chat_id".to_owned(), "42".to_owned())], "long values and secrets are not keys");
    }

    #[test]
    fn positional_arguments_of_a_task_with_secrets_are_masked_and_odd_keys_do_not_panic() {
        let mut envelope = Envelope::new("t".into(), "send", &()).unwrap();
        envelope.args = vec![rmpv::Value::from("s3cr3t"), rmpv::Value::Map(vec![(rmpv::Value::Nil, 1.into())])];
        let (json, _) = arguments(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        let (json, _) = arguments(&envelope, &[]);
        assert!(json.contains("s3cr3t"), "no secrets declared: shown as sent: {json}");
    }

    #[test]
    fn cut_keeps_characters_whole() {
        let text = "é".repeat(100);
        let short = cut(&text, 11);
        assert!(short.len() <= 11 + '…'.len_utf8(), "{short}");
        assert!(short.ends_with('…'));
        assert_eq!(cut("abc", 10), "abc");
    }
}
