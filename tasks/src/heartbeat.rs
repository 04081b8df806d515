//! Writes a row saying it ran: the shape of a cron job, and what the
//! scheduling tests count. Schedule it in settings:
//!
//! ```toml
//! [production.schedules.heartbeat]
//! task = "heartbeat"
//! cron = "*/5 * * * *"          # every five minutes
//! tz = "Europe/Moscow"
//! args = { note = "still here" }
//! ```
//!
//! One row per task id (`heartbeats`): a redelivered run bumps `runs`
//! instead of adding a row, so a tick that ran twice shows as `runs = 2`.

use di::prelude::*;

/// What to write.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {
    /// A note stored with the row.
    #[serde(default)]
    pub note: String,
}

/// Records the run; returns when it ran (Unix milliseconds, this worker's clock).
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<i64> {
    let ran_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut db = ctx.db().await?;
    di::sqlx::query(
        "INSERT INTO heartbeats (task_id, ran_at_ms, note, runs) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (task_id) DO UPDATE SET runs = heartbeats.runs + 1",
    )
    .bind(ctx.task_id())
    .bind(ran_at_ms)
    .bind(&args.note)
    .execute(&mut *db)
    .await?;
    Ok(ran_at_ms)
}

register_task!(run: Args => i64);
