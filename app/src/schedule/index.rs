//! The due-time index of delayed tasks: a Redis sorted set of delayed-stream
//! sequences scored by due time (Unix ms), a marker that says the index is
//! whole, and a lock for the one worker that rebuilds it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use di::redis_conn::{RedisClient, RedisConn};

/// Claims what is due. KEYS: index, marker. ARGV: most entries, lease
/// (ms), the Redis server's run id. Answers `{-2, now, {}}` unless the
/// marker says the index is whole *on this very server* (a Redis that
/// restarted, even one that reloaded a snapshot with the marker in it, or a
/// replica promoted in a failover, has another run id: its index may lack
/// entries, so it is rebuilt); otherwise `{wait, now, due}`: the due members
/// with their due times, flat (their scores moved a lease ahead, so a mover
/// that dies leaves them to another), the milliseconds until the next entry
/// is due (-1: the index is empty), and Redis' time (ms). Time is Redis'
/// own, so workers' clocks do not matter.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[2]) ~= 'whole:' .. ARGV[3] then return {-2, now, {}} end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local leased = now + tonumber(ARGV[2])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], leased, due[i]) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #first > 0 then
  wait = math.max(0, tonumber(first[2]) - now)
end
return {wait, now, due}
";

/// Gives entries back. KEYS: index. ARGV: pairs of (member, delay ms or
/// an absolute due time when `abs` is the first argument). Only entries
/// still in the index are touched (`XX`).
const RELEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[i + 1]), ARGV[i])
end
return #ARGV / 2
";

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The index is not known to be whole: rebuild it first.
    Rebuild,
    /// These entries (sequence, due ms) are due, now leased to the caller;
    /// the next entry is due in `next` (none: the index is empty); `now` is
    /// Redis' time (ms) of the claim.
    Due { entries: Vec<(u64, u64)>, next: Option<Duration>, now: u64 },
}

/// How often the run id of the index's server is read again.
const RUN_ID_CHECK: Duration = Duration::from_secs(2);

/// The index of one delayed stream.
pub(crate) struct DueIndex {
    client: RedisClient,
    /// The connection, and the run id of the server it reached.
    conn: Mutex<Option<(RedisConn, String, std::time::Instant)>>,
    claim: redis::Script,
    release: redis::Script,
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
    pub(crate) fn new(client: RedisClient, key_prefix: &str, stream: &str) -> Self {
        let base = format!("{key_prefix}delayed:{{{stream}}}");
        Self {
            client,
            conn: Mutex::new(None),
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
            index: format!("{base}:due"),
            marker: format!("{base}:whole"),
            lock: format!("{base}:rebuilding"),
        }
    }

    /// The connection and its server's run id, read with `INFO server` on
    /// each new connection and again every [`RUN_ID_CHECK`]: a restart
    /// breaks a connection to one server, but a cluster connection lives
    /// through a failover, after which the slot's new primary (whose copy
    /// may lack the last writes) has a run id of its own.
    async fn connection(&self) -> redis::RedisResult<(RedisConn, String)> {
        let cached = self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut conn = match cached {
            Some((conn, run_id, read_at)) if read_at.elapsed() < RUN_ID_CHECK => return Ok((conn, run_id)),
            Some((conn, ..)) => conn,
            None => self.client.connect().await?,
        };
        // On a cluster, the run id of the primary that holds the index.
        let info: redis::RedisResult<String> =
            conn.query_at_key(redis::cmd("INFO").arg("server"), self.index.as_bytes()).await;
        let info = self.check(info)?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((conn.clone(), run_id.clone(), std::time::Instant::now()));
        Ok((conn, run_id))
    }

    async fn conn(&self) -> redis::RedisResult<RedisConn> {
        Ok(self.connection().await?.0)
    }

    /// Drops a broken connection, so the next call opens a new one.
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        // Any error drops the connection: the next call reconnects and reads
        // the run id again (cheap, and a failover answers some commands
        // with errors before it breaks the connection).
        if result.is_err() {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    /// Claims up to `most` due entries for `lease`.
    pub(crate) async fn claim(&self, most: usize, lease: Duration) -> redis::RedisResult<Claim> {
        let (mut conn, run_id) = self.connection().await?;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let answer: redis::RedisResult<(i64, u64, Vec<String>)> = self
            .claim
            .key(&self.index)
            .key(&self.marker)
            .arg(most)
            .arg(lease_ms)
            .arg(&run_id)
            .invoke_async(&mut conn)
            .await;
        let (wait, now, members) = self.check(answer)?;
        if wait == -2 {
            return Ok(Claim::Rebuild);
        }
        let next = u64::try_from(wait).ok().map(Duration::from_millis);
        // A member that is not a sequence was not written by an indexer.
        let entries = members
            .chunks(2)
            .filter_map(|pair| Some((pair.first()?.parse().ok()?, pair.get(1)?.parse::<f64>().ok()? as u64)))
            .collect();
        Ok(Claim::Due { entries, next, now })
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

    /// Gives claimed entries back: each `(sequence, delay)` is due again
    /// `delay` from now (Redis' clock). A failed move is tried again soon,
    /// not after the whole lease; an entry fetched before its time goes back
    /// to it.
    pub(crate) async fn release(&self, entries: &[(u64, Duration)]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut invocation = self.release.key(&self.index);
        for (sequence, delay) in entries {
            invocation.arg(*sequence).arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        let released: redis::RedisResult<i64> = invocation.invoke_async(&mut conn).await;
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

    /// Starts a rebuild: the marker says `building` (anything but
    /// `whole:<run id>` makes every claim answer "rebuild" once the lock is
    /// free, so a rebuilder that dies or fails leaves the work to the next).
    pub(crate) async fn mark_building(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        let set: redis::RedisResult<()> =
            redis::cmd("SET").arg(&self.marker).arg("building").query_async(&mut conn).await;
        self.check(set)
    }

    /// Ends a rebuild: the index is whole on this server. `XX`: if Redis
    /// lost the marker meanwhile (restarted mid-rebuild), it stays missing
    /// and the rebuild runs again.
    pub(crate) async fn mark_whole(&self) -> redis::RedisResult<()> {
        let (mut conn, run_id) = self.connection().await?;
        let set: redis::RedisResult<Option<String>> =
            redis::cmd("SET").arg(&self.marker).arg(format!("whole:{run_id}")).arg("XX").query_async(&mut conn).await;
        self.check(set).map(drop)
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
