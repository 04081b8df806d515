//! Courier's application crate: the broker connection, the worker runtime,
//! the task lifecycle, and the pieces the `worker`, `producer` and `bot` binaries share.

pub mod advisories;
pub mod bench;
pub mod board;
pub mod bot;
pub mod broker;
pub mod campaign;
pub mod check;
pub mod cli;
pub mod dead_letters;
pub mod flood_status;
pub mod http;
pub mod index;
pub mod lifecycle;
pub mod metrics;
pub mod presence;
pub mod producer;
pub mod publish;
pub mod pull;
pub mod runtime;
pub mod schedule;
pub mod serve;
pub mod serve_core;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use producer::{CancelFilter, Producer, ProducerError, TaskHandle};
pub use worker::{WorkerError, run_worker};
