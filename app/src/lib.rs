//! Courier's application crate: the broker connection, the worker runtime,
//! the task lifecycle, and the pieces the `worker`, `producer` and `bot` binaries share.

pub mod bench;
pub mod board;
pub mod bot;
pub mod broker;
pub mod campaign;
pub mod cli;
pub mod http;
pub mod index;
pub mod producer;
pub mod schedule;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use producer::{CancelFilter, Producer, ProducerError, TaskHandle, TaskState};
pub use worker::{WorkerError, run_worker};
