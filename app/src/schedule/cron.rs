//! Cron schedules: declared in a task's registration
//! (`TaskOptions::new().cron("0 9 * * *").tz("Europe/Moscow")`) or in
//! settings (`[default.schedules.<name>]`), kept by every worker's clock.
//!
//! **Invariant:** each tick of a schedule is stored in the task stream at
//! most once, however many workers keep the clock (its task id,
//! `cron:<name>:<tick>`, is the `Nats-Msg-Id`, and clocks that disagree by
//! less than the duplicate window publish the same id), and at least once
//! while one worker runs and the schedule is not paused. Ticks that passed
//! while no worker ran are skipped, or the latest of them is run once at
//! start-up (`missed = "once"`, for a schedule that ran before).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use di::sqlx::AnyPool;
use di::{Envelope, Lane, Registry};
use settings::{MissedTicks, Settings};
use tokio_util::sync::CancellationToken;

use crate::producer::Producer;

/// Label every tick's task carries: the schedule's name.
pub const SCHEDULE_LABEL: &str = "schedule";

/// Why the schedules cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error("schedule {name} ({origin}): cron expression {expression:?} does not parse: {reason}")]
    Expression {
        /// The schedule.
        name: String,
        /// Where it was declared.
        origin: String,
        /// What was written.
        expression: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("schedule {name} ({origin}): unknown time zone {tz:?} (an IANA name, such as Europe/Moscow or UTC)")]
    TimeZone {
        /// The schedule.
        name: String,
        /// Where it was declared.
        origin: String,
        /// What was written.
        tz: String,
    },
    /// The task is not registered.
    #[error("schedule {name} ({origin}): no task {task:?} is registered")]
    UnknownTask {
        /// The schedule.
        name: String,
        /// Where it was declared.
        origin: String,
        /// The task named.
        task: String,
    },
    /// The arguments do not decode as the task's.
    #[error("schedule {name} ({origin}): the arguments do not fit task {task}: {reason}")]
    Arguments {
        /// The schedule.
        name: String,
        /// Where it was declared.
        origin: String,
        /// The task.
        task: String,
        /// The decoder's complaint (it names the field).
        reason: String,
    },
    /// The lane is not one of Courier's.
    #[error("schedule {name} ({origin}): unknown lane {lane:?} (interactive, transactional, bulk or paid)")]
    Lane {
        /// The schedule.
        name: String,
        /// Where it was declared.
        origin: String,
        /// What was written.
        lane: String,
    },
    /// Two schedules share a name.
    #[error("schedule {name} is declared twice: {first} and {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// Where first.
        first: String,
        /// Where again.
        second: String,
    },
}

/// One schedule, parsed and checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name (a task's own schedule is named after the task).
    pub name: String,
    /// The task it enqueues.
    pub task: String,
    /// The expression as written.
    pub expression: String,
    /// The time zone the expression is read in.
    pub tz: Tz,
    /// The arguments (a MessagePack map).
    pub args: rmpv::Value,
    /// The lane, if not the task's own.
    pub lane: Option<Lane>,
    /// What happens to ticks missed while no worker ran.
    pub missed: MissedTicks,
    /// Where it was declared (`tasks/src/x.rs:12`, or `settings`).
    pub origin: String,
    cron: croner::Cron,
}

impl Schedule {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The last tick at or before `at`, if it is after `since`.
    fn last_between(&self, since: DateTime<Utc>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        let tick = self.cron.find_previous_occurrence(&local, true).ok()?.with_timezone(&Utc);
        (tick > since).then_some(tick)
    }

    /// The task id of `tick`: `cron:<name>:<Unix seconds>`.
    pub fn tick_id(&self, tick: DateTime<Utc>) -> String {
        format!("cron:{}:{}", self.name, tick.timestamp())
    }

    /// The envelope of `tick`.
    pub fn envelope(&self, tick: DateTime<Utc>) -> Result<Envelope, di::CodecError> {
        let mut envelope = Envelope::new(self.tick_id(tick), &self.task, &self.args)?;
        envelope.labels.insert(SCHEDULE_LABEL.to_owned(), self.name.as_str().into());
        Ok(envelope)
    }
}

