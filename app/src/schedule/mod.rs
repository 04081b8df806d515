//! Time: delayed tasks (`enqueue_in`, `enqueue_at`) and cron schedules,
//! with no scheduler process of their own: every worker does its share.
//!
//! **Delayed tasks** live in a file-backed NATS stream, `<stream>_DELAYED`
//! (subject `<subject>_delayed`), from the producer's publish until they are
//! due; a Redis sorted set indexes them by due time. Each worker runs
//! [`delayed::DelayedMover`]:
//! - the *indexer* reads the delayed stream through one durable consumer
//!   and adds each message (its stream sequence, scored by its due time) to
//!   the index, acking only once Redis has it;
//! - the *mover* claims what is due with one Lua script (the entries' scores
//!   move a lease ahead, so a mover that dies mid-move leaves them to the
//!   next), publishes each to its lane's subject with the task id as
//!   `Nats-Msg-Id` (a second move of the same task is a duplicate the stream
//!   drops), deletes it from the delayed stream and from the index.
//!
//! The index is rebuildable: the script answers "rebuild" when the index's
//! marker key is gone (Redis restarted or was flushed), and one worker then
//! sets the marker and re-creates the indexer consumer, which delivers every
//! message still in the delayed stream again. So neither a NATS restart (the
//! stream is on disk) nor a Redis restart loses a delayed task, and a
//! pending one costs no worker memory.
//!
//! **Cron schedules** ([`cron`]) are kept by every worker's clock; each tick
//! is published with the task id `cron:<schedule>:<tick, Unix seconds>`, so
//! the stream keeps one message per tick however many workers publish it.
//! Whether a schedule is paused, and its last tick, live in the database
//! ([`state`]).

pub mod cli;
pub mod cron;
pub mod delayed;
mod index;
pub mod state;

use settings::NatsSettings;

/// Header of a delayed message: when it is due, Unix milliseconds.
pub const DUE_HEADER: &str = "Courier-Due";
/// Header of a delayed message: the lane subject it is moved to.
pub const TARGET_HEADER: &str = "Courier-Target";
/// Header of a delayed message: the message id of its move (when it is not
/// the task id: a postponed retry of a task the stream has seen).
pub const MOVE_ID_HEADER: &str = "Courier-Move-Id";
/// Header of a moved message: the message id it had before it was
/// postponed (a campaign's gate reads it).
pub const ORIGIN_ID_HEADER: &str = "Courier-Origin-Msg-Id";

/// The stream delayed tasks wait in.
pub fn delayed_stream(settings: &NatsSettings) -> String {
    format!("{}_DELAYED", settings.stream)
}

/// The subject of the delayed stream (outside the task stream's subjects,
/// which a stream cannot share).
pub fn delayed_subject(settings: &NatsSettings) -> String {
    format!("{}_delayed", settings.subject)
}

/// The durable consumer that indexes the delayed stream.
pub fn index_durable(settings: &NatsSettings) -> String {
    format!("{}_delayed_index", settings.durable)
}

/// Unix milliseconds of `time` (0 before the epoch).
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
