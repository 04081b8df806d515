//! Courier's framework core: the injectable components (`Db`, `BotApi`,
//! `ResultStore`) with their real implementations and test doubles, the
//! shaku module and its builder, the task contract and registry, the
//! envelope and result-record codecs, and the one-step executor.
//!
//! **Architecture Invariant:** this crate never touches NATS and never reads
//! configuration itself; it is handed [`settings::Settings`].

pub mod cancel;
pub mod components;
pub mod container;
pub mod context;
pub mod enqueue;
pub mod envelope;
pub mod error;
pub mod execute;
pub mod governor;
pub mod ids;
pub mod outcome;
pub mod progress;
pub mod record;
pub mod redis_conn;
pub mod registry;
pub mod schema;
pub mod shape;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;

pub use components::bot::{BotApi, BotError, ChatGone, Content, Outgoing, SentMessage, TelegramBot};
pub use components::db::{Db, DbError, SqlxDb};
pub use components::result_store::{RedisResultStore, ResultStore, StoreError};
pub use container::{
    AppContainer, AppModule, ComponentCheck, Container, ContainerBuilder, check_components, verify_telegram,
};
pub use context::{DbSession, TaskContext};
pub use enqueue::{EnqueueError, Enqueuer, InMemoryEnqueuer, NoEnqueuer};
pub use envelope::{ARGS_DIGEST_LABEL, CodecError, Envelope, EnvelopeArguments};
pub use error::{Component, StartupError};
pub use execute::{Delivery, Disposition, Execution, Executor, Outcome, ProcessError};
pub use governor::{Admission, FloodObserver, FrozenKey, Governor, GovernorStatus, Lane};
pub use ids::{IdError, new_task_id, validate_labels, validate_task_id};
pub use progress::TaskProgress;
pub use record::{ResultRecord, TaskError, TaskStatus, unix_now};
pub use registry::{HookContext, HookKind, HookResult, Registry, RegistryError};
pub use schema::{ArgsSchema, Field, Shape};
pub use shape::{DecodeLimits, ShapeError};
pub use task::{CronSpec, Failure, ResultExt, RetryPolicy, TaskOptions, TaskRef, TaskResult};

// Re-exported so task crates use the very versions the runtime does.
pub use {inventory, rmpv, shaku, sqlx};

/// What a task file imports: `use di::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Failure, HookContext, HookResult, Lane, ResultExt, RetryPolicy, TaskContext, TaskOptions, TaskResult,
        register_hook, register_task,
    };
    pub use serde::{Deserialize, Serialize};
    pub use std::time::Duration;
}
