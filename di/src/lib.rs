//! Courier's framework core: the injectable components (`Db`, `BotApi`,
//! `ResultStore`) with their real implementations and test doubles, the
//! shaku module and its builder, and the result record.
//!
//! **Architecture Invariant:** this crate never touches NATS and never reads
//! configuration itself; it is handed [`settings::Settings`].

pub mod components;
pub mod container;
pub mod error;
pub mod record;
pub mod testing;

pub use components::bot::{BotApi, BotError, SentMessage, TelegramBot};
pub use components::db::{Db, DbError, SqlxDb};
pub use components::result_store::{RedisResultStore, ResultStore, StoreError};
pub use container::{AppContainer, AppModule, ComponentCheck, Container, ContainerBuilder, check_components};
pub use error::{Component, StartupError};
pub use record::{ResultRecord, TaskError, TaskStatus, unix_now};

// Re-exported so tasks and tests use the very versions the components do.
pub use {inventory, shaku, sqlx};
