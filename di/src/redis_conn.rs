//! One Redis, or a Redis Cluster, behind one client and one connection type.
//!
//! `redis.cluster = false` (the default): `redis.url` is one server, reached
//! through one multiplexed connection. `redis.cluster = true`: the URLs are
//! seed nodes of a Redis Cluster; the connection learns every node from
//! them, routes each command by its key's slot, follows `MOVED`/`ASK`, and
//! finds the new primary after a failover by itself.
//!
//! What a cluster changes for callers:
//! - A pipeline must stay in one slot; [`RedisConn::in_order`] sends one in
//!   a round trip when it can and command by command otherwise.
//! - A Lua script's keys must share a slot: they share a `{hash tag}`.
//! - `MGET`, `DEL` and `EXISTS` over many keys are split by slot by the
//!   client; `SCAN` walks each primary in turn ([`RedisConn::scan_page`]).
//! - A command about a server (`INFO`) goes to the primary of a key
//!   ([`RedisConn::query_at_key`]).

use std::sync::{Mutex, PoisonError};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use settings::RedisSettings;

/// How a client reaches Redis: one server or a cluster.
#[derive(Clone)]
pub enum RedisClient {
    /// One server.
    Single(redis::Client),
    /// A Redis Cluster, from its seed nodes.
    Cluster(ClusterClient),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The clients' own Debug shows connection info, password included.
        f.write_str(if self.is_cluster() { "RedisClient::Cluster" } else { "RedisClient::Single" })
    }
}

impl From<redis::Client> for RedisClient {
    fn from(client: redis::Client) -> Self {
        Self::Single(client)
    }
}

impl RedisClient {
    /// The client `settings` describe (TLS with `redis.tls_ca_file` when
    /// set). Connects to nothing yet.
    pub fn new(settings: &RedisSettings) -> RedisResult<Self> {
        let urls: Vec<&str> = settings.url.servers().iter().map(|url| url.expose()).collect();
        let certificates = match &settings.tls_ca_file {
            None => None,
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|err| {
                    RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis.tls_ca_file", err.to_string()))
                })?;
                Some(redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
            }
        };
        if settings.cluster {
            let mut builder = ClusterClient::builder(urls)
                .connection_timeout(settings.connect_timeout)
                // A command's answer, retries included: short, so a call
                // during a failover fails fast (the store's caller naks, the
                // governor uses its fallback) rather than holding its task.
                .response_timeout(std::time::Duration::from_secs(1));
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            return Ok(Self::Cluster(builder.build()?));
        }
        let [url] = urls.as_slice() else {
            let why = if urls.is_empty() {
                "names no server"
            } else {
                "several URLs are the seed nodes of a cluster: set redis.cluster = true"
            };
            return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis.url", why.to_owned())));
        };
        Ok(Self::Single(match certificates {
            None => redis::Client::open(*url)?,
            Some(certificates) => redis::Client::build_with_tls(*url, certificates)?,
        }))
    }

    /// Whether this is a cluster client.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Opens a connection (multiplexed: clones share it).
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        Ok(match self {
            Self::Single(client) => RedisConn::Single(client.get_multiplexed_async_connection().await?),
            Self::Cluster(client) => RedisConn::Cluster(client.get_async_connection().await?),
        })
    }
}

/// A connection to one Redis or to a cluster; every `query_async` and
/// `Script::invoke_async` takes it.
#[derive(Clone)]
pub enum RedisConn {
    /// To one server.
    Single(MultiplexedConnection),
    /// To every node of a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where a walk over keys stands ([`RedisConn::scan_page`]): which node
/// (always 0 on one server) and that node's `SCAN` cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    /// The node, by its place among the primaries sorted by address.
    pub node: usize,
    /// The node's own cursor.
    pub position: u64,
}

impl RedisConn {
    /// Runs `commands` in order and returns their replies: in one round
    /// trip on one server, or on a cluster when every key is in one slot;
    /// otherwise one command after the other (a cluster pipeline must not
    /// cross slots). Not atomic either way, like any pipeline.
    pub async fn in_order<T: FromRedisValue, const N: usize>(
        &mut self,
        commands: [Cmd; N],
        keys: [&[u8]; N],
    ) -> RedisResult<T> {
        // One server: no slot to compute, no command copied (the per-task path).
        let one_round_trip =
            matches!(self, Self::Single(_)) || keys.windows(2).all(|pair| key_slot(pair[0]) == key_slot(pair[1]));
        if one_round_trip {
            let mut pipe = Pipeline::with_capacity(N);
            for command in commands {
                pipe.add_command(command);
            }
            return pipe.query_async(self).await;
        }
        let mut replies = Vec::with_capacity(N);
        for command in commands {
            replies.push(command.query_async::<Value>(self).await?);
        }
        Ok(redis::from_redis_value(Value::Array(replies))?)
    }

