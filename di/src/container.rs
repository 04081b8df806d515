//! The shaku module, the `Container` view tasks get, and the builder that
//! connects every component from settings at start-up.

use std::sync::Arc;

use settings::{Settings, TelegramSettings};
use shaku::{HasComponent, module};

use crate::components::bot::{BotApi, TelegramBot, TelegramBotParameters};
use crate::components::db::{Db, SqlxDb, SqlxDbParameters};
use crate::components::result_store::{RedisResultStore, RedisResultStoreParameters, ResultStore};
use crate::error::{Component, StartupError};

// The application's components; one instance of each per worker process.
module! {
    pub AppModule {
        components = [SqlxDb, TelegramBot, RedisResultStore],
        providers = []
    }
}

impl std::fmt::Debug for AppModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppModule")
    }
}

/// What the runtime and tasks resolve components from: any module, real or
/// made of test doubles, that has all of them.
pub trait Container: HasComponent<dyn Db> + HasComponent<dyn BotApi> + HasComponent<dyn ResultStore> {}

impl<T> Container for T where T: HasComponent<dyn Db> + HasComponent<dyn BotApi> + HasComponent<dyn ResultStore> {}

/// The built container plus what must be closed at shutdown.
#[derive(Debug)]
pub struct AppContainer {
    module: Arc<AppModule>,
    /// The real database, kept to close its pool explicitly at shutdown.
    db: Option<SqlxDb>,
}

impl AppContainer {
    /// A builder that connects every component from `settings`.
    pub fn builder(settings: &Settings) -> ContainerBuilder<'_> {
        ContainerBuilder { settings, db: None, bot: None, store: None }
    }

    /// The module, to share with tasks.
    pub fn module(&self) -> &Arc<AppModule> {
        &self.module
    }

    /// Closes the pools. Tasks still holding components see them closed.
    pub async fn shutdown(self) {
        if let Some(db) = &self.db {
            db.close().await;
            tracing::info!(component = %Component::Database, "pool closed");
        }
        // The Redis connection and the HTTP client close when their last
        // handle drops, which is here unless a task still holds the module.
        let holders = Arc::strong_count(&self.module);
        drop(self.module);
        tracing::info!(component = %Component::Redis, other_holders = holders - 1, "pool released");
    }
}

/// Builds an [`AppContainer`]: creates and checks every pool (async), then
/// builds the shaku module (sync). A component given with `with_*` is used
/// as it is and not connected: that is how tests swap in doubles.
pub struct ContainerBuilder<'a> {
    settings: &'a Settings,
    db: Option<Box<dyn Db>>,
    bot: Option<Box<dyn BotApi>>,
    store: Option<Box<dyn ResultStore>>,
}

impl std::fmt::Debug for ContainerBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerBuilder")
            .field("db_override", &self.db.is_some())
            .field("bot_override", &self.bot.is_some())
            .field("store_override", &self.store.is_some())
            .finish()
    }
}

