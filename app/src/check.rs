//! `worker --check`: connect to every component and report each on one line.

use std::fmt;

use settings::Settings;

use crate::broker;

/// The outcome for one component.
#[derive(Debug)]
pub struct CheckLine {
    /// `nats`, `database`, `redis` or `telegram`.
    pub component: String,
    /// Where it was looked for (redacted).
    pub target: String,
    /// A short description when reachable, the error otherwise.
    pub outcome: Result<String, String>,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(what) => write!(f, "ok    {:<9} {} ({what})", self.component, self.target),
            Err(why) => write!(f, "FAIL  {:<9} {}: {why}", self.component, self.target),
        }
    }
}

/// Checks NATS and every container component, independently.
pub async fn check_all(settings: &Settings) -> Vec<CheckLine> {
    let nats = async {
        let outcome = match broker::connect(&settings.nats, "courier-check").await {
            Ok(client) => {
                let js = broker::check_jetstream(&client, &settings.nats).await;
                let _ = client.drain().await;
                js.map(|()| "JetStream enabled".to_owned()).map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        CheckLine { component: "nats".to_owned(), target: settings.nats.url.redacted(), outcome }
    };
    let (nats, components) = tokio::join!(nats, di::check_components(settings));
    let mut lines = vec![nats];
    lines.extend(components.into_iter().map(|c| CheckLine {
        component: c.component.to_string(),
        target: c.target,
        outcome: c.outcome.map_err(|err| err.to_string()),
    }));
    lines
}
