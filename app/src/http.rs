//! The worker's small HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (NATS, Redis and the database are
//! reachable; 503 naming the failing component otherwise).

use std::sync::Arc;

use async_nats::jetstream::consumer::PullConsumer;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use di::{Db, ResultStore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

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
    pub pulling: Arc<crate::pull::PullHealth>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("metrics", &self.metrics).finish_non_exhaustive()
    }
}

/// Binds `addr` now (so a taken port fails start-up) and serves until
/// `shutdown`.
pub async fn serve(addr: &str, health: Health, shutdown: CancellationToken) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = served.await {
            tracing::warn!(%err, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(health): State<Health>) -> ([(&'static str, &'static str); 1], String) {
    if let Some(mut consumer) = health.consumer.clone()
        && let Ok(info) = consumer.info().await
    {
        health.metrics.pending.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
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
