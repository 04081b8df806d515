//! The worker process' life: start-up, serving, graceful shutdown.

pub mod check;
pub mod core_nats;
pub mod jetstream;
pub mod lifecycle;
pub mod presence;
pub mod pull;
pub mod runtime;
pub mod shutdown;

use std::future::Future;
use std::sync::Arc;

use di::registry::HookKind;
use di::{AppContainer, Container, Db, Executor, Registry, ResultStore};
use settings::{NatsMode, Settings};
use tokio_util::sync::CancellationToken;

use crate::broker::advisories;
use crate::broker::publish::{NatsEnqueuer, Publisher};
use crate::broker::{self, BrokerError, Topology};
use crate::http::metrics::Metrics;
use crate::http::{self, Health};
use jetstream::Runtime;
use lifecycle::LifecycleError;
use pull::{PullHealth, Puller};

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
    /// A cron schedule is wrong (the message names it and where it was declared).
    #[error(transparent)]
    Schedule(#[from] crate::schedule::cron::ScheduleError),
    /// The Redis client for delayed tasks could not be made. The client's
    /// error is kept as text with the URL's secrets removed: its own text
    /// can carry the URL.
    #[error("redis.url: {0}")]
    Redis(String),
    /// The metrics and health server could not listen.
    #[error("worker.http_addr {addr}: cannot listen: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs a worker until `shutdown` resolves: checks the registry, connects
/// NATS and sets up the streams and the consumer, builds the container (one
/// log line per component), migrates, runs the start-up hooks, serves, and
/// then stops pulling, lets running tasks finish within
/// `worker.shutdown_timeout`, runs the shutdown hooks, closes the container
/// and drains NATS. A start-up step that fails tears down whatever the steps
/// before it built, on the same path as a normal stop.
pub async fn run_worker(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    let registry = lifecycle::load_registry()?;
    let schedules = crate::schedule::cron::load(&registry, &settings)?;
    lifecycle::warn_if_pool_below_concurrency(&settings);
    let nats = broker::connect(&settings.nats, "courier-worker").await?;
    // Boxed: the whole worker's state machine would make every caller's future large.
    let result = Box::pin(with_nats(&settings, registry, schedules, &nats, started, shutdown)).await;
    if let Err(err) = nats.drain().await {
        tracing::warn!(%err, "NATS drain failed");
    }
    match &result {
        Ok(()) => tracing::info!("worker stopped"),
        Err(err) => tracing::error!(%err, "worker start-up failed; what was built is torn down"),
    }
    result
}

/// The worker's life once NATS is connected.
async fn with_nats(
    settings: &Settings,
    registry: Registry,
    schedules: Vec<crate::schedule::cron::Schedule>,
    nats: &async_nats::Client,
    started: std::time::Instant,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let publisher = Publisher::new(nats.clone(), settings.nats.clone());
    let (topology, consumers) = match settings.nats.mode {
        NatsMode::Jetstream => {
            broker::check_jetstream(nats, &settings.nats).await?;
            let most_attempts = registry.tasks().map(|t| i64::from(t.options.retry.max_attempts)).max().unwrap_or(1);
            let topology =
                Topology::new(async_nats::jetstream::new(nats.clone()), settings.nats.clone(), most_attempts);
            let consumers = topology.ensure().await?;
            (Some(topology), Some(consumers))
        }
        NatsMode::Core => (None, None),
    };
    tracing::info!(
        component = "nats",
        url = %settings.nats.url,
        mode = settings.nats.mode.name(),
        stream = %settings.nats.stream,
        durable = %settings.nats.durable,
        "connected"
    );
    let container = AppContainer::builder(settings).build().await?;
    let module: Arc<dyn Container> = container.module().clone();
    let token = CancellationToken::new();
    let result = serve_container(
        settings,
        (registry, schedules),
        nats,
        publisher,
        topology,
        consumers,
        &module,
        &token,
        started,
        shutdown,
    )
    .await;
    token.cancel();
    if result.is_ok() {
        tracing::info!("stopping: shutdown hooks, then the container, then NATS");
        lifecycle::run_shutdown_hooks(module.clone()).await;
    }
    drop(module);
    container.shutdown().await;
    result
}

/// Migrates, runs the start-up hooks, serves until `shutdown`.
#[allow(clippy::too_many_arguments)]
async fn serve_container(
    settings: &Settings,
    (registry, schedules): (Registry, Vec<crate::schedule::cron::Schedule>),
    nats: &async_nats::Client,
    publisher: Publisher,
    topology: Option<Topology>,
    consumers: Option<Vec<(di::Lane, async_nats::jetstream::consumer::PullConsumer)>>,
    module: &Arc<dyn Container>,
    token: &CancellationToken,
    started: std::time::Instant,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let db: Arc<dyn Db> = module.resolve();
    lifecycle::migrate(&*db).await?;
    let campaigns = crate::campaign::worker::CampaignGate::new(db.pool().clone(), publisher.clone());
    let pool = db.pool().clone();
    drop(db);
    lifecycle::run_startup_hooks(&Registry::hooks(HookKind::Startup), module.clone()).await?;

    let names = registry.names();
    let enqueuer = Arc::new(NatsEnqueuer::new(publisher.clone()));
    let store: Arc<dyn ResultStore> = module.resolve();
    let metrics = Arc::new(Metrics::new(&names));
    let progress = broker::progress_interval(&settings.nats);
    let bot: Arc<dyn di::BotApi> = module.resolve();
    if let Some(governor) = bot.governor() {
        governor.observe(Arc::new(metrics.flood.clone()));
        tokio::spawn(metrics.flood.clone().watch(governor.clone()));
    }
    let worker_name = presence::worker_name();
    let index_stop = CancellationToken::new();
    let index = settings.index.enabled.then(|| {
        let postgres = crate::index::writer_pool(&settings.database);
        crate::index::Indexer::start(
            pool.clone(),
            postgres,
            &registry,
            &settings.index,
            di::DecodeLimits::from_settings(settings),
            worker_name.clone(),
            index_stop.clone(),
        )
    });
    let executor =
        Executor::new(Arc::new(registry), module.clone(), enqueuer, di::DecodeLimits::from_settings(settings));
    let runtime = Arc::new(
        Runtime::new(executor, publisher.clone(), store.clone(), progress, metrics.clone(), topology.clone())
            .with_governor(bot.governor())
            .with_campaigns(campaigns)
            .with_index(index.as_ref().map(|(index, _)| index.clone())),
    );
    spawn_presence(settings, worker_name, metrics.clone(), token)?;
    // Tells running tasks when a producer cancels them (half a second apart:
    // `ctx.cancelled()` resolves within a second). Ends with the serving.
    let _cancellations = {
        let runtime = runtime.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = runtime.executor.watch_cancellations(std::time::Duration::from_millis(500)) => {}
                () = stop.cancelled() => {}
            }
        })
    };
    if topology.is_some() {
        spawn_time_keepers(settings, schedules, &publisher, &store, pool, token)?;
    } else if !schedules.is_empty() {
        tracing::warn!("cron schedules are not kept in core NATS mode (nothing deduplicates their ticks)");
    }
    let pulling = Arc::new(PullHealth::default());
    let addr = settings.worker.http_addr.trim();
    if !addr.is_empty() {
        let health = Health {
            metrics,
            nats: nats.clone(),
            consumer: consumers.as_ref().and_then(|all| {
                all.iter().find(|(lane, _)| *lane == di::Lane::Transactional).map(|(_, consumer)| consumer.clone())
            }),
            store,
            db: module.resolve(),
            pulling: pulling.clone(),
            index: index.as_ref().map(|(index, _)| index.clone()),
        };
        let bound = http::serve(addr, http::HttpLimits::from_settings(&settings.worker), health, token.clone())
            .await
            .map_err(|source| WorkerError::Http { addr: addr.to_owned(), source })?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    }
    tracing::info!(
        profile = %settings.profile,
        tasks = %names.join(","),
        concurrency = settings.worker.concurrency,
        startup_ms = started.elapsed().as_millis() as u64,
        "worker ready"
    );

    let (concurrency, grace) = (settings.worker.concurrency, settings.worker.shutdown_timeout);
    let serving = async {
        match (topology, consumers) {
            (Some(topology), Some(consumers)) => {
                let advisories = tokio::spawn(advisories::watch(topology.clone(), runtime.clone(), token.clone()));
                let pullers = consumers
                    .into_iter()
                    .map(|(lane, consumer)| {
                        Puller::new(topology.clone(), lane, consumer, nats.clone(), pulling.clone())
                    })
                    .collect();
                jetstream::serve(pullers, runtime, concurrency, token.clone(), grace).await;
                let _ = advisories.await;
            }
            _ => {
                let core =
                    core_nats::serve_core(nats.clone(), &settings.nats, runtime, concurrency, token.clone(), grace);
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
    // What the index has queued is written before the process ends.
    index_stop.cancel();
    if let Some((_, writer)) = index {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    }
    Ok(())
}

/// Announces this worker in Redis (the board's list of workers alive) until `token`.
fn spawn_presence(
    settings: &Settings,
    name: String,
    metrics: Arc<Metrics>,
    token: &CancellationToken,
) -> Result<(), WorkerError> {
    let redis = di::components::result_store::redis_client(&settings.redis)
        .map_err(|err| WorkerError::Redis(settings::redact_url(&err.to_string())))?;
    let info = presence::WorkerInfo {
        name,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        in_flight: 0,
        concurrency: settings.worker.concurrency,
        rate_limited: Default::default(),
        started_at: di::unix_now() as i64,
    };
    let announce = presence::announce(redis, settings.redis.key_prefix.clone(), info, metrics, token.clone());
    tokio::spawn(announce);
    Ok(())
}

/// Starts this worker's share of delayed tasks (indexing and moving) and
/// the clocks of the cron schedules; both end with `token`.
fn spawn_time_keepers(
    settings: &Settings,
    schedules: Vec<crate::schedule::cron::Schedule>,
    publisher: &Publisher,
    store: &Arc<dyn ResultStore>,
    pool: di::sqlx::AnyPool,
    token: &CancellationToken,
) -> Result<(), WorkerError> {
    let redis = di::components::result_store::redis_client(&settings.redis)
        .map_err(|err| WorkerError::Redis(settings::redact_url(&err.to_string())))?;
    let mover = Arc::new(crate::schedule::delayed::DelayedMover::new(
        publisher.clone(),
        store.clone(),
        redis,
        &settings.redis.key_prefix,
    ));
    tokio::spawn(mover.run(token.clone()));
    if !schedules.is_empty() {
        let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(schedules = %names.join(","), "keeping the cron schedules");
        let producer = crate::Producer::new(publisher.clone(), store.clone());
        tokio::spawn(crate::schedule::cron::keep(schedules, producer, pool, token.clone()));
    }
    Ok(())
}
