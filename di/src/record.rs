//! The result record kept in the result store for every task (ARCHITECTURE.md, Contracts: wire).
//!
//! Its fields are taskiq-redis' `TaskiqResult` (`is_err`, `log`,
//! `return_value`, `execution_time`, `labels`, `error`) plus Courier's own,
//! so taskiq's result backend can read what Courier writes. It travels as a
//! MessagePack map with field names (`rmp_serde::to_vec_named`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Room for an encoded record (they take 200-400 bytes), reserved at once.
const ENCODED_CAPACITY: usize = 512;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Published, not yet picked up.
    Queued,
    /// Waiting for its due time (`due_at`); then it is queued.
    Scheduled,
    /// A worker is executing it.
    Running,
    /// It failed in a way worth retrying, and will run again.
    Retrying,
    /// It finished; `return_value` holds its output.
    Success,
    /// It will not run again; `error` says why.
    Failed,
    /// A producer cancelled it: it never ran, or it stopped when told.
    Cancelled,
}

impl TaskStatus {
    /// The name as stored in records (`queued`, `running`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task will change no further.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a task failed, shaped like taskiq's serialized exception.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// The kind of failure: `Fatal`, `Retryable`, `Timeout`, `Panic`,
    /// `UnknownTask`, `BadArguments`, `BadEnvelope`...
    pub exc_type: String,
    /// The message, as taskiq's list of exception arguments.
    pub exc_message: Vec<String>,
    /// Always `courier`: tells a Python reader the error came from Rust.
    pub exc_module: String,
}

impl TaskError {
    /// An error of `kind` with one message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self { exc_type: kind.into(), exc_message: vec![message.into()], exc_module: "courier".to_owned() }
    }

    /// The message, joined.
    pub fn message(&self) -> String {
        self.exc_message.join("; ")
    }
}

/// One task's status and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// taskiq: whether the task failed.
    pub is_err: bool,
    /// taskiq: deprecated there, always empty here.
    #[serde(default)]
    pub log: Option<String>,
    /// taskiq: the task's output (nil until it succeeds).
    #[serde(default = "nil")]
    pub return_value: rmpv::Value,
    /// taskiq: seconds the last attempt ran.
    #[serde(default)]
    pub execution_time: f64,
    /// taskiq: the labels the task was sent with.
    #[serde(default)]
    pub labels: BTreeMap<String, rmpv::Value>,
    /// taskiq: why it failed, if it did.
    #[serde(default)]
    pub error: Option<TaskError>,
    /// Courier: where the task is in its life.
    pub status: TaskStatus,
    /// Courier: the attempt this record describes, from 1.
    #[serde(default)]
    pub attempt: u32,
    /// Courier: the task's registered name.
    #[serde(default)]
    pub task_name: String,
    /// Courier: when the record was last written, Unix seconds.
    #[serde(default)]
    pub updated_at: f64,
    /// Courier: when the current attempt started, Unix seconds.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// Courier: when the task reached a final status, Unix seconds.
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Courier: when a delayed or scheduled task is due, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<f64>,
}

fn nil() -> rmpv::Value {
    rmpv::Value::Nil
}

/// The current time as Unix seconds with a fraction, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl ResultRecord {
    /// A record in `status` for `task_name` at `attempt`, with no result yet.
    pub fn new(task_name: impl Into<String>, status: TaskStatus, attempt: u32) -> Self {
        Self {
            is_err: status == TaskStatus::Failed,
            log: None,
            return_value: rmpv::Value::Nil,
            execution_time: 0.0,
            labels: BTreeMap::new(),
            error: None,
            status,
            attempt,
            task_name: task_name.into(),
            updated_at: unix_now(),
            started_at: None,
            finished_at: None,
            due_at: None,
        }
    }

    /// A final success carrying `return_value`.
    pub fn success(task_name: impl Into<String>, attempt: u32, return_value: rmpv::Value, execution_time: f64) -> Self {
        let mut record = Self::new(task_name, TaskStatus::Success, attempt);
        record.return_value = return_value;
        record.execution_time = execution_time;
        record.finished_at = Some(record.updated_at);
        record
    }

    /// A final `cancelled` record (what `Producer::cancel` writes, and what a
    /// task that stopped when told ends with).
    pub fn cancelled(task_name: impl Into<String>, attempt: u32) -> Self {
        let mut record = Self::failure(
            task_name,
            TaskStatus::Cancelled,
            attempt,
            TaskError::new("Cancelled", "cancelled by request"),
        );
        record.finished_at = Some(record.updated_at);
        record
    }

    /// A failure; final unless `status` is [`TaskStatus::Retrying`].
    pub fn failure(task_name: impl Into<String>, status: TaskStatus, attempt: u32, error: TaskError) -> Self {
        let mut record = Self::new(task_name, status, attempt);
        record.is_err = true;
        record.error = Some(error);
        if status.is_final() {
            record.finished_at = Some(record.updated_at);
        }
        record
    }

    /// Encodes the record as a MessagePack map.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        // A record is a couple of hundred bytes: one allocation, not a
        // doubling series of them.
        let mut bytes = Vec::with_capacity(ENCODED_CAPACITY);
        rmp_serde::encode::write_named(&mut bytes, self)?;
        Ok(bytes)
    }

    /// Decodes a record written by [`ResultRecord::to_msgpack`] (or by taskiq).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        use serde::de::Error as _;
        crate::shape::check(bytes, &crate::shape::DecodeLimits::depth_only(crate::shape::MAX_DEPTH))
            .map_err(rmp_serde::decode::Error::custom)?;
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_as_a_named_map() {
        let mut record = ResultRecord::success("t", 2, rmpv::Value::from(7), 0.5);
        record.labels.insert("chat".into(), rmpv::Value::from(42));
        let bytes = record.to_msgpack().unwrap();
        // A fixmap marker: the record is a map, not a positional array.
        assert_eq!(bytes[0] & 0xf0, 0x80, "expected a msgpack map");
        assert_eq!(ResultRecord::from_msgpack(&bytes).unwrap(), record);
    }

    #[test]
    fn failure_is_err_and_final() {
        let record = ResultRecord::failure("t", TaskStatus::Failed, 3, TaskError::new("Fatal", "no"));
        assert!(record.is_err);
        assert!(record.finished_at.is_some());
        let retrying = ResultRecord::failure("t", TaskStatus::Retrying, 1, TaskError::new("Retryable", "later"));
        assert!(retrying.finished_at.is_none());
        assert!(!TaskStatus::Retrying.is_final());
    }
}
