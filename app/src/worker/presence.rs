//! Which workers are alive: every few seconds each worker writes its record
//! into a hash (`<prefix>courier:{workers}:info`, field = its name) and its
//! deadline (now + `TTL`) into a sorted set (`<prefix>courier:{workers}`), and
//! drops the entries whose deadline passed. The board reads the live names
//! from the sorted set and their records with one HMGET: no keyspace scan,
//! however many result records share the Redis. A worker killed with
//! SIGKILL disappears from the list within `TTL`.

use std::time::Duration;

use di::redis_conn::RedisClient;
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::http::metrics::Metrics;
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
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

fn keys(prefix: &str) -> (String, String) {
    // One hash tag: the announcement's pipeline writes both, and a cluster
    // pipeline stays in one slot.
    (format!("{prefix}courier:{{workers}}"), format!("{prefix}courier:{{workers}}:info"))
}

fn now_ms() -> i64 {
    (di::unix_now() * 1000.0) as i64
}

/// Writes this worker's record every [`BEAT`] until `stop`, then deletes it.
pub async fn announce(
    client: RedisClient,
    prefix: String,
    mut info: WorkerInfo,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let (live, records) = keys(&prefix);
    let mut conn = None;
    loop {
        info.in_flight = metrics.in_flight.get();
        info.rate_limited = metrics.flood.rate_limited_by_lane();
        if conn.is_none() {
            conn = client.connect().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            let body = serde_json::to_string(&info).unwrap_or_default();
            let now = now_ms();
            let ttl_ms = i64::try_from(TTL.as_millis()).unwrap_or(15_000);
            let written: redis::RedisResult<()> = async {
                let gone: Vec<String> = c.zrangebyscore(&live, "-inf", now).await?;
                let mut pipe = redis::pipe();
                pipe.zadd(&live, &info.name, now + ttl_ms).ignore().hset(&records, &info.name, body).ignore();
                if !gone.is_empty() {
                    pipe.zrem(&live, &gone).ignore().hdel(&records, &gone).ignore();
                }
                pipe.query_async(c).await
            }
            .await;
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
        let _: redis::RedisResult<()> =
            redis::pipe().zrem(&live, &info.name).ignore().hdel(&records, &info.name).ignore().query_async(c).await;
    }
}

/// The workers alive now, by name (at most [`MAX_LISTED`]).
pub async fn alive(conn: &mut di::redis_conn::RedisConn, prefix: &str) -> redis::RedisResult<Vec<WorkerInfo>> {
    let (live, records) = keys(prefix);
    let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&live)
        .arg(now_ms())
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_LISTED)
        .query_async(conn)
        .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let bodies: Vec<Option<String>> = redis::cmd("HMGET").arg(&records).arg(&names).query_async(conn).await?;
    let mut workers: Vec<WorkerInfo> =
        bodies.into_iter().flatten().filter_map(|b| serde_json::from_str(&b).ok()).collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(workers)
}
