//! The worker process' life: start-up, serving, graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use di::registry::HookKind;
use di::{AppContainer, Container, Db, Executor, Registry, ResultStore};
use settings::{NatsMode, Settings};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerError};
use crate::http::{self, Health};
use crate::lifecycle::{self, LifecycleError};
use crate::metrics::Metrics;
use crate::publish::{NatsEnqueuer, Publisher};
use crate::serve::{self, Runtime};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker could not be reached or set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A container component could not be reached.
    #[error(transparent)]
    Startup(#[from] di::StartupError),
    /// The registry, the migrations or a start-up hook failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The metrics and health server could not listen.
    #[error("worker.http_addr {addr}: cannot listen: {reason}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Runs a worker until `shutdown` resolves: checks the registry, connects
/// NATS and sets up the streams and the consumer, builds the container (one
/// log line per component), migrates, runs the start-up hooks, serves, and
/// then stops pulling, lets running tasks finish within
/// `worker.shutdown_timeout`, runs the shutdown hooks, closes the container
/// and drains NATS.
pub async fn run_worker(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    let registry = lifecycle::load_registry()?;
    lifecycle::warn_if_pool_below_concurrency(&settings);
    let nats = broker::connect(&settings.nats, "courier-worker").await?;
    let publisher = Publisher::new(nats.clone(), settings.nats.clone());
    let consumer = match settings.nats.mode {
        NatsMode::Jetstream => {
            broker::check_jetstream(&nats, &settings.nats).await?;
            let js = jetstream::new(nats.clone());
            let stream = broker::ensure_streams(&js, &settings.nats).await?;
            let most_attempts = registry.tasks().map(|t| i64::from(t.options.retry.max_attempts)).max().unwrap_or(1);
            Some(broker::ensure_consumer(&stream, &settings.nats, most_attempts).await?)
        }
        NatsMode::Core => None,
    };
    tracing::info!(
        component = "nats",
        url = %settings.nats.url,
        mode = ?settings.nats.mode,
        stream = %settings.nats.stream,
        durable = %settings.nats.durable,
        "connected"
    );
    let container = AppContainer::builder(&settings).build().await?;
    let module: Arc<dyn Container> = container.module().clone();
    let db: Arc<dyn Db> = module.resolve();
    lifecycle::migrate(&*db).await?;
    drop(db);
    lifecycle::run_startup_hooks(&Registry::hooks(HookKind::Startup), module.clone()).await?;

    let names = registry.names();
    let enqueuer = Arc::new(NatsEnqueuer::new(publisher.clone()));
    let executor =
        Executor::new(Arc::new(registry), module.clone(), enqueuer, di::DecodeLimits::from_settings(&settings));
    let store: Arc<dyn ResultStore> = module.resolve();
    let metrics = Arc::new(Metrics::new(&names));
    let progress = broker::progress_interval(&settings.nats);
    let runtime = Arc::new(Runtime::new(executor, publisher, store.clone(), progress, metrics.clone()));
    let token = CancellationToken::new();
    let addr = settings.worker.http_addr.trim();
    if !addr.is_empty() {
        let health = Health { metrics, nats: nats.clone(), consumer: consumer.clone(), store, db: module.resolve() };
        let bound = http::serve(addr, http::HttpLimits::from_settings(&settings.worker), health, token.clone())
            .await
            .map_err(|err| WorkerError::Http { addr: addr.to_owned(), reason: err.to_string() })?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    }
    tracing::info!(
        profile = %settings.profile,
        tasks = ?names,
        concurrency = settings.worker.concurrency,
        startup_ms = started.elapsed().as_millis() as u64,
        "worker ready"
    );

    let (concurrency, grace) = (settings.worker.concurrency, settings.worker.shutdown_timeout);
    let serving = async {
        match consumer {
            Some(consumer) => serve::serve(consumer, runtime, concurrency, token.clone(), grace).await,
            None => {
                let core = crate::serve_core::serve_core(
                    nats.clone(),
                    &settings.nats,
                    runtime,
                    concurrency,
                    token.clone(),
                    grace,
                );
                if let Err(err) = core.await {
                    tracing::error!(%err, "cannot subscribe to the task subjects");
                }
            }
        }
    };
    // The signal cancels the token; serving then drains and returns.
    let watch = async {
        shutdown.await;
        token.cancel();
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = serving => {}
        () = watch => {}
    }

    tracing::info!("stopping: shutdown hooks, then the container, then NATS");
    lifecycle::run_shutdown_hooks(module).await;
    container.shutdown().await;
    if let Err(err) = nats.drain().await {
        tracing::warn!(%err, "NATS drain failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}
