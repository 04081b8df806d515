//! The worker process' life: start-up, serving, graceful shutdown.

use std::future::Future;

use di::AppContainer;
use settings::Settings;

use crate::broker::{self, BrokerError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A container component could not be reached.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
}

/// Runs a worker until `shutdown` resolves: connects NATS, builds the
/// container (one log line per component), serves, then closes the
/// container and drains NATS.
pub async fn run_worker(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    let nats = broker::connect(&settings.nats, "courier-worker").await?;
    broker::check_jetstream(&nats, &settings.nats).await?;
    tracing::info!(component = "nats", url = %settings.nats.url, stream = %settings.nats.stream, "connected");
    let container = AppContainer::builder(&settings).build().await?;
    tracing::info!(
        profile = %settings.profile,
        concurrency = settings.worker.concurrency,
        startup_ms = started.elapsed().as_millis() as u64,
        "worker ready"
    );

    shutdown.await;

    tracing::info!("stopping: closing the container and draining NATS");
    container.shutdown().await;
    if let Err(err) = nats.drain().await {
        tracing::warn!(%err, "NATS drain failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}
