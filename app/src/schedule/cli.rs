//! `producer schedules ...`: list the cron schedules, pause and resume them.

use chrono::Utc;
use clap::Subcommand;
use di::Registry;
use serde::Serialize;
use settings::Settings;

use super::cron::{self, Schedule};
use super::state::{self, ScheduleState};
use crate::cli::Exit;

/// The cron schedules (declared by tasks and in settings).
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Lists every schedule with its next tick, whether it is paused and its
    /// last tick.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Pauses a schedule: no worker publishes its ticks until it is resumed
    /// (the ticks in between are skipped).
    Pause {
        /// The schedule's name (`producer schedules list`).
        name: String,
    },
    /// Resumes a paused schedule from its next tick.
    Resume {
        /// The schedule's name.
        name: String,
    },
}

/// One schedule as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// The task it enqueues.
    pub task: String,
    /// The expression.
    pub cron: String,
    /// The time zone.
    pub tz: String,
    /// The next tick (RFC 3339, UTC), shown even while paused.
    pub next: Option<String>,
    /// Whether it is paused.
    pub paused: bool,
    /// The last tick published (RFC 3339, UTC).
    pub last: Option<String>,
    /// Missed ticks policy.
    pub missed: &'static str,
    /// Where it was declared.
    pub origin: String,
}

/// Runs a `producer schedules` command; an error carries its exit code.
pub async fn run(settings: &Settings, command: SchedulesCommand) -> Result<(), (Exit, String)> {
    let registry = Registry::from_inventory().map_err(|e| (Exit::Usage, e.to_string()))?;
    let schedules = cron::load(&registry, settings).map_err(|e| (Exit::Usage, e.to_string()))?;
    let db = di::SqlxDb::connect(&settings.database).await.map_err(|e| (Exit::Unavailable, e.to_string()))?;
    let pool = di::Db::pool(&db).clone();
    crate::campaign::migrator().run(&pool).await.map_err(|e| (Exit::Failed, format!("database schema: {e}")))?;
    let unavailable = |e: di::sqlx::Error| (Exit::Unavailable, format!("database: {e}"));
    match command {
        SchedulesCommand::List { json } => {
            let states = state::all(&pool).await.map_err(unavailable)?;
            let listed: Vec<Listed> =
                schedules.iter().map(|s| describe(s, states.get(&s.name).copied().unwrap_or_default())).collect();
            if json {
                crate::cli::output::print_json(&listed);
            } else {
                crate::cli::output::print_text(&render(&listed));
            }
            Ok(())
        }
        SchedulesCommand::Pause { name } | SchedulesCommand::Resume { name }
            if !schedules.iter().any(|s| s.name == name) =>
        {
            let known: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            Err((Exit::NotFound, format!("no schedule {name:?}; the schedules are: {known}")))
        }
        SchedulesCommand::Pause { name } => {
            state::set_paused(&pool, &name, true).await.map_err(unavailable)?;
            eprintln!("schedule {name}: paused (no tick is published until it is resumed)");
            Ok(())
        }
        SchedulesCommand::Resume { name } => {
            state::set_paused(&pool, &name, false).await.map_err(unavailable)?;
            eprintln!("schedule {name}: resumed");
            Ok(())
        }
    }
}

pub(crate) fn describe(schedule: &Schedule, state: ScheduleState) -> Listed {
    let rfc3339 = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Listed {
        name: schedule.name.clone(),
        task: schedule.task.clone(),
        cron: schedule.expression.clone(),
        tz: schedule.tz.name().to_owned(),
        next: schedule.next_after(Utc::now()).map(rfc3339),
        paused: state.paused,
        last: state.last_tick.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(rfc3339),
        missed: schedule.missed.name(),
        origin: schedule.origin.clone(),
    }
}

/// A table for people.
pub fn render(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "no schedules (declare one with TaskOptions::cron in a task, or [<profile>.schedules.<name>] in \
                settings)\n"
            .to_owned();
    }
    let mut out = String::new();
    for s in listed {
        let state = if s.paused { "paused" } else { "active" };
        out.push_str(&format!(
            "{}  {}  task {}  \"{}\" {}  next {}  last {}  missed: {}  ({})\n",
            s.name,
            state,
            s.task,
            s.cron,
            s.tz,
            s.next.as_deref().unwrap_or("never"),
            s.last.as_deref().unwrap_or("never"),
            s.missed,
            s.origin
        ));
    }
    out
}