impl ContainerBuilder<'_> {
    /// Uses `db` instead of connecting to `database.url`.
    pub fn with_db(mut self, db: impl Db) -> Self {
        self.db = Some(Box::new(db));
        self
    }

    /// Uses `bot` instead of the Telegram bot from settings.
    pub fn with_bot(mut self, bot: impl BotApi) -> Self {
        self.bot = Some(Box::new(bot));
        self
    }

    /// Uses `store` instead of connecting to `redis.url`.
    pub fn with_store(mut self, store: impl ResultStore) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Connects what was not overridden, logs one line per component, and
    /// builds the module. The first component that fails stops the build.
    pub async fn build(self) -> Result<AppContainer, StartupError> {
        let settings = self.settings;
        let mut builder = AppModule::builder();
        let mut real_db = None;

        match self.db {
            Some(db) => builder = builder.with_component_override::<dyn Db>(db),
            None => {
                let db = SqlxDb::connect(&settings.database).await?;
                tracing::info!(component = %Component::Database, backend = db.backend(), url = %settings.database.url, "connected");
                builder = builder.with_component_parameters::<SqlxDb>(SqlxDbParameters { pool: db.pool.clone() });
                real_db = Some(db);
            }
        }
        match self.store {
            Some(store) => builder = builder.with_component_override::<dyn ResultStore>(store),
            None => {
                let store = RedisResultStore::connect(&settings.redis).await?;
                tracing::info!(component = %Component::Redis, url = %settings.redis.url, ttl_seconds = settings.redis.result_ttl.as_secs(), "connected");
                builder = builder.with_component_parameters::<RedisResultStore>(RedisResultStoreParameters {
                    conn: store.conn,
                    ttl: store.ttl,
                    key_prefix: store.key_prefix,
                });
            }
        }
        match self.bot {
            Some(bot) => builder = builder.with_component_override::<dyn BotApi>(bot),
            None => {
                let (bot, status) = verify_telegram(&settings.telegram).await?;
                let governor = crate::governor::connect(&bot, settings).await?;
                tracing::info!(
                    component = %Component::Telegram,
                    api_url = %settings.telegram.api_url,
                    %status,
                    flood_control = governor.as_ref().map_or("off", |g| g.prefix()),
                    "ready"
                );
                builder = builder.with_component_parameters::<TelegramBot>(TelegramBotParameters {
                    bot: bot.bot,
                    token: bot.token,
                    governor,
                });
            }
        }
        Ok(AppContainer { module: Arc::new(builder.build()), db: real_db })
    }
}

/// The outcome of checking one component (for `worker --check`).
#[derive(Debug)]
pub struct ComponentCheck {
    /// Which component.
    pub component: Component,
    /// Where it was looked for (redacted).
    pub target: String,
    /// What was found: a short description, or the error.
    pub outcome: Result<String, StartupError>,
}

/// Connects to every component independently and reports each; the pools
/// are closed again before returning.
pub async fn check_components(settings: &Settings) -> Vec<ComponentCheck> {
    let db = async {
        let outcome = match SqlxDb::connect(&settings.database).await {
            Ok(db) => {
                let backend = db.backend();
                db.close().await;
                Ok(format!("{backend}, SELECT 1 ok"))
            }
            Err(err) => Err(err),
        };
        ComponentCheck { component: Component::Database, target: settings.database.url.redacted(), outcome }
    };
    let redis = async {
        let outcome = RedisResultStore::connect(&settings.redis).await.map(|_| "PING ok".to_owned());
        ComponentCheck { component: Component::Redis, target: settings.redis.url.redacted(), outcome }
    };
    let telegram = async {
        let outcome = verify_telegram(&settings.telegram).await.map(|(_, status)| status);
        ComponentCheck { component: Component::Telegram, target: settings.telegram.api_url.clone(), outcome }
    };
    let (db, redis, telegram) = tokio::join!(db, redis, telegram);
    vec![db, redis, telegram]
}

/// Builds the bot from settings and checks it with `getMe`, telling apart
/// a server that cannot be reached, one that refuses the token, and an
/// answer that is not the Bot API's (`worker --check` says which).
pub async fn verify_telegram(settings: &TelegramSettings) -> Result<(TelegramBot, String), StartupError> {
    use teloxide::RequestError;
    use teloxide::prelude::Requester;

    let bot = TelegramBot::from_settings(settings)?;
    let Some(client) = bot.teloxide() else {
        let status = bot
            .check()
            .await
            .map_err(|err| StartupError::Misconfigured { component: Component::Telegram, reason: err.to_string() })?;
        return Ok((bot, status));
    };
    let url = settings.api_url.clone();
    let token = settings.token.as_ref().map_or("", |t| t.expose());
    let reason = |err: &dyn std::fmt::Display| crate::error::scrub(&err.to_string(), &[token]);
    let me = client.get_me().await.map_err(|err| match &err {
        RequestError::InvalidJson { source, .. } => StartupError::UnexpectedAnswer {
            component: Component::Telegram,
            url,
            reason: format!("not a Bot API reply to getMe ({})", reason(source)),
        },
        RequestError::Api(api) => StartupError::Refused { component: Component::Telegram, url, reason: reason(api) },
        other => StartupError::Unreachable { component: Component::Telegram, url, reason: reason(other) },
    })?;
    let status = format!("@{}", me.username());
    Ok((bot, status))
}
