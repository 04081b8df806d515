//! One finished task as the index's row: its arguments as JSON with the
//! fields a task marks secret masked, its searchable keys, and every text
//! cut to a bound, so a row holds at most about 16 KiB.

use std::collections::BTreeMap;

use di::{EnvelopeArguments, ResultRecord};

use super::{MASK, Row};

/// The longest argument or result JSON kept per row.
const MAX_JSON: usize = 4096;
/// The longest error text kept.
const MAX_ERROR: usize = 2048;
/// The longest task id or task name kept (longer ones are refused
/// messages' recovered ones; valid ids have at most 128 bytes).
const MAX_ID: usize = 256;
/// The longest name and value a key (argument or label) may have to be searchable.
const MAX_KEY_VALUE: usize = 64;
/// Searchable values per task, at most.
const MAX_KEYS: usize = 16;

/// The row of a finished task whose arguments are `decoded` (`None`: they
/// could not be read), `secret` the fields its task marks secret.
pub(super) fn build(
    task_id: String,
    decoded: Option<&EnvelopeArguments>,
    secret: &[&str],
    mut record: ResultRecord,
) -> Row {
    let (arguments, mut keys) = match decoded {
        Some(decoded) => arguments_json(decoded, secret),
        None => ("{}".to_owned(), Vec::new()),
    };
    for (name, value) in &record.labels {
        if keys.len() >= MAX_KEYS {
            break;
        }
        if name.len() > MAX_KEY_VALUE {
            continue;
        }
        // The framework's own labels (the arguments' digest, the lane)
        // are on every task: searchable by task name and status instead.
        if name.starts_with("courier_") || name == "lane" {
            continue;
        }
        if let Some(value) = scalar(value) {
            keys.push((format!("label.{}", without_nul(name)), value));
        }
    }
    // A keyword argument `label.x` and a label `x` of the same value
    // would be one key twice, which would cost the whole batch.
    keys.sort_unstable();
    keys.dedup();
    let result = (!record.return_value.is_nil()).then(|| cut(json(&record.return_value), MAX_JSON));
    let error = record.error.as_ref().map(|e| cut(format!("{}: {}", e.exc_type, e.exc_message.join("; ")), MAX_ERROR));
    let finished = record.finished_at.unwrap_or(record.updated_at);
    let started = record.started_at.filter(|s| *s > 0.0);
    Row {
        // Valid ids hold no NUL and have at most 128 bytes; a refused
        // message's recovered one may not.
        task_id: cut(task_id, MAX_ID),
        task_name: cut(std::mem::take(&mut record.task_name), MAX_ID),
        status: record.status.name(),
        attempt: i64::from(record.attempt),
        labels: cut(serde_json::to_string(&Labels(&record.labels)).unwrap_or_else(|_| "{}".into()), MAX_JSON),
        arguments,
        result,
        error,
        started_at: started.map(ms),
        finished_at: ms(finished),
        elapsed_ms: (record.execution_time * 1000.0) as i64,
        keys,
    }
}

/// An argument as stored: its value, or the mask.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Shown<'a> {
    Value(Json<'a>),
    Masked(&'static str),
}

/// A MessagePack value written as JSON whatever it holds: a map key that is
/// not text is written as its text form (JSON keys are strings), so one odd
/// value never costs the row its other arguments.
struct Json<'a>(&'a rmpv::Value);

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use rmpv::Value;
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => s.serialize_i64(i),
                (None, Some(u)) => s.serialize_u64(u),
                (None, None) => s.serialize_unit(),
            },
            Value::F32(f) => s.serialize_f32(*f),
            Value::F64(f) => s.serialize_f64(*f),
            Value::String(text) => match text.as_str() {
                Some(text) => s.serialize_str(text),
                None => s.serialize_str(&String::from_utf8_lossy(text.as_bytes())),
            },
            Value::Binary(bytes) => s.serialize_bytes(bytes),
            Value::Array(items) => s.collect_seq(items.iter().map(Json)),
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    match key.as_str() {
                        Some(key) => map.serialize_entry(key, &Json(value))?,
                        None => map.serialize_entry(&key.to_string(), &Json(value))?,
                    }
                }
                map.end()
            }
            Value::Ext(kind, bytes) => s.collect_seq([Json(&Value::from(*kind)), Json(&Value::Binary(bytes.clone()))]),
        }
    }
}

