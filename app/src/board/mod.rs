//! Courier Board: a web page that shows and steers the queue (the `board`
//! binary). Server-rendered HTML (maud), one small embedded script for live
//! updates, every asset inside the binary.
//!
//! Security (ARCHITECTURE.md "The board"): a password login (or, without a
//! password, loopback only and no login), an HttpOnly SameSite=Strict
//! session cookie, a CSRF token checked on every POST before any handler
//! runs (state changes are POSTs only), a strict Content-Security-Policy,
//! secret argument fields masked at indexing time, no setting's secret ever
//! rendered, and an audit log line (`courier::board::audit`) per action.

mod actions;
mod auth;
mod overview;
mod pages;
mod unfinished;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use di::Registry;
use settings::Settings;
use sqlx::AnyPool;
use tokio_util::sync::CancellationToken;

use crate::Producer;
use crate::campaign::Campaigns;

pub use auth::{SESSION_COOKIE, Sessions};

/// Why the board did not start.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No password and an address other than loopback.
    #[error(
        "board.addr is {0}, not a loopback address, and board.password is not set: set a password \
         (COURIER_BOARD__PASSWORD) or bind to 127.0.0.1"
    )]
    NoPassword(String),
    /// The address does not parse (want ip:port).
    #[error("board.addr {addr}: {source} (want ip:port)")]
    Address {
        /// The address.
        addr: String,
        /// The parser's error.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The address cannot be bound.
    #[error("board.addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// NATS or Redis.
    #[error(transparent)]
    Producer(#[from] crate::ProducerError),
    /// The database.
    #[error(transparent)]
    Database(#[from] di::StartupError),
    /// The framework's tables.
    #[error("database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The task registry or a schedule.
    #[error("{0}")]
    Registry(String),
}

/// What every page reads.
pub struct Board {
    pub(crate) settings: Settings,
    pub(crate) producer: Producer,
    pub(crate) pool: AnyPool,
    pub(crate) campaigns: Campaigns,
    /// Presence's Redis: one connection, kept between page loads.
    pub(crate) redis: di::redis_conn::SharedConn,
    pub(crate) registry: Registry,
    pub(crate) sessions: Sessions,
    /// Campaigns whose cancel's walk of the records still runs: a second
    /// click starts no walk of its own.
    pub(crate) walking: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("sessions", &self.sessions).finish_non_exhaustive()
    }
}

impl Board {
    /// Connects to NATS, Redis and the database (bringing the framework's
    /// tables up to date) with `settings`.
    pub async fn connect(settings: Settings) -> Result<Arc<Self>, BoardError> {
        check_password(&settings)?;
        let producer = Producer::connect(&settings).await?;
        let db = di::SqlxDb::connect(&settings.database).await?;
        let pool = di::Db::pool(&db).clone();
        crate::campaign::migrator().run(&pool).await?;
        let campaigns = Campaigns::new(pool.clone(), producer.publisher().clone(), settings.nats.clone());
        let redis = di::components::result_store::redis_client(&settings.redis)
            .map_err(|e| BoardError::Registry(format!("redis.url: {e}")))?;
        let registry = Registry::from_inventory().map_err(|e| BoardError::Registry(e.to_string()))?;
        let sessions = Sessions::new(settings.board.session_ttl);
        let redis = di::redis_conn::SharedConn::new(redis);
        let walking = std::sync::Mutex::default();
        Ok(Arc::new(Self { settings, producer, pool, campaigns, redis, registry, sessions, walking }))
    }

    /// The database pool (the task index, campaigns, schedules).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether a login is needed (a password is set).
    pub fn login_required(&self) -> bool {
        self.needs_login()
    }

    pub(crate) fn needs_login(&self) -> bool {
        self.settings.board.password.as_ref().is_some_and(|p| !p.expose().is_empty())
    }

    pub(crate) async fn redis_conn(&self) -> Result<di::redis_conn::RedisConn, String> {
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.redis.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer in 2 s".into()),
        }
    }

    /// After a Redis error on the presence connection (dropped if broken).
    pub(crate) fn redis_failed(&self, err: &redis::RedisError) {
        self.redis.after_error(err);
    }
}

/// Refuses a board without a password on an address other than loopback.
pub fn check_password(settings: &Settings) -> Result<(), BoardError> {
    let addr = settings.board.addr.trim();
    let parsed: SocketAddr = addr.parse().map_err(|source| BoardError::Address { addr: addr.to_owned(), source })?;
    let has_password = settings.board.password.as_ref().is_some_and(|p| !p.expose().is_empty());
    if !has_password && !parsed.ip().is_loopback() {
        return Err(BoardError::NoPassword(addr.to_owned()));
    }
    Ok(())
}

/// The routes: pages, actions (POST, behind the CSRF check), assets.
pub fn router(board: Arc<Board>) -> Router {
    let pages = Router::new()
        .route("/", get(overview::overview))
        .route("/fragment/overview", get(overview::overview_fragment))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/fragment/tasks/{id}", get(pages::task_fragment))
        .route("/tasks/{id}/cancel", post(actions::cancel_task))
        .route("/tasks/{id}/retry", post(actions::retry_task))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/replay", post(actions::replay_matching))
        .route("/dead-letters/{sequence}/replay", post(actions::replay_one))
        .route("/dead-letters/{sequence}/discard", post(actions::discard))
        .route("/campaigns", get(pages::campaigns))
        .route("/fragment/campaigns", get(pages::campaigns_fragment))
        .route("/campaigns/{id}/report.csv", get(actions::campaign_report))
        .route("/campaigns/{id}/{action}", post(actions::campaign_action))
        .route("/schedules", get(pages::schedules))
        .route("/schedules/{name}/{action}", post(actions::schedule_action))
        .route("/flood", get(pages::flood))
        .route("/logout", post(auth::logout))
        .layer(axum::middleware::from_fn_with_state(board.clone(), auth::guard));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/assets/board.css", get(css))
        .route("/assets/board.js", get(js))
        .merge(pages)
        .fallback(|| async { view::not_found("no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(board)
}

/// Binds `board.addr` and serves until `shutdown`, with the same connection
/// cap and header timeout as the worker's HTTP server.
pub async fn serve(board: Arc<Board>, shutdown: CancellationToken) -> Result<SocketAddr, BoardError> {
    let addr = board.settings.board.addr.trim().to_owned();
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|source| BoardError::Bind { addr: addr.clone(), source })?;
    let bound = listener.local_addr().map_err(|source| BoardError::Bind { addr, source })?;
    let limits = crate::http::HttpLimits {
        max_connections: board.settings.board.max_connections.max(1),
        header_timeout: board.settings.board.header_timeout,
    };
    tokio::spawn(crate::http::accept_loop(listener, router(board), limits, shutdown));
    Ok(bound)
}

/// Standard headers on every answer: no framing, no sniffing, no referrer,
/// no caching, and a CSP that allows only the board's own script and style.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

const CSS: &str = include_str!("assets/board.css");
const JS: &str = include_str!("assets/board.js");

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS)
}