/// Every schedule: the registered tasks' own, then the settings' (a name
/// declared in both is an error). Each is parsed and its arguments checked
/// against its task, so a worker with a bad schedule does not start.
pub fn load(registry: &Registry, settings: &Settings) -> Result<Vec<Schedule>, ScheduleError> {
    let mut schedules: Vec<Schedule> = Vec::new();
    for def in registry.tasks() {
        if let Some(spec) = def.options.cron {
            let origin = format!("{}:{}", def.file, def.line);
            let args = rmpv::Value::Map(Vec::new());
            schedules.push(parse(
                registry,
                def.name(),
                def.name(),
                spec.expression,
                spec.tz,
                args,
                None,
                MissedTicks::Skip,
                origin,
            )?);
        }
    }
    for (name, declared) in &settings.schedules {
        let origin = format!("settings: schedules.{name}");
        if let Some(first) = schedules.iter().find(|s| &s.name == name) {
            return Err(ScheduleError::Duplicate { name: name.clone(), first: first.origin.clone(), second: origin });
        }
        let args = rmpv::ext::to_value(&declared.args).map_err(|e| ScheduleError::Arguments {
            name: name.clone(),
            origin: origin.clone(),
            task: declared.task.clone(),
            reason: e.to_string(),
        })?;
        let lane = match &declared.lane {
            None => None,
            Some(lane) => Some(Lane::parse(lane).ok_or_else(|| ScheduleError::Lane {
                name: name.clone(),
                origin: origin.clone(),
                lane: lane.clone(),
            })?),
        };
        schedules.push(parse(
            registry,
            name,
            &declared.task,
            &declared.cron,
            &declared.tz,
            args,
            lane,
            declared.missed,
            origin,
        )?);
    }
    Ok(schedules)
}

#[allow(clippy::too_many_arguments)]
fn parse(
    registry: &Registry,
    name: &str,
    task: &str,
    expression: &str,
    tz: &str,
    args: rmpv::Value,
    lane: Option<Lane>,
    missed: MissedTicks,
    origin: String,
) -> Result<Schedule, ScheduleError> {
    let cron = croner::Cron::from_str(expression).map_err(|e| ScheduleError::Expression {
        name: name.to_owned(),
        origin: origin.clone(),
        expression: expression.to_owned(),
        reason: e.to_string(),
    })?;
    let tz = Tz::from_str(tz).map_err(|_| ScheduleError::TimeZone {
        name: name.to_owned(),
        origin: origin.clone(),
        tz: tz.to_owned(),
    })?;
    let Some(def) = registry.get(task) else {
        return Err(ScheduleError::UnknownTask { name: name.to_owned(), origin, task: task.to_owned() });
    };
    let schedule = Schedule {
        name: name.to_owned(),
        task: def.name().to_owned(),
        expression: expression.to_owned(),
        tz,
        args,
        lane,
        missed,
        origin,
        cron,
    };
    if let Err(err) = di::validate_task_id(&schedule.tick_id(Utc::now())) {
        return Err(ScheduleError::Arguments {
            name: schedule.name.clone(),
            origin: schedule.origin.clone(),
            task: schedule.task.clone(),
            reason: format!("its tick ids would be refused: {err}"),
        });
    }
    let probe = schedule.envelope(Utc::now()).map_err(|e| e.to_string());
    if let Err(reason) = probe.and_then(|envelope| def.check_args(&envelope).map_err(|e| e.to_string())) {
        return Err(ScheduleError::Arguments {
            name: schedule.name,
            origin: schedule.origin,
            task: schedule.task,
            reason,
        });
    }
    Ok(schedule)
}

/// The clock of every schedule, until `stop`: one task per schedule.
pub async fn keep(schedules: Vec<Schedule>, producer: Producer, db: AnyPool, stop: CancellationToken) {
    let clocks: Vec<_> = schedules
        .into_iter()
        .map(|schedule| tokio::spawn(clock(Arc::new(schedule), producer.clone(), db.clone(), stop.clone())))
        .collect();
    for clock in clocks {
        let _ = clock.await;
    }
}

/// One schedule's clock: sleeps until each tick and publishes it.
async fn clock(schedule: Arc<Schedule>, producer: Producer, db: AnyPool, stop: CancellationToken) {
    if schedule.missed == MissedTicks::Once {
        catch_up(&schedule, &producer, &db).await;
    }
    let mut after = Utc::now();
    loop {
        let Some(tick) = schedule.next_after(after) else {
            tracing::warn!(schedule = %schedule.name, "the schedule has no further tick");
            return;
        };
        let wait = (SystemTime::from(tick)).duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        // A sleep that ends a hair early must not publish before the tick.
        if let Ok(early) = SystemTime::from(tick).duration_since(SystemTime::now()) {
            tokio::time::sleep(early).await;
        }
        let next = schedule.next_after(tick);
        let retry_until = next.map_or(Duration::from_secs(60), |n| (n - tick).to_std().unwrap_or_default());
        fire_until_stored(&schedule, tick, &producer, &db, retry_until, &stop).await;
        after = tick;
    }
}

