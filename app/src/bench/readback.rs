//! Reading every result back and checking it: a benchmark's end-to-end time
//! ends when the last result of the batch has been read and found to be
//! what the task returns, so a task that failed, returned something else or
//! never finished is counted apart and never passes for throughput.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use di::redis_conn::RedisConn;
use di::{ResultRecord, TaskStatus};
use serde::Serialize;
use settings::Settings;

use super::{BenchError, Show, failed};

/// Final records read in one `MGET` (the oldest unread ones first).
const CHUNK: usize = 500;

/// What every result of a batch must be: a `success` record of this task
/// with this return value.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The task name the record must carry.
    pub task_name: &'static str,
    /// The return value, as the worker stores it.
    pub return_value: rmpv::Value,
}

impl Expected {
    /// What a task named `task_name` returning `value` leaves.
    pub fn new(task_name: &'static str, value: &impl Serialize) -> Self {
        let return_value = di::envelope::encode_value(value).unwrap_or(rmpv::Value::Nil);
        Self { task_name, return_value }
    }
}

/// The results of a batch, read back and checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// `success`, this task, the expected return value.
    pub ok: u64,
    /// A `failed` record.
    pub failed: u64,
    /// A final record that is not the expected one: another task name,
    /// another return value, or bytes that do not decode.
    pub wrong: u64,
    /// No final record before the batch stalled (see `BenchOptions::stall`).
    pub missing: u64,
}

impl Checked {
    /// Whether every result was the expected one.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.wrong == 0 && self.missing == 0
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Checked) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.wrong += other.wrong;
        self.missing += other.missing;
    }

    /// Counts one record against `expected`.
    pub fn record(&mut self, record: &ResultRecord, expected: &Expected) {
        match record.status {
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Success
                if record.task_name == expected.task_name && record.return_value == expected.return_value =>
            {
                self.ok += 1;
            }
            _ => self.wrong += 1,
        }
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ok, {} failed, {} wrong, {} missing", self.ok, self.failed, self.wrong, self.missing)
    }
}

/// Reads final records (the `<redis.key_prefix><task id>` key, which exists
/// only once a task is done: see ARCHITECTURE.md, "Result keys") in
/// batches of [`CHUNK`] on a connection of its own.
#[derive(Clone)]
pub struct Readback {
    conn: RedisConn,
    /// How long without a new final record before the rest count as missing.
    stall: Duration,
}

impl std::fmt::Debug for Readback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readback").field("stall", &self.stall).finish_non_exhaustive()
    }
}

impl Readback {
    /// A connection to the configured Redis.
    pub async fn connect(settings: &Settings, stall: Duration) -> Result<Self, BenchError> {
        let client = di::components::result_store::redis_client(&settings.redis).map_err(failed("Redis"))?;
        let conn = client.connect().await.map_err(failed("Redis"))?;
        Ok(Self { conn, stall })
    }

    /// Reads the final record of every id (its key is `prefix` + id) and
    /// checks it against `expected`. Returns when all are read, or when
    /// none has come for the stall time (the rest are then missing). Polls
    /// the oldest unread ids, pausing 1 ms after a read that found nothing
    /// new, as the Taskiq harness does.
    pub async fn read_all(
        &self,
        prefix: &str,
        ids: &[String],
        expected: &Expected,
        show: &Show<'_>,
    ) -> Result<Checked, BenchError> {
        Ok(self.read_all_spanned(prefix, ids, expected, show).await?.0)
    }

    /// How many of `ids` have a final record (one `EXISTS`).
    pub async fn count_final(&self, prefix: &str, ids: &[String]) -> Result<usize, BenchError> {
        let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}")).collect();
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS").arg(&keys).query_async(&mut conn).await.map_err(failed("Redis EXISTS"))
    }

    /// [`Readback::read_all`], and the span the expected records cover by
    /// the worker's clock: the earliest `started_at` and the latest
    /// `finished_at` (Unix seconds), if any record had them.
    pub async fn read_all_spanned(
        &self,
        prefix: &str,
        ids: &[String],
        expected: &Expected,
        show: &Show<'_>,
    ) -> Result<(Checked, Option<(f64, f64)>), BenchError> {
        let mut span: Option<(f64, f64)> = None;
        let mut conn = self.conn.clone();
        let mut pending: VecDeque<&str> = ids.iter().map(String::as_str).collect();
        let mut checked = Checked::default();
        let mut last_new = Instant::now();
        while !pending.is_empty() {
            let chunk: Vec<&str> = pending.drain(..pending.len().min(CHUNK)).collect();
            let keys: Vec<String> = chunk.iter().map(|id| format!("{prefix}{id}")).collect();
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(failed("Redis MGET"))?;
            let mut unread = Vec::new();
            for (id, value) in chunk.into_iter().zip(values) {
                match value.map(|bytes| ResultRecord::from_msgpack(&bytes)) {
                    Some(Ok(record)) => {
                        if let (Some(start), Some(end)) = (record.started_at, record.finished_at) {
                            span = Some(span.map_or((start, end), |(a, b)| (a.min(start), b.max(end))));
                        }
                        checked.record(&record, expected);
                    }
                    Some(Err(_)) => checked.wrong += 1,
                    None => unread.push(id),
                }
            }
            let found = unread.len() < keys.len();
            unread.into_iter().rev().for_each(|id| pending.push_front(id));
            if found {
                last_new = Instant::now();
                show.set(&format!("read back {}/{}", ids.len() - pending.len(), ids.len()));
            } else if last_new.elapsed() >= self.stall {
                checked.missing = pending.len() as u64;
                break;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok((checked, span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(name: &str, value: rmpv::Value) -> ResultRecord {
        ResultRecord::success(name, 1, value, 0.0)
    }

    #[test]
    fn only_a_success_of_the_task_with_its_value_is_ok() {
        let expected = Expected::new("select_one", &1i64);
        let mut checked = Checked::default();
        checked.record(&success("select_one", rmpv::Value::from(1)), &expected);
        checked.record(&success("select_one", rmpv::Value::from(2)), &expected);
        checked.record(&success("noop", rmpv::Value::from(1)), &expected);
        let failed = ResultRecord::failure("select_one", TaskStatus::Failed, 1, di::TaskError::new("E", "no"));
        checked.record(&failed, &expected);
        checked.record(&ResultRecord::new("select_one", TaskStatus::Running, 1), &expected);
        assert_eq!(checked, Checked { ok: 1, failed: 1, wrong: 3, missing: 0 });
        assert!(!checked.clean());
    }

    #[test]
    fn a_noop_returns_nil() {
        assert_eq!(Expected::new("noop", &()).return_value, rmpv::Value::Nil);
    }
}
