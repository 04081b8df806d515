//! Helpers shared by Courier's integration tests: service probes that say
//! how to start what is missing, unique names per test, a fake Telegram
//! Bot API, and the workspace binaries as child processes.

/// The fake Bot API Courier ships (`courier::testing::fake_bot_api`).
pub use courier::testing::fake_bot_api as fake_telegram;
pub mod browser;
pub mod flood;
pub mod process;
pub mod scope;
pub mod servers;

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use settings::Settings;

/// The local PostgreSQL (trust auth) the tests use.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The local Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The local NATS with JetStream.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A local service a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// NATS with JetStream on 4222.
    Nats,
    /// Redis on 6379.
    Redis,
    /// PostgreSQL on 5432.
    Postgres,
}

impl Service {
    fn probe(self) -> (&'static str, &'static str) {
        match self {
            Self::Nats => (
                "127.0.0.1:4222",
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log   (or: docker compose -f docker/compose.yml up -d nats)",
            ),
            Self::Redis => (
                "127.0.0.1:6379",
                "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log   (or: docker compose -f docker/compose.yml up -d redis)",
            ),
            Self::Postgres => (
                "127.0.0.1:5432",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   (or: docker compose -f docker/compose.yml up -d postgres)",
            ),
        }
    }
}

/// Panics with the command that starts `service` if it is not listening:
/// a test never skips silently.
pub fn require(service: Service) {
    let (addr, how) = service.probe();
    let reachable =
        addr.parse().ok().and_then(|sock| TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()).is_some();
    assert!(reachable, "{service:?} is not reachable at {addr}; start it with:\n  {how}");
}

/// A name no other test (or earlier run) uses: `<prefix>_<pid>_<time>_<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A process' resident memory (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process' status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in KiB")
}

/// The `test` profile from the compiled-in defaults only (no settings
/// folder), with the process' `COURIER_*` variables on top.
pub fn test_settings() -> Settings {
    Settings::load_from(Path::new("/nonexistent-courier-settings"), "test").expect("the built-in test profile is valid")
}

/// A PostgreSQL schema of its own for one test, dropped (with everything
/// in it) when the value is dropped.
#[derive(Debug)]
pub struct PgSchema {
    /// The schema's name.
    pub name: String,
    /// A database URL whose connections use this schema (`search_path`).
    pub url: String,
}

impl PgSchema {
    /// Creates a fresh schema in the local `test` database.
    pub async fn create() -> Self {
        require(Service::Postgres);
        let name = unique("courier_it");
        run_sql(&format!("CREATE SCHEMA {name}")).await;
        let url = format!("{POSTGRES_URL}?options=-c%20search_path%3D{name}");
        Self { name, url }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(run_sql(&sql));
        })
        .join();
    }
}

/// A plain HTTP/1.1 GET to `addr` (`host:port`): (status, body); status 0
/// when the server closed the connection without an answer.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None).await
}

/// A plain HTTP/1.1 POST of a JSON `body` to `addr`: (status, body).
pub async fn http_post_json(addr: &str, path: &str, body: &str) -> (u16, String) {
    http_request(addr, "POST", path, Some(body)).await
}

async fn http_request(addr: &str, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return (0, String::new()) };
    let body = json.map_or(String::new(), |json| {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}", json.len())
    });
    let body = if body.is_empty() { "\r\n".to_owned() } else { body };
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{body}");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn run_sql(sql: &str) {
    use di::sqlx::Connection;
    di::sqlx::any::install_default_drivers();
    let mut conn = di::sqlx::AnyConnection::connect(POSTGRES_URL).await.expect("connect to PostgreSQL");
    // Schema names are generated by `unique()`, never user input.
    di::sqlx::query(di::sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}