/// Publishes the latest tick missed since the schedule's last one, if any.
async fn catch_up(schedule: &Schedule, producer: &Producer, db: &AnyPool) {
    let last = match super::state::get(db, &schedule.name).await {
        Ok(state) => state.last_tick,
        Err(err) => {
            tracing::warn!(schedule = %schedule.name, %err, "cannot read the last tick; missed ticks are skipped");
            return;
        }
    };
    let Some(since) = last.and_then(|t| Utc.timestamp_opt(t, 0).single()) else { return };
    if let Some(tick) = schedule.last_between(since, Utc::now()) {
        tracing::info!(schedule = %schedule.name, tick = %tick.to_rfc3339(), "running the latest missed tick once");
        if !fire(schedule, tick, producer, db).await {
            tracing::warn!(schedule = %schedule.name, "the missed tick could not be published");
        }
    }
}

/// [`fire`], again with backoff (250 ms doubling to 5 s) while NATS or
/// Redis refuse it, until `within` has passed (the next tick) or `stop`.
async fn fire_until_stored(
    schedule: &Schedule,
    tick: DateTime<Utc>,
    producer: &Producer,
    db: &AnyPool,
    within: Duration,
    stop: &CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(250);
    while !fire(schedule, tick, producer, db).await {
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!(schedule = %schedule.name, tick = %tick.to_rfc3339(), "tick not published before the next one: skipped");
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Publishes one tick unless the schedule is paused. Every worker does
/// this; the stream keeps the first copy and drops the others. False if
/// the tick could not be published (worth trying again).
async fn fire(schedule: &Schedule, tick: DateTime<Utc>, producer: &Producer, db: &AnyPool) -> bool {
    match super::state::get(db, &schedule.name).await {
        Ok(state) if state.paused => {
            tracing::debug!(schedule = %schedule.name, "paused: tick skipped");
            return true;
        }
        Ok(_) => {}
        // The database is down: publish anyway (a pause is the rarer wish
        // than the job), and say so.
        Err(err) => {
            tracing::warn!(schedule = %schedule.name, %err, "cannot read whether the schedule is paused; publishing")
        }
    }
    let envelope = match schedule.envelope(tick) {
        Ok(envelope) => envelope,
        Err(err) => {
            tracing::error!(schedule = %schedule.name, %err, "cannot encode the tick's task");
            return true;
        }
    };
    match producer.enqueue_envelope(&envelope, schedule.lane).await {
        Ok(published) => {
            tracing::debug!(schedule = %schedule.name, task_id = %envelope.task_id, ?published, "tick published");
            if let Err(err) = super::state::record_tick(db, &schedule.name, tick.timestamp()).await {
                tracing::debug!(schedule = %schedule.name, %err, "cannot record the last tick");
            }
            true
        }
        Err(err) => {
            tracing::warn!(schedule = %schedule.name, task_id = %envelope.task_id, %err, "cannot publish the tick; trying again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(expression: &str, tz: &str) -> Schedule {
        Schedule {
            name: "s".into(),
            task: "noop".into(),
            expression: expression.into(),
            tz: Tz::from_str(tz).unwrap(),
            args: rmpv::Value::Map(Vec::new()),
            lane: None,
            missed: MissedTicks::Skip,
            origin: "test".into(),
            cron: croner::Cron::from_str(expression).unwrap(),
        }
    }

    #[test]
    fn ticks_follow_the_time_zone_across_dst() {
        let s = schedule("30 9 * * *", "Europe/Berlin");
        let winter = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let next = s.next_after(winter).unwrap();
        // 09:30 in Berlin on 29 March 2026 is summer time (+02:00): 07:30 UTC.
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 3, 29, 7, 30, 0).unwrap());
    }

    #[test]
    fn six_fields_are_seconds_first_and_ids_name_the_tick() {
        let s = schedule("*/10 * * * * *", "UTC");
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 3).unwrap();
        let next = s.next_after(at).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 10).unwrap());
        assert_eq!(s.next_after(next).unwrap(), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 20).unwrap());
        assert_eq!(s.tick_id(next), format!("cron:s:{}", next.timestamp()));
        di::validate_task_id(&s.tick_id(next)).unwrap();
    }

    #[test]
    fn the_latest_missed_tick_is_found() {
        let s = schedule("0 * * * *", "UTC");
        let since = Utc.with_ymd_and_hms(2026, 12, 1, 5, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap();
        assert_eq!(s.last_between(since, now), Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()));
        assert_eq!(s.last_between(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap(), now), None);
    }
}
