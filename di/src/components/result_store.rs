//! `ResultStore`: each task's status and result, in Redis with a TTL.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use redis::AsyncCommands;
use settings::RedisSettings;
use shaku::{Component, Interface};

use crate::error::{Component as Part, StartupError};
use crate::record::{ResultRecord, TaskStatus};
pub use crate::redis_conn::ScanCursor;
use crate::redis_conn::{RedisClient, RedisConn, SharedConn};

/// Unfinished tasks' records, by task id: one page of a walk.
pub type Page = Vec<(String, ResultRecord)>;

/// A result-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or refused the command.
    #[error("result store unavailable: {0}")]
    Unavailable(String),
    /// A stored record is not a Courier/taskiq record.
    #[error("result record for {task_id:?} is unreadable: {reason}")]
    Corrupt {
        /// Whose record.
        task_id: String,
        /// What the decoder said.
        reason: String,
    },
}

/// Where task statuses and results live.
#[async_trait]
pub trait ResultStore: Interface {
    /// Writes (replaces) the record of `task_id`, restarting its TTL.
    async fn put(&self, task_id: &str, record: &ResultRecord) -> Result<(), StoreError>;

    /// [`ResultStore::put`] with a longer life than the store's TTL (never
    /// shorter): a retry postponed past the TTL keeps its record (its
    /// attempt count, and a cancel's `due_at`) until it runs.
    async fn put_for(&self, task_id: &str, record: &ResultRecord, ttl: Duration) -> Result<(), StoreError> {
        let _ = ttl;
        self.put(task_id, record).await
    }

    /// Writes the record only if `task_id` has none yet; true if written.
    /// Producers record `queued` this way, so a re-published task id never
    /// overwrites the result of the run that already happened.
    async fn put_if_absent(&self, task_id: &str, record: &ResultRecord) -> Result<bool, StoreError>;

    /// [`ResultStore::put_if_absent`] with a longer life than the store's
    /// TTL (never shorter): a delayed task's `scheduled` record, or a
    /// cancel of one, must outlive its due time.
    async fn put_if_absent_for(&self, task_id: &str, record: &ResultRecord, ttl: Duration) -> Result<bool, StoreError> {
        let _ = ttl;
        self.put_if_absent(task_id, record).await
    }

    /// Records `running` for `task_id` and returns what was there before it
    /// (the final record if there is one, else the in-flight one), in as few
    /// round trips as the store allows: a worker learns how many attempts a
    /// task already started, and whether it already finished, at no extra cost.
    async fn begin(&self, task_id: &str, running: &ResultRecord) -> Result<Option<ResultRecord>, StoreError> {
        let previous = self.get(task_id).await?;
        self.put(task_id, running).await?;
        Ok(previous)
    }

    /// Removes every record of `task_id` (before a dead letter is replayed).
    async fn delete(&self, task_id: &str) -> Result<(), StoreError>;

    /// Reads the record of `task_id`; `None` if there is none (or it expired).
    async fn get(&self, task_id: &str) -> Result<Option<ResultRecord>, StoreError>;

