//! Serde for durations written the human way: `"30s"`, `"1h"`, `"500ms"`,
//! or a bare integer meaning seconds (what an environment variable like
//! `COURIER_NATS__ACK_WAIT=30` parses to).

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Seconds(u64),
    Text(String),
}

/// Deserializes a [`Duration`] from `"30s"`-style text or integer seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(secs) => Ok(Duration::from_secs(secs)),
        Raw::Text(text) => humantime::parse_duration(text.trim()).map_err(|err| {
            de::Error::custom(format!("invalid duration {text:?} ({err}); write it like \"30s\", \"5m\" or \"500ms\""))
        }),
    }
}
