//! Start-up and shutdown steps around the task loop: the registry check,
//! migrations, and the registered hooks.

use std::sync::Arc;

use di::registry::{HookContext, HookDef, HookKind};
use di::{Container, Db, Registry, RegistryError};
use settings::Settings;

/// A start-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Two tasks share a name.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The schema could not be brought up to date.
    #[error("migrations failed on {backend} ({which}): {source}")]
    Migrations {
        /// `PostgreSQL` or `SQLite`.
        backend: &'static str,
        /// Whose: `the tasks'` or `courier's own`.
        which: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A start-up hook returned an error.
    #[error("start-up hook {hook} (registered at {location}) failed: {source}")]
    Hook {
        /// The hook's path.
        hook: &'static str,
        /// Its `register_hook!` line.
        location: String,
        /// What it returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Collects the registered tasks, refusing duplicate names.
pub fn load_registry() -> Result<Registry, LifecycleError> {
    Ok(Registry::from_inventory()?)
}

/// Brings the database schema of the shipped tasks, and Courier's own
/// tables (campaigns, in `_courier_migrations`), up to date.
pub async fn migrate(db: &dyn Db) -> Result<(), LifecycleError> {
    tasks::MIGRATOR.run(db.pool()).await.map_err(|source| LifecycleError::Migrations {
        backend: db.backend(),
        which: "the tasks'",
        source,
    })?;
    let framework = crate::campaign::migrator();
    framework.run(db.pool()).await.map_err(|source| LifecycleError::Migrations {
        backend: db.backend(),
        which: "courier's own",
        source,
    })?;
    let migrations = tasks::MIGRATOR.iter().count() + framework.iter().count();
    tracing::info!(backend = db.backend(), migrations, "schema up to date");
    Ok(())
}

/// Warns (and returns true) when the database pool is smaller than the
/// task concurrency: tasks beyond the pool's size wait for a connection, and
/// fail after `database.connect_timeout` if none comes back in time.
pub fn warn_if_pool_below_concurrency(settings: &Settings) -> bool {
    let (pool, concurrency) = (settings.database.max_connections, settings.worker.concurrency);
    let short = usize::try_from(pool).unwrap_or(usize::MAX) < concurrency;
    if short {
        tracing::warn!(
            database.max_connections = pool,
            worker.concurrency = concurrency,
            "database.max_connections < worker.concurrency: tasks holding a database session can wait for a \
             connection; raise database.max_connections or lower worker.concurrency"
        );
    }
    short
}

/// Runs `hooks` in order; the first failure stops start-up with its name.
pub async fn run_startup_hooks(
    hooks: &[&'static HookDef],
    container: Arc<dyn Container>,
) -> Result<(), LifecycleError> {
    for hook in hooks {
        hook.run(HookContext::new(container.clone())).await.map_err(|e| LifecycleError::Hook {
            hook: hook.name,
            location: format!("{}:{}", hook.file, hook.line),
            source: e,
        })?;
        tracing::info!(hook = hook.name, "start-up hook done");
    }
    Ok(())
}

/// Runs every shutdown hook; failures are logged, and the rest still run.
pub async fn run_shutdown_hooks(container: Arc<dyn Container>) {
    for hook in Registry::hooks(HookKind::Shutdown) {
        match hook.run(HookContext::new(container.clone())).await {
            Ok(()) => tracing::info!(hook = hook.name, "shutdown hook done"),
            Err(e) => tracing::warn!(hook = hook.name, error = %e, "shutdown hook failed"),
        }
    }
}