    /// How many of `task_ids` have a final record (success or failed), in
    /// as few round trips as the store allows (for producers waiting on many).
    async fn count_final(&self, task_ids: &[String]) -> Result<usize, StoreError> {
        let mut done = 0;
        for id in task_ids {
            if self.get(id).await?.is_some_and(|r| r.status.is_final()) {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Which of `task_ids` a producer cancelled (their final record says
    /// `cancelled`), in as few round trips as the store allows.
    async fn cancelled_among(&self, task_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut cancelled = Vec::new();
        for id in task_ids {
            if self.get(id).await?.is_some_and(|r| r.status == crate::TaskStatus::Cancelled) {
                cancelled.push(id.clone());
            }
        }
        Ok(cancelled)
    }

    /// Writes `task_id`'s progress (beside its record, never over it).
    async fn set_progress(&self, task_id: &str, progress: &crate::TaskProgress) -> Result<(), StoreError> {
        let _ = (task_id, progress);
        Ok(())
    }

    /// Reads `task_id`'s last progress, if it reported any.
    async fn progress(&self, task_id: &str) -> Result<Option<crate::TaskProgress>, StoreError> {
        let _ = task_id;
        Ok(None)
    }

    /// One page of the records of unfinished tasks (queued, scheduled,
    /// running, retrying), for cancelling by filter: start with
    /// `ScanCursor::default()`; the next cursor is returned, `None` when the
    /// walk is done. A page holds a few hundred records at most, so memory
    /// stays bounded however many tasks there are. Stores that cannot list
    /// return nothing.
    async fn unfinished_page(&self, cursor: ScanCursor) -> Result<(Option<ScanCursor>, Page), StoreError> {
        let _ = cursor;
        Ok((None, Vec::new()))
    }

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How long a record lives after its last write.
    fn ttl(&self) -> Duration;
}

/// `text` with Redis glob characters escaped, for a `MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A Redis client for `settings` (one server or a cluster; TLS with
/// `redis.tls_ca_file` when set), for what talks to the same Redis outside
/// the result store.
pub fn redis_client(settings: &RedisSettings) -> Result<RedisClient, redis::RedisError> {
    RedisClient::new(settings)
}

/// The real [`ResultStore`]: Redis (one server or a cluster).
///
/// On a cluster, a task's records (`<id>` and `<id>:status`) may sit in
/// different slots, since the final key is the one taskiq-redis reads and
/// takes no hash tag: the two writes of `begin` and of a final `put` then
/// go one after the other instead of in one pipeline.
#[derive(Component, Clone)]
#[shaku(interface = ResultStore)]
pub struct RedisResultStore {
    /// The connection every call shares (multiplexed), opened on first use.
    pub(crate) conn: Arc<SharedConn>,
    /// Record lifetime, whole seconds (Redis `EX`).
    #[shaku(default)]
    pub(crate) ttl: Duration,
    /// Prepended to task ids to form keys.
    #[shaku(default)]
    pub(crate) key_prefix: String,
}

impl std::fmt::Debug for RedisResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResultStore").field("ttl", &self.ttl).field("key_prefix", &self.key_prefix).finish()
    }
}

impl RedisResultStore {
    /// A store over `client`; connects on first use.
    pub fn new(client: RedisClient, ttl: Duration, key_prefix: impl Into<String>) -> Self {
        Self { conn: Arc::new(SharedConn::new(client)), ttl, key_prefix: key_prefix.into() }
    }

    /// Connects as `settings` describe and checks the store with `PING`
    /// (every primary of a cluster).
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StartupError> {
        let secret = settings.url.password().unwrap_or_default();
        let fail = |err: &dyn std::fmt::Display| {
            StartupError::unreachable(Part::Redis, settings.url.redacted(), err, &[&secret])
        };
        let client = RedisClient::new(settings).map_err(|err| fail(&err))?;
        let store = Self::new(client, settings.result_ttl, settings.key_prefix.clone());
        let mut conn = tokio::time::timeout(settings.connect_timeout, store.conn.get())
            .await
            .map_err(|_| fail(&format!("no connection within {:?}", settings.connect_timeout)))?
            .map_err(|err| fail(&err))?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|err| fail(&err))?;
        Ok(store)
    }

    /// The Redis key of `task_id`'s final record (success or failed): the
    /// key taskiq-redis reads, which exists only once the task is done
    /// (taskiq's `wait_result` takes "the key exists" for "finished").
    pub fn key(&self, task_id: &str) -> String {
        self.key_with(task_id, "")
    }

    /// The Redis key of `task_id`'s record while it is queued, running or
    /// retrying.
    pub fn status_key(&self, task_id: &str) -> String {
        self.key_with(task_id, ":status")
    }

    /// `<prefix><task_id><suffix>`, built without the formatting machinery
    /// (four keys per task, each a thousand instructions through `format!`).
    fn key_with(&self, task_id: &str, suffix: &str) -> String {
        let mut key = String::with_capacity(self.key_prefix.len() + task_id.len() + suffix.len());
        key.push_str(&self.key_prefix);
        key.push_str(task_id);
        key.push_str(suffix);
        key
    }

    /// The record lifetime as a Redis argument: whole seconds, at least one.
    fn ttl_arg(&self) -> String {
        self.ttl.as_secs().max(1).to_string()
    }

    /// `SETEX key ttl bytes`, `ttl` a [`RedisResultStore::ttl_arg`].
    fn set_ex(&self, key: &str, bytes: &[u8], ttl: &str) -> redis::Cmd {
        command("SETEX", &[key.as_bytes(), ttl.as_bytes(), bytes])
    }

    /// The shared connection, opened when there is none.
    async fn conn(&self) -> Result<RedisConn, StoreError> {
        self.conn.get().await.map_err(|err| StoreError::Unavailable(err.to_string()))
    }

    /// Maps a command error; a connection-level one drops a single
    /// server's connection so the next call opens a fresh one.
    fn failed(&self, err: redis::RedisError) -> StoreError {
        self.conn.after_error(&err);
        StoreError::Unavailable(err.to_string())
    }
}

/// `name args..`, its buffers sized once: redis' builder grows them
/// argument by argument (a record's bytes copied into a buffer doubling
/// from empty), a few thousand instructions per task.
fn command(name: &str, args: &[&[u8]]) -> redis::Cmd {
    let data = name.len() + args.iter().map(|arg| arg.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(args.len() + 1, data);
    cmd.arg(name);
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

#[async_trait]
impl ResultStore for RedisResultStore {
    async fn put(&self, task_id: &str, record: &ResultRecord) -> Result<(), StoreError> {
        self.put_for(task_id, record, self.ttl).await
    }

    async fn put_for(&self, task_id: &str, record: &ResultRecord, ttl: Duration) -> Result<(), StoreError> {
        let bytes = record.to_msgpack().map_err(|err| StoreError::Unavailable(format!("encode: {err}")))?;
        // The store's TTL unless a longer one is asked for (the common case
        // formats nothing new).
        let ttl = if ttl > self.ttl { ttl.as_secs().max(1).to_string() } else { self.ttl_arg() };
        let mut conn = self.conn().await?;
        if record.status.is_final() {
            // One round trip: the final record, then the status record goes.
            // Not atomic, and need not be: a reader that sees both prefers
            // the final one.
            let (key, status_key) = (self.key(task_id), self.status_key(task_id));
            let commands = [self.set_ex(&key, &bytes, &ttl), command("DEL", &[status_key.as_bytes()])];
            let _: (redis::Value, redis::Value) =
                conn.in_order(commands, [key.as_bytes(), status_key.as_bytes()]).await.map_err(|e| self.failed(e))?;
        } else {
            let () = self
                .set_ex(&self.status_key(task_id), &bytes, &ttl)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    async fn begin(&self, task_id: &str, running: &ResultRecord) -> Result<Option<ResultRecord>, StoreError> {
        let bytes = running.to_msgpack().map_err(|err| StoreError::Unavailable(format!("encode: {err}")))?;
        let mut conn = self.conn().await?;
        // One round trip: the final record, and the in-flight one that the
        // `running` record replaces (SET .. GET, Redis 6.2+).
        let (key, status_key) = (self.key(task_id), self.status_key(task_id));
        let ttl = self.ttl_arg();
        let set = command("SET", &[status_key.as_bytes(), &bytes, b"EX", ttl.as_bytes(), b"GET"]);
        let commands = [command("GET", &[key.as_bytes()]), set];
        let (done, before): (Option<Vec<u8>>, Option<Vec<u8>>) =
            conn.in_order(commands, [key.as_bytes(), status_key.as_bytes()]).await.map_err(|e| self.failed(e))?;
        done.or(before)
            .map(|b| ResultRecord::from_msgpack(&b))
            .transpose()
            .map_err(|err| StoreError::Corrupt { task_id: task_id.to_owned(), reason: err.to_string() })
    }

    async fn put_if_absent(&self, task_id: &str, record: &ResultRecord) -> Result<bool, StoreError> {
        self.put_if_absent_for(task_id, record, self.ttl).await
    }

    async fn put_if_absent_for(&self, task_id: &str, record: &ResultRecord, ttl: Duration) -> Result<bool, StoreError> {
        let bytes = record.to_msgpack().map_err(|err| StoreError::Unavailable(format!("encode: {err}")))?;
        let mut conn = self.conn().await?;
        let key = if record.status.is_final() { self.key(task_id) } else { self.status_key(task_id) };
        let written: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("NX")
            .arg("EX")
            .arg(ttl.max(self.ttl).as_secs().max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(written.is_some())
    }

    async fn delete(&self, task_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let () = conn.del(&[self.key(task_id), self.status_key(task_id)]).await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let (done, status): (Option<Vec<u8>>, Option<Vec<u8>>) =
            conn.mget(&[self.key(task_id), self.status_key(task_id)]).await.map_err(|e| self.failed(e))?;
        done.or(status)
            .map(|b| ResultRecord::from_msgpack(&b))
            .transpose()
            .map_err(|err| StoreError::Corrupt { task_id: task_id.to_owned(), reason: err.to_string() })
    }

    async fn count_final(&self, task_ids: &[String]) -> Result<usize, StoreError> {
        if task_ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = task_ids.iter().map(|id| self.key(id)).collect();
        let mut conn = self.conn().await?;
        // EXISTS counts the final keys in one round trip.
        let n: usize = redis::cmd("EXISTS").arg(&keys).query_async(&mut conn).await.map_err(|e| self.failed(e))?;
        Ok(n)
    }

    async fn set_progress(&self, task_id: &str, progress: &crate::TaskProgress) -> Result<(), StoreError> {
        let bytes =
            rmp_serde::to_vec_named(progress).map_err(|err| StoreError::Unavailable(format!("encode: {err}")))?;
        let mut conn = self.conn().await?;
        let _: () = conn
            .set_ex(format!("{}:progress", self.key(task_id)), bytes, self.ttl.as_secs().max(1))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn progress(&self, task_id: &str) -> Result<Option<crate::TaskProgress>, StoreError> {
        let mut conn = self.conn().await?;
        let bytes: Option<Vec<u8>> =
            conn.get(format!("{}:progress", self.key(task_id))).await.map_err(|e| self.failed(e))?;
        Ok(bytes.and_then(|b| rmp_serde::from_slice(&b).ok()))
    }

    async fn cancelled_among(&self, task_ids: &[String]) -> Result<Vec<String>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        // MGET: a cluster client splits it by slot.
        let keys: Vec<String> = task_ids.iter().map(|id| self.key(id)).collect();
        let mut conn = self.conn().await?;
        let records: Vec<Option<Vec<u8>>> = conn.mget(&keys).await.map_err(|e| self.failed(e))?;
        Ok(task_ids
            .iter()
            .zip(records)
            .filter(|(_, bytes)| {
                bytes
                    .as_deref()
                    .and_then(|b| ResultRecord::from_msgpack(b).ok())
                    .is_some_and(|r| r.status == TaskStatus::Cancelled)
            })
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn unfinished_page(&self, cursor: ScanCursor) -> Result<(Option<ScanCursor>, Page), StoreError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}*:status", glob_escape(&self.key_prefix));
        let (next, keys) = conn.scan_page(cursor, &pattern, 500).await.map_err(|e| self.failed(e))?;
        if keys.is_empty() {
            return Ok((next, Vec::new()));
        }
        let records: Vec<Option<Vec<u8>>> = conn.mget(&keys).await.map_err(|e| self.failed(e))?;
        let page = keys
            .iter()
            .zip(records)
            .filter_map(|(key, bytes)| {
                let id = key.strip_prefix(&self.key_prefix)?.strip_suffix(":status")?;
                let record = ResultRecord::from_msgpack(&bytes?).ok()?;
                Some((id.to_owned(), record))
            })
            .collect();
        Ok((next, page))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}
