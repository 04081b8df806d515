//! `Db`: the application database, a sqlx `AnyPool` over PostgreSQL or SQLite.

use std::time::Duration;

use async_trait::async_trait;
use settings::DatabaseSettings;
use shaku::{Component, Interface};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::error::{Component as Part, StartupError};

/// A database failure.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(#[from] pub sqlx::Error);

/// The application database as tasks see it.
///
/// Tasks do not take connections from the pool themselves: the task context
/// gives each task one session (a transaction) that it commits or rolls back.
#[async_trait]
pub trait Db: Interface {
    /// The pool, for the session machinery and for start-up work (migrations).
    fn pool(&self) -> &AnyPool;

    /// `"PostgreSQL"` or `"SQLite"`.
    fn backend(&self) -> &'static str;

    /// Runs `SELECT 1`, proving a connection can be taken and used.
    async fn ping(&self) -> Result<(), DbError> {
        let one: i64 = sqlx::query_scalar("SELECT CAST(1 AS BIGINT)").fetch_one(self.pool()).await?;
        debug_assert_eq!(one, 1);
        Ok(())
    }
}

/// The real [`Db`]: a sqlx pool created from settings at start-up.
#[derive(Component, Clone)]
#[shaku(interface = Db)]
pub struct SqlxDb {
    pub(crate) pool: AnyPool,
}

impl std::fmt::Debug for SqlxDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlxDb").field("backend", &self.backend()).field("size", &self.pool.size()).finish()
    }
}

impl SqlxDb {
    /// Wraps an existing pool.
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Opens the pool described by `settings` and checks it with `SELECT 1`.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StartupError> {
        let url = settings.url.expose();
        let secret = settings.url.password().unwrap_or_default();
        let fail = |err: &dyn std::fmt::Display| {
            StartupError::unreachable(Part::Database, settings.url.redacted(), err, &[&secret])
        };
        sqlx::any::install_default_drivers();
        let mut options =
            AnyPoolOptions::new().max_connections(settings.max_connections).acquire_timeout(settings.connect_timeout);
        if is_sqlite_memory(url) {
            // Every connection to `sqlite::memory:` is a separate empty
            // database; one connection keeps one database, kept open forever.
            options = options.max_connections(1).idle_timeout(None).max_lifetime(None);
        }
        let pool = tokio::time::timeout(settings.connect_timeout + Duration::from_secs(1), options.connect(url))
            .await
            .map_err(|_| fail(&format!("no connection within {:?}", settings.connect_timeout)))?
            .map_err(|err| fail(&err))?;
        let db = Self { pool };
        db.ping().await.map_err(|err| fail(&err))?;
        Ok(db)
    }

    /// An empty SQLite database in memory: a real database for unit tests,
    /// with no server and nothing left behind.
    pub async fn sqlite_in_memory() -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Db for SqlxDb {
    fn pool(&self) -> &AnyPool {
        &self.pool
    }

    fn backend(&self) -> &'static str {
        backend_of(&self.pool)
    }
}

/// The backend name of a pool, from its connect options.
fn backend_of(pool: &AnyPool) -> &'static str {
    let options = pool.connect_options();
    if options.database_url.scheme().starts_with("sqlite") { "SQLite" } else { "PostgreSQL" }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.starts_with("sqlite::memory:") || url.contains("mode=memory")
}
