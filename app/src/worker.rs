//! The worker process' life: start-up, serving, graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use di::registry::HookKind;
use di::{AppContainer, Container, Db, Registry};
use settings::Settings;

use crate::broker::{self, BrokerError};
use crate::lifecycle::{self, LifecycleError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A container component could not be reached.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
    /// The registry, the migrations or a start-up hook failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

/// Runs a worker until `shutdown` resolves: checks the registry, connects
/// NATS, builds the container (one log line per component), migrates, runs
/// the start-up hooks, serves, then runs the shutdown hooks, closes the
/// container and drains NATS.
pub async fn run_worker(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    let registry = lifecycle::load_registry()?;
    let nats = broker::connect(&settings.nats, "courier-worker").await?;
    broker::check_jetstream(&nats, &settings.nats).await?;
    tracing::info!(component = "nats", url = %settings.nats.url, stream = %settings.nats.stream, "connected");
    let container = AppContainer::builder(&settings).build().await?;
    let module: Arc<dyn Container> = container.module().clone();
    let db: Arc<dyn Db> = module.resolve();
    lifecycle::migrate(&*db).await?;
    lifecycle::run_startup_hooks(&Registry::hooks(HookKind::Startup), module.clone()).await?;
    tracing::info!(
        profile = %settings.profile,
        tasks = ?registry.names(),
        concurrency = settings.worker.concurrency,
        startup_ms = started.elapsed().as_millis() as u64,
        "worker ready"
    );

    shutdown.await;

    tracing::info!("stopping: shutdown hooks, then the container, then NATS");
    lifecycle::run_shutdown_hooks(module).await;
    drop(db);
    container.shutdown().await;
    if let Err(err) = nats.drain().await {
        tracing::warn!(%err, "NATS drain failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}
