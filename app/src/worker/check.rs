//! `worker --check`: the task registry and every component, one line each,
//! and the exit code they add up to.

use std::fmt;

use di::{Registry, RegistryError};
use serde::Serialize;
use settings::Settings;

use crate::broker;
use crate::cli::Exit;

/// The outcome for one component.
#[derive(Debug, Serialize)]
pub struct CheckLine {
    /// `tasks`, `nats`, `database`, `redis` or `telegram`.
    pub component: String,
    /// Where it was looked for (redacted).
    pub target: String,
    /// Whether it is usable.
    pub ok: bool,
    /// A short description when usable, the problem otherwise.
    pub detail: String,
    /// The exit code this line alone would give.
    #[serde(skip)]
    pub exit: Exit,
}

impl CheckLine {
    fn new(component: impl fmt::Display, target: String, outcome: Result<String, (Exit, String)>) -> Self {
        let component = component.to_string();
        match outcome {
            Ok(detail) => Self { component, target, ok: true, detail, exit: Exit::Ok },
            Err((exit, detail)) => Self { component, target, ok: false, detail, exit },
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok {
            write!(f, "ok    {:<9} {} ({})", self.component, self.target, self.detail)
        } else {
            write!(f, "FAIL  {:<9} {}: {}", self.component, self.target, self.detail)
        }
    }
}

/// The exit code of a whole check: the most serious line's (usage and
/// configuration before unavailable components).
pub fn exit(lines: &[CheckLine]) -> Exit {
    let failed = lines.iter().filter(|line| !line.ok).map(|line| line.exit);
    failed.min_by_key(|exit| if *exit == Exit::Usage { 0 } else { exit.code() }).unwrap_or(Exit::Ok)
}

/// The registry's line: how many tasks, or the duplicate names.
pub fn registry_line(registry: Result<Registry, RegistryError>) -> CheckLine {
    let outcome = match registry {
        Ok(registry) => Ok(format!("{} registered: {}", registry.names().len(), registry.names().join(", "))),
        Err(err) => Err((Exit::Usage, err.to_string())),
    };
    CheckLine::new("tasks", "this binary".to_owned(), outcome)
}

/// The schedules' line: how many, or the first that is wrong.
pub fn schedules_line(settings: &Settings) -> CheckLine {
    let outcome = Registry::from_inventory().map_err(|err| (Exit::Usage, err.to_string())).and_then(|registry| {
        match crate::schedule::cron::load(&registry, settings) {
            Ok(schedules) if schedules.is_empty() => Ok("none".to_owned()),
            Ok(schedules) => {
                let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
                Ok(format!("{} declared: {}", names.len(), names.join(", ")))
            }
            Err(err) => Err((Exit::Usage, err.to_string())),
        }
    });
    CheckLine::new("schedules", "tasks and settings".to_owned(), outcome)
}

/// Checks the registry, NATS and every container component, independently.
pub async fn check_all(settings: &Settings) -> Vec<CheckLine> {
    let nats = async {
        let outcome = match broker::connect(&settings.nats, "courier-check").await {
            Ok(client) => {
                let js = broker::check_jetstream(&client, &settings.nats).await;
                let _ = client.drain().await;
                js.map(|()| "JetStream enabled".to_owned()).map_err(|err| (Exit::from(&err), err.to_string()))
            }
            Err(err) => Err((Exit::from(&err), err.to_string())),
        };
        CheckLine::new("nats", settings.nats.url.redacted(), outcome)
    };
    let (nats, components) = tokio::join!(nats, di::check_components(settings));
    let mut lines = vec![registry_line(Registry::from_inventory()), schedules_line(settings), nats];
    lines.extend(components.into_iter().map(|c| {
        let outcome = c.outcome.map_err(|err| (Exit::from(&err), err.to_string()));
        CheckLine::new(c.component, c.target, outcome)
    }));
    lines
}