/// The labels as stored: each value as text, cut.
struct Labels<'a>(&'a BTreeMap<String, rmpv::Value>);

impl serde::Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The arguments' digest (the producer's check of a reused id, read
        // from the result record) says nothing in history: not stored.
        let shown = self.0.iter().filter(|(name, _)| name.as_str() != di::ARGS_DIGEST_LABEL);
        s.collect_map(shown.map(|(name, value)| (name, Label(value))))
    }
}

struct Label<'a>(&'a rmpv::Value);

impl serde::Serialize for Label<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_str() {
            // Most labels: short text, written as it is.
            Some(text) if text.len() <= MAX_KEY_VALUE * 2 && !text.contains('\0') => s.serialize_str(text),
            _ => s.serialize_str(&cut(json(self.0), MAX_KEY_VALUE * 2)),
        }
    }
}

/// The stored arguments' JSON shape, `{"args": [...], "kwargs": {...}}`,
/// secret fields masked.
struct Stored<'a> {
    decoded: &'a EnvelopeArguments,
    secret: &'a [&'a str],
}

impl<'a> Stored<'a> {
    /// A positional argument (Python producers send the fields in order: a
    /// task with secret fields has them all masked, having no names to match).
    fn positional(&self, value: &'a rmpv::Value) -> Shown<'a> {
        if self.secret.is_empty() { Shown::Value(Json(value)) } else { Shown::Masked(MASK) }
    }

    fn named(&self, name: &str, value: &'a rmpv::Value) -> Shown<'a> {
        if self.secret.contains(&name) { Shown::Masked(MASK) } else { Shown::Value(Json(value)) }
    }
}

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut stored = s.serialize_struct("Stored", 2)?;
        stored.serialize_field("args", &Args(self))?;
        stored.serialize_field("kwargs", &Kwargs(self))?;
        stored.end()
    }
}

struct Args<'s, 'a>(&'s Stored<'a>);

impl serde::Serialize for Args<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.decoded.args.iter().map(|value| self.0.positional(value)))
    }
}

struct Kwargs<'s, 'a>(&'s Stored<'a>);

impl serde::Serialize for Kwargs<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.decoded.kwargs.iter().map(|(name, value)| (name.as_str(), self.0.named(name, value))))
    }
}

/// The arguments as stored (JSON, secret fields masked, cut) and the
/// searchable keyword values. Serialized straight from the decoded values.
fn arguments_json(decoded: &EnvelopeArguments, secret: &[&str]) -> (String, Vec<(String, String)>) {
    let keys = decoded
        .kwargs
        .iter()
        .filter(|(name, _)| !secret.contains(&name.as_str()) && name.len() <= MAX_KEY_VALUE)
        .filter_map(|(name, value)| Some((without_nul(name), scalar(value)?)))
        .take(MAX_KEYS)
        .collect();
    let json = serde_json::to_string(&Stored { decoded, secret }).unwrap_or_else(|_| "{}".to_owned());
    (cut(json, MAX_JSON), keys)
}

/// A short scalar as searchable text (numbers, strings, booleans).
fn scalar(value: &rmpv::Value) -> Option<String> {
    let text = match value {
        rmpv::Value::Integer(n) => n.to_string(),
        rmpv::Value::String(s) => without_nul(s.as_str()?),
        rmpv::Value::Boolean(b) => b.to_string(),
        rmpv::Value::F64(f) => f.to_string(),
        _ => return None,
    };
    (text.len() <= MAX_KEY_VALUE).then_some(text)
}

/// `text` without NUL characters (PostgreSQL's text cannot hold them).
fn without_nul(text: &str) -> String {
    if text.contains('\0') { text.replace('\0', "") } else { text.to_owned() }
}

