//! Values the `producer` command line reads: envelopes from JSON, labels
//! and times from text, dead-letter filters.

use std::time::SystemTime;

use di::Envelope;

use crate::broker::dead_letters::Filter;

/// An envelope for `task` from a `--kwargs` JSON object and `--label`s.
pub fn envelope_from_json(
    task_id: String,
    task: &str,
    kwargs: &str,
    labels: &[(String, String)],
) -> Result<Envelope, String> {
    let json: serde_json::Value = serde_json::from_str(kwargs).map_err(|e| format!("--kwargs is not JSON: {e}"))?;
    let serde_json::Value::Object(map) = json else { return Err("--kwargs must be a JSON object".to_owned()) };
    let mut envelope = Envelope::new(task_id, task, &()).map_err(|e| e.to_string())?;
    for (key, value) in map {
        let value = rmpv::ext::to_value(&value).map_err(|e| format!("--kwargs {key}: {e}"))?;
        envelope.kwargs.insert(key, value);
    }
    for (key, value) in labels {
        envelope.labels.insert(key.clone(), value.as_str().into());
    }
    Ok(envelope)
}

/// A `--label key=value` argument.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{text:?} is not key=value"))
}

/// A point in time: an RFC 3339 timestamp (`2026-11-29T14:00:00Z`), or a
/// duration (`90m`, `2h 30m`) meaning that long ago.
pub fn parse_when(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as 90m"))?;
    SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{text:?} reaches before the epoch"))
}

/// The filter the dead-letter flags describe.
pub fn filter(
    task_name: Option<String>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    reason_contains: Option<String>,
) -> Filter {
    Filter { task_id: None, task_name, since, until, reason_contains }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_timestamps_or_durations_ago() {
        let at = parse_when("2026-11-29T14:00:00Z").unwrap();
        assert_eq!(at, humantime::parse_rfc3339("2026-11-29T14:00:00Z").unwrap());
        let ago = parse_when("1h").unwrap();
        let elapsed = SystemTime::now().duration_since(ago).unwrap().as_secs();
        assert!((3599..=3601).contains(&elapsed), "{elapsed}");
        assert!(parse_when("yesterday-ish").is_err());
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(parse_label("a=b=c"), Ok(("a".to_owned(), "b=c".to_owned())));
        assert!(parse_label("nothing").is_err());
    }
}
