//! What the database keeps of each cron schedule: paused or not, and the
//! last tick published (table `courier_schedules`, a framework migration).

use std::collections::BTreeMap;

use di::sqlx::{self, AnyPool, Row};

/// A schedule's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScheduleState {
    /// No tick is published while it is paused.
    pub paused: bool,
    /// The last tick published, Unix seconds.
    pub last_tick: Option<i64>,
}

fn now() -> i64 {
    i64::try_from(crate::schedule::unix_ms(std::time::SystemTime::now()) / 1000).unwrap_or(i64::MAX)
}

/// The row of `name` (the default if it has none).
pub async fn get(pool: &AnyPool, name: &str) -> Result<ScheduleState, sqlx::Error> {
    let row = sqlx::query("SELECT paused, last_tick FROM courier_schedules WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => ScheduleState { paused: row.try_get::<i64, _>(0)? != 0, last_tick: row.try_get(1)? },
        None => ScheduleState::default(),
    })
}

/// Every row, by name.
pub async fn all(pool: &AnyPool) -> Result<BTreeMap<String, ScheduleState>, sqlx::Error> {
    let rows = sqlx::query("SELECT name, paused, last_tick FROM courier_schedules").fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok((row.try_get(0)?, ScheduleState { paused: row.try_get::<i64, _>(1)? != 0, last_tick: row.try_get(2)? }))
        })
        .collect()
}

/// Pauses or resumes `name`. A resume also records now as the last tick,
/// so the ticks skipped while paused are not run as "missed" by a worker
/// that starts later (`missed = "once"`): a resumed schedule goes on from
/// its next tick.
pub async fn set_paused(pool: &AnyPool, name: &str, paused: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO courier_schedules (name, paused, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(i64::from(paused))
    .bind(now())
    .execute(pool)
    .await?;
    if !paused {
        record_tick(pool, name, now()).await?;
    }
    Ok(())
}

/// Records that `tick` was published (a later tick already recorded stays).
pub async fn record_tick(pool: &AnyPool, name: &str, tick: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO courier_schedules (name, paused, last_tick, updated_at) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, updated_at = excluded.updated_at \
         WHERE courier_schedules.last_tick IS NULL OR courier_schedules.last_tick < excluded.last_tick",
    )
    .bind(name)
    .bind(tick)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(())
}
