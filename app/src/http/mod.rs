//! The worker's small HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (NATS, Redis and the database are
//! reachable; 503 naming the failing component otherwise), with a cap on
//! connections and a header-read timeout, so idle clients cannot exhaust
//! the process' file descriptors.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use di::{Db, ResultStore};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use settings::WorkerSettings;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::metrics::Metrics;

/// What the endpoints look at.
#[derive(Clone)]
pub struct Health {
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// The broker connection.
    pub nats: async_nats::Client,
    /// The consumer, for its pending count (JetStream mode).
    pub consumer: Option<PullConsumer>,
    /// The result store.
    pub store: Arc<dyn ResultStore>,
    /// The database.
    pub db: Arc<dyn Db>,
    /// Whether the worker can pull from its consumer.
    pub pulling: Arc<crate::worker::pull::PullHealth>,
    /// The task index's queue, for its count of dropped rows (if indexing).
    pub index: Option<Arc<crate::index::Indexer>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("metrics", &self.metrics).finish_non_exhaustive()
    }
}

/// How many connections the server holds and how long a silent one lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections held at once (`worker.http_max_connections`).
    pub max_connections: usize,
    /// Time to send a request's headers, and to stay idle between requests
    /// (`worker.http_header_timeout`).
    pub header_timeout: Duration,
}

impl HttpLimits {
    /// The limits in `worker.*`.
    pub fn from_settings(worker: &WorkerSettings) -> Self {
        Self { max_connections: worker.http_max_connections, header_timeout: worker.http_header_timeout }
    }
}

/// Binds `addr` now (so a taken port fails start-up) and serves until
/// `shutdown`, within `limits`.
///
/// Not `axum::serve`: it sets no timer, so hyper's header-read timeout is
/// off and a silent or idle connection is held forever (each one a file
/// descriptor), and it has no connection limit. Here each connection is
/// served by hyper's HTTP/1 builder with a timer and a header-read timeout
/// (which also closes idle keep-alive connections: the timer restarts while
/// the server waits for the next request), and a semaphore caps how many
/// are held. At the cap a new connection is accepted and closed at once, so
/// descriptors stay bounded and the kernel's backlog holds no request that
/// would be answered late.
pub async fn serve(
    addr: &str,
    limits: HttpLimits,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    tokio::spawn(accept_loop(listener, app, limits, shutdown));
    Ok(bound)
}

pub(crate) async fn accept_loop(listener: TcpListener, app: Router, limits: HttpLimits, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, or the peer left before accept: the
                // listener itself is fine. Pause so a persistent error does
                // not spin.
                tracing::warn!(%err, "the HTTP server could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(refused, max = limits.max_connections, "HTTP connections at the cap: closing new ones");
            }
            drop(stream);
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    // Bounded by the header timeout for an idle connection,
                    // and by the handler for one in a request.
                    let _ = connection.await;
                }
            }
        });
    }
}

async fn metrics(State(health): State<Health>) -> ([(&'static str, &'static str); 1], String) {
    if let Some(mut consumer) = health.consumer.clone()
        && let Ok(info) = consumer.info().await
    {
        health.metrics.pending.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
    }
    if let Some(index) = &health.index {
        health.metrics.index_dropped(index.dropped());
    }
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], health.metrics.render())
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    let mut failing = Vec::new();
    if health.nats.connection_state() != async_nats::connection::State::Connected {
        failing.push("nats: not connected".to_owned());
    }
    if let Some(problem) = health.pulling.problem() {
        failing.push(format!("consumer: {problem}"));
    }
    let (store, db) = tokio::join!(health.store.ping(), health.db.ping());
    if let Err(err) = store {
        failing.push(format!("redis: {err}"));
    }
    if let Err(err) = db {
        failing.push(format!("database: {err}"));
    }
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", failing.join("\n")))
    }
}
