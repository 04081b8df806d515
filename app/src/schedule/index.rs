//! The due-time index of delayed tasks: a Redis sorted set of delayed-stream
//! sequences scored by due time (Unix ms), a marker that says the index is
//! whole, and a lock for the one worker that rebuilds it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bb8_redis::redis::{self, aio::MultiplexedConnection};

/// Claims what is due. KEYS: index, marker. ARGV: most entries, lease (ms).
/// Answers `{-2, {}}` when the marker is gone (the index must be rebuilt);
/// otherwise `{wait, due}`: the due members with their due times, flat
/// (their scores moved a lease ahead, so a mover that dies leaves them to
/// another), and the milliseconds until the next entry is due (-1: the
/// index is empty). Time is Redis' own, so workers' clocks do not matter.
const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return {-2, {}} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local leased = now + tonumber(ARGV[2])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], leased, due[i]) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #first > 0 then
  wait = math.max(0, tonumber(first[2]) - now)
end
return {wait, due}
";

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The index is not known to be whole: rebuild it first.
    Rebuild,
    /// These entries (sequence, due ms) are due, now leased to the caller;
    /// the next entry is due in `next` (none: the index is empty).
    Due { entries: Vec<(u64, u64)>, next: Option<Duration> },
}

/// The index of one delayed stream.
pub(crate) struct DueIndex {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    claim: redis::Script,
    index: String,
    marker: String,
    lock: String,
}

impl std::fmt::Debug for DueIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueIndex").field("index", &self.index).finish_non_exhaustive()
    }
}

impl DueIndex {
    /// The index of `stream` under `key_prefix` (the keys share the hash tag
    /// `{<stream>}`, so the claim script's two keys share a cluster slot).
    pub(crate) fn new(client: redis::Client, key_prefix: &str, stream: &str) -> Self {
        let base = format!("{key_prefix}delayed:{{{stream}}}");
        Self {
            client,
            conn: Mutex::new(None),
            claim: redis::Script::new(CLAIM),
            index: format!("{base}:due"),
            marker: format!("{base}:whole"),
            lock: format!("{base}:rebuilding"),
        }
    }

    async fn conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(conn);
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Drops a broken connection, so the next call opens a new one.
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(err) = &result
            && (err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout())
        {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    /// Claims up to `most` due entries for `lease`.
    pub(crate) async fn claim(&self, most: usize, lease: Duration) -> redis::RedisResult<Claim> {
        let mut conn = self.conn().await?;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let answer: redis::RedisResult<(i64, Vec<String>)> =
            self.claim.key(&self.index).key(&self.marker).arg(most).arg(lease_ms).invoke_async(&mut conn).await;
        let (wait, members) = self.check(answer)?;
        if wait == -2 {
            return Ok(Claim::Rebuild);
        }
        let next = u64::try_from(wait).ok().map(Duration::from_millis);
        // A member that is not a sequence was not written by an indexer.
        let entries = members
            .chunks(2)
            .filter_map(|pair| Some((pair.first()?.parse().ok()?, pair.get(1)?.parse::<f64>().ok()? as u64)))
            .collect();
        Ok(Claim::Due { entries, next })
    }

    /// Adds entries (sequence, due ms) that are not there yet; an entry
    /// already there keeps its score (it may be leased to a mover).
    pub(crate) async fn add(&self, entries: &[(u64, u64)]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.index).arg("NX");
        for (sequence, due) in entries {
            cmd.arg(*due).arg(*sequence);
        }
        let added: redis::RedisResult<i64> = cmd.query_async(&mut conn).await;
        self.check(added).map(drop)
    }

    /// Gives claimed entries back at their due times (a move that failed
    /// is tried again at the next claim, not after the lease).
    pub(crate) async fn release(&self, entries: &[(u64, u64)]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.index).arg("XX");
        for (sequence, due) in entries {
            cmd.arg(*due).arg(*sequence);
        }
        let released: redis::RedisResult<i64> = cmd.query_async(&mut conn).await;
        self.check(released).map(drop)
    }

    /// Removes entries (moved, or gone from the stream).
    pub(crate) async fn remove(&self, sequences: &[u64]) -> redis::RedisResult<()> {
        if sequences.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let removed: redis::RedisResult<i64> =
            redis::cmd("ZREM").arg(&self.index).arg(sequences).query_async(&mut conn).await;
        self.check(removed).map(drop)
    }

    /// Takes the rebuild lock for `hold`; true if this caller has it.
    pub(crate) async fn lock_rebuild(&self, hold: Duration) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        let taken: redis::RedisResult<Option<String>> =
            redis::cmd("SET").arg(&self.lock).arg(1).arg("NX").arg("PX").arg(ms).query_async(&mut conn).await;
        Ok(self.check(taken)?.is_some())
    }

    /// Says the index is whole from now on (set before the indexer consumer
    /// is re-created: a Redis lost after this is seen as a missing marker).
    pub(crate) async fn mark_whole(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        let set: redis::RedisResult<()> = redis::cmd("SET").arg(&self.marker).arg(1).query_async(&mut conn).await;
        self.check(set)
    }

    /// Gives the rebuild lock back.
    pub(crate) async fn unlock_rebuild(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        let deleted: redis::RedisResult<i64> = redis::cmd("DEL").arg(&self.lock).query_async(&mut conn).await;
        self.check(deleted).map(drop)
    }

    /// How many entries the index holds.
    pub(crate) async fn len(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn().await?;
        let n: redis::RedisResult<u64> = redis::cmd("ZCARD").arg(&self.index).query_async(&mut conn).await;
        self.check(n)
    }
}