fn json(value: &rmpv::Value) -> String {
    match value {
        rmpv::Value::String(s) if s.as_str().is_some() => s.as_str().unwrap_or_default().to_owned(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
/// NUL characters are dropped: PostgreSQL's text cannot hold them, and one
/// in an error message would cost its whole batch.
fn cut(text: String, max: usize) -> String {
    if text.contains('\0') {
        return cut(text.replace('\0', ""), max);
    }
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

pub(super) fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use di::{DecodeLimits, Envelope};

    use super::*;

    #[test]
    fn secret_fields_are_masked_and_not_searchable() {
        let envelope = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([
                ("chat_id".into(), rmpv::Value::from(42)),
                ("token".into(), rmpv::Value::from("s3cr3t-value")),
                ("text".into(), rmpv::Value::from("x".repeat(500))),
            ]),
        };
        let (json, keys) = arguments_json(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains(MASK), "{json}");
        assert_eq!(keys, vec![("chat_id".to_owned(), "42".to_owned())], "long values and secrets are not keys");
    }

    #[test]
    fn positional_arguments_of_a_task_with_secrets_are_masked_and_odd_keys_do_not_panic() {
        let mut envelope = Envelope::new("t".into(), "send", &()).unwrap();
        envelope.args = vec![rmpv::Value::from("s3cr3t"), rmpv::Value::Map(vec![(rmpv::Value::Nil, 1.into())])];
        let envelope =
            Envelope::arguments_from_msgpack(&envelope.to_msgpack().unwrap(), &DecodeLimits::DEFAULT).unwrap();
        let (json, _) = arguments_json(&envelope, &["token"]);
        assert!(!json.contains("s3cr3t"), "{json}");
        let (json, _) = arguments_json(&envelope, &[]);
        assert!(json.contains("s3cr3t"), "no secrets declared: shown as sent: {json}");
    }

    #[test]
    fn odd_values_keep_the_other_arguments() {
        let odd = rmpv::Value::Map(vec![(rmpv::Value::Nil, 1.into()), (rmpv::Value::from(7), "x".into())]);
        let decoded = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([("odd".into(), odd), ("chat_id".into(), rmpv::Value::from(42))]),
        };
        let (json, keys) = arguments_json(&decoded, &[]);
        assert_eq!(json, r#"{"args":[],"kwargs":{"chat_id":42,"odd":{"nil":1,"7":"x"}}}"#);
        assert_eq!(keys, vec![("chat_id".to_owned(), "42".to_owned())]);
    }

    #[test]
    fn a_row_is_bounded_and_holds_each_key_once() {
        let arguments = EnvelopeArguments {
            args: vec![],
            kwargs: BTreeMap::from([("label.x".into(), rmpv::Value::from("1")), ("y".repeat(65), 2.into())]),
        };
        let mut record = ResultRecord::new("t", di::TaskStatus::Success, 1);
        record.labels.insert("x".into(), "1".into());
        for i in 0..200 {
            record.labels.insert(format!("many{i}"), "v".repeat(100).into());
        }
        let row = build("i".repeat(1_000), Some(&arguments), &[], record);
        assert_eq!(row.keys.iter().filter(|(name, _)| name == "label.x").count(), 1, "{:?}", row.keys);
        assert!(row.keys.iter().all(|(name, _)| name.len() <= MAX_KEY_VALUE + "label.".len()));
        assert!(row.labels.len() <= MAX_JSON + '…'.len_utf8(), "{}", row.labels.len());
        assert!(row.task_id.len() <= MAX_ID + '…'.len_utf8());
    }

    #[test]
    fn the_arguments_digest_is_not_stored_the_lane_is() {
        let mut record = ResultRecord::new("t", di::TaskStatus::Success, 1);
        record.labels.insert(di::ARGS_DIGEST_LABEL.into(), "c80b581b36bdccad".into());
        record.labels.insert("lane".into(), "transactional".into());
        let row = build("i".into(), None, &[], record);
        assert_eq!(row.labels, r#"{"lane":"transactional"}"#);
        assert!(row.keys.is_empty(), "the framework's labels are not searchable: {:?}", row.keys);
    }

    #[test]
    fn cut_keeps_characters_whole() {
        let text = "é".repeat(100);
        let short = cut(text, 11);
        assert!(short.len() <= 11 + '…'.len_utf8(), "{short}");
        assert!(short.ends_with('…'));
        assert_eq!(cut("abc".into(), 10), "abc");
        assert_eq!(cut("a\0b".into(), 10), "ab", "no NUL reaches PostgreSQL");
    }
}
