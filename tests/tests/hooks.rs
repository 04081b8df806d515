//! Start-up and shutdown hooks: they run around serving, and a failing
//! start-up hook stops the worker with the hook's name in the error.

use std::sync::atomic::{AtomicU32, Ordering};

use courier::WorkerError;
use courier::worker::lifecycle::{self, LifecycleError};
use di::registry::{HookKind, HookResult};
use di::{HookContext, Registry, register_hook};
use it::{PgSchema, Service, require};
use settings::SecretUrl;
use tasks as _;

static WARMED: AtomicU32 = AtomicU32::new(0);

async fn warm_cache(ctx: HookContext) -> HookResult {
    ctx.db().ping().await?;
    WARMED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn refuse_to_start(_ctx: HookContext) -> HookResult {
    Err("the cache backend is missing".into())
}

register_hook!(startup: warm_cache);
register_hook!(startup: refuse_to_start);

#[tokio::test]
async fn hooks_are_registered_with_their_paths() {
    let names: Vec<_> = Registry::hooks(HookKind::Startup).iter().map(|h| h.name).collect();
    assert_eq!(names, vec!["hooks::refuse_to_start", "hooks::warm_cache"]);
    assert!(Registry::hooks(HookKind::Shutdown).is_empty());
}

#[tokio::test]
async fn startup_hooks_run_with_the_container() {
    let (module, _mocks) = di::testing::mock_container().await.unwrap();
    let warm: Vec<_> =
        Registry::hooks(HookKind::Startup).into_iter().filter(|h| h.name.ends_with("warm_cache")).collect();
    lifecycle::run_startup_hooks(&warm, module).await.unwrap();
    assert_eq!(WARMED.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_startup_hook_stops_the_worker_naming_it() {
    require(Service::Nats);
    require(Service::Redis);
    let schema = PgSchema::create().await;
    // Its own stream and durable: run_worker creates them before the hooks run.
    let scope = it::scope::Scope::new();
    let mut settings = scope.settings.clone();
    // Named, so the worker's own sessions can be counted on the server.
    let application = it::unique("hooks");
    settings.database.url = SecretUrl::new(format!("{}&application_name={application}", schema.url));
    // The shutdown future never resolves: only the hook's failure ends this.
    let result = courier::run_worker(settings, std::future::pending()).await;
    let Err(WorkerError::Lifecycle(LifecycleError::Hook { hook, location, source })) = result else {
        panic!("expected a hook failure, got {result:?}");
    };
    assert_eq!(hook, "hooks::refuse_to_start");
    assert!(location.starts_with("tests/tests/hooks.rs:"), "{location}");
    // The hook's own error is kept as the source, not flattened to text.
    assert_eq!(source.to_string(), "the cache backend is missing");

    // The container was built before the hooks ran: its pool is closed by
    // the time run_worker returns, not left to a background drop.
    di::sqlx::any::install_default_drivers();
    let pool = di::sqlx::AnyPool::connect(it::POSTGRES_URL).await.unwrap();
    let open: i64 = di::sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(&application)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 0, "the worker's database sessions outlived its failed start-up");
    pool.close().await;
}
