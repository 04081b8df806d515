//! Courier's task plug-ins: every `.rs` file beside this one is a task (or
//! hook) module, found by `automod` and registered by `register_task!`.
//! Adding a task is adding a file; nothing else is edited.
//!
//! Binaries and tests that run tasks must name this crate
//! (`use tasks as _;`), or the linker drops the registrations.

automod::dir!(pub "src");

/// The schema the shipped tasks need, embedded at compile time; the worker
/// runs it at start-up. Portable SQL for PostgreSQL and SQLite.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