    /// Runs `cmd`, which names no key (`INFO`), on the server that holds
    /// `key`: on a cluster, the primary of the key's slot.
    pub async fn query_at_key<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &[u8]) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(conn).await,
            Self::Cluster(conn) => {
                let route = Route::new(key_slot(key), SlotAddr::Master);
                let value = conn
                    .route_command(cmd.clone(), RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// One page of the keys matching `pattern` (a Redis glob), from
    /// `cursor` ([`ScanCursor::default`] to start); the next cursor, `None`
    /// when the walk is done. On a cluster it walks each primary in turn,
    /// sorted by address. A key may come twice (as `SCAN` allows), and a
    /// failover during the walk may skip some.
    pub async fn scan_page(
        &mut self,
        cursor: ScanCursor,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(Option<ScanCursor>, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor.position).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        match self {
            Self::Single(conn) => {
                let (next, keys): (u64, Vec<String>) = scan.query_async(conn).await?;
                Ok(((next != 0).then_some(ScanCursor { node: 0, position: next }), keys))
            }
            Self::Cluster(conn) => {
                let primaries = primaries(conn).await?;
                let Some((host, port)) = primaries.get(cursor.node).cloned() else { return Ok((None, Vec::new())) };
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                let (next, keys): (u64, Vec<String>) =
                    redis::from_redis_value(conn.route_command(scan, routing).await?)?;
                let next = match next {
                    0 if cursor.node + 1 < primaries.len() => Some(ScanCursor { node: cursor.node + 1, position: 0 }),
                    0 => None,
                    position => Some(ScanCursor { node: cursor.node, position }),
                };
                Ok((next, keys))
            }
        }
    }
}

/// The cluster's primaries that are not failing, as (host, port), sorted.
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    let mut found: Vec<(String, u16)> = nodes.lines().filter_map(primary_address).collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// The address of a `CLUSTER NODES` line that describes a healthy primary
/// (`<id> <ip:port@cport[,hostname]> <flags> ...`).
fn primary_address(line: &str) -> Option<(String, u16)> {
    let mut fields = line.split_whitespace();
    let address = fields.nth(1)?;
    let flags = fields.next()?;
    let healthy_primary = flags.split(',').any(|f| f == "master") && !flags.split(',').any(|f| f.starts_with("fail"));
    if !healthy_primary {
        return None;
    }
    let host_port = address.split(['@', ',']).next()?;
    let (host, port) = host_port.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// The cluster slot of `key` (CRC16/XMODEM of the key, or of its first
/// non-empty `{hash tag}`, modulo 16384), as Redis computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A connection kept and shared by every call of one user (the result
/// store, the governor, the delayed index), opened on first use.
///
/// One caller at a time opens it (the others wait for that connection
/// rather than each opening its own: on a cluster, one connection is one
/// per node), and a failed open is the answer to every caller for
/// [`RETRY_OPEN`] after it (as an I/O error carrying its message).
#[derive(Debug)]
pub struct SharedConn {
    client: RedisClient,
    conn: Mutex<Option<RedisConn>>,
    opening: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a failed open answers for the callers that waited for it.
const RETRY_OPEN: std::time::Duration = std::time::Duration::from_millis(250);

impl SharedConn {
    /// Nothing opened yet.
    pub fn new(client: RedisClient) -> Self {
        Self { client, conn: Mutex::new(None), opening: tokio::sync::Mutex::new(None) }
    }

    /// The client.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// The connection in use, opened when there is none.
    pub async fn get(&self) -> RedisResult<RedisConn> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let mut opening = self.opening.lock().await;
        // Opened, or failed, while this caller waited.
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        if let Some((at, err)) = opening.as_ref()
            && at.elapsed() < RETRY_OPEN
        {
            return Err(RedisError::from(std::io::Error::other(err.clone())));
        }
        match self.client.connect().await {
            Ok(conn) => {
                *opening = None;
                *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
                Ok(conn)
            }
            Err(err) => {
                *opening = Some((std::time::Instant::now(), err.to_string()));
                Err(err)
            }
        }
    }

    fn current(&self) -> Option<RedisConn> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// After `err`: a connection-level error drops the connection, so the
    /// next call opens a fresh one. On a cluster the fresh one reads the
    /// slot map again from the seed nodes: a connection that lived through
    /// a failover was seen to keep failing for tens of seconds, while a new
    /// one reaches the promoted replica at once. Give every node (or
    /// several) as seeds, so one that is down does not stop it.
    pub fn after_error(&self, err: &RedisError) {
        let broken = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_cluster_error()
            // A primary demoted to a replica (a failed primary back as the
            // replica of the one that replaced it) answers scripts so.
            || matches!(err.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly));
        if broken {
            self.forget();
        }
    }

    /// Drops the connection (a single server's or a cluster's).
    pub fn forget(&self) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if matches!(self, Self::Cluster(_)) { "RedisConn::Cluster" } else { "RedisConn::Single" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from Redis' CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384, "an empty tag hashes the whole key");
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"x{"), crc16(b"x{") % 16384);
    }

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let line = "07c3 127.0.0.1:30004@31004 master - 0 1426238317239 4 connected 0-5460";
        assert_eq!(primary_address(line), Some(("127.0.0.1".to_owned(), 30004)));
        let named = "07c3 10.0.0.1:7000@17000,redis-a myself,master - 0 0 1 connected 5461-10922";
        assert_eq!(primary_address(named), Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(primary_address("e7d1 127.0.0.1:30005@31005 slave 07c3 0 1 4 connected"), None);
        assert_eq!(primary_address("e7d1 127.0.0.1:30006@31006 master,fail - 0 1 4 disconnected"), None);
    }
}
