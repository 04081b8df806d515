//! Courier's application crate: the broker connection, the worker runtime,
//! the task lifecycle, and the pieces the `worker`, `producer` and `bot` binaries share.

pub mod broker;
pub mod check;
pub mod lifecycle;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

pub use worker::{WorkerError, run_worker};
