//! Which workers are alive: each worker writes a small record to Redis
//! every few seconds (`<prefix>courier:workers:<name>`, expiring after
//! three missed beats), and the board lists them. A worker killed with
//! SIGKILL disappears from the list within `TTL`.

use std::time::Duration;

use bb8_redis::redis::{self, AsyncCommands};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often a worker writes its record.
pub const BEAT: Duration = Duration::from_secs(5);
/// How long a record outlives its last beat.
pub const TTL: Duration = Duration::from_secs(15);
/// The most workers the board lists.
pub const MAX_LISTED: usize = 1_000;

/// What a worker says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// `host:pid`.
    pub name: String,
    /// The crate version.
    pub version: String,
    /// Tasks running now.
    pub in_flight: i64,
    /// Its concurrency.
    pub concurrency: usize,
    /// 429s Telegram answered it since it started, by lane.
    #[serde(default)]
    pub rate_limited: BTreeMap<String, u64>,
    /// When it started, Unix seconds.
    pub started_at: i64,
}

/// This process' name: `host:pid`.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}courier:workers:{name}")
}

/// Writes this worker's record every [`BEAT`] until `stop`, then deletes it.
pub async fn announce(
    client: redis::Client,
    prefix: String,
    mut info: WorkerInfo,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let key = key(&prefix, &info.name);
    let mut conn = None;
    loop {
        info.in_flight = metrics.in_flight.get();
        info.rate_limited = metrics.flood.rate_limited_by_lane();
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            let body = serde_json::to_string(&info).unwrap_or_default();
            let written: redis::RedisResult<()> = c.set_ex(&key, body, TTL.as_secs()).await;
            if written.is_err() {
                conn = None;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(BEAT) => {}
            () = stop.cancelled() => break,
        }
    }
    if let Some(c) = conn.as_mut() {
        let _: redis::RedisResult<()> = c.del(&key).await;
    }
}

/// The workers alive now, by name (at most [`MAX_LISTED`]).
pub async fn alive(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> redis::RedisResult<Vec<WorkerInfo>> {
    let pattern = format!("{}*", key(prefix, ""));
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query_async(conn).await?;
        keys.extend(page);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_LISTED {
            break;
        }
    }
    keys.truncate(MAX_LISTED);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let bodies: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    let mut workers: Vec<WorkerInfo> =
        bodies.into_iter().flatten().filter_map(|b| serde_json::from_str(&b).ok()).collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}
