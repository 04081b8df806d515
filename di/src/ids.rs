//! Task ids: how Courier makes one, and what a task id and a label may
//! hold, checked before anything is written:
//! ids and labels become Redis keys, NATS headers and log fields, where a
//! line break or a 1 MB id does harm.

use std::collections::BTreeMap;

/// The longest task id, in bytes.
pub const MAX_TASK_ID: usize = 128;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// The longest string label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;

/// Why a task id or a label is refused; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The task id is empty.
    #[error("the task id is empty")]
    EmptyTaskId,
    /// The task id is longer than [`MAX_TASK_ID`] bytes.
    #[error("the task id is {len} bytes long; at most {MAX_TASK_ID} are allowed")]
    TaskIdTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The task id holds a character outside `[A-Za-z0-9-_.:]`.
    #[error("the task id {task_id:?} holds {found:?}; only ASCII letters, digits and - _ . : are allowed")]
    TaskIdCharacter {
        /// The id (escaped when shown).
        task_id: String,
        /// The first character refused.
        found: char,
    },
    /// A label key is empty, too long or holds a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "the label key {key:?} is refused: 1 to {MAX_LABEL_KEY} bytes of ASCII letters, digits and _ . - are allowed"
    )]
    LabelKey {
        /// The key (escaped when shown).
        key: String,
    },
    /// A string label value is longer than [`MAX_LABEL_VALUE`] bytes.
    #[error("the label {key:?} is {len} bytes long; at most {MAX_LABEL_VALUE} are allowed")]
    LabelTooLong {
        /// The label's key.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A string label value holds a control character (a line break, say).
    #[error("the label {key:?} holds the control character {found:?}")]
    LabelCharacter {
        /// The label's key.
        key: String,
        /// The first control character found.
        found: char,
    },
    /// The `lane` label names no lane.
    #[error("the label \"lane\" is {value:?}: one of interactive, transactional, bulk, paid")]
    UnknownLane {
        /// What it said.
        value: String,
    },
}

/// A fresh task id: 32 hex digits, like taskiq's `uuid4().hex`, but a UUID
/// v7: its first 12 digits are the time in Unix ms, then a counter (seeded at
/// random each ms, so ids made in one process sort in the order made) and
/// random bits. Ids made together sort together: the task index's primary
/// key grows at its end instead of at random pages (in `psql`, a row with
/// all three indexes took 5.5-6.2 µs instead of 8.3-11.2; BENCHMARKS.md).
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Checks a task id: 1 to 128 bytes of ASCII letters, digits and `-_.:`
/// (uuid-like ids, follow-ups `<id>.<n>`, replays `<id>:replay:<seq>`,
/// `<campaign>:-100123`).
pub fn validate_task_id(task_id: &str) -> Result<(), IdError> {
    if task_id.is_empty() {
        return Err(IdError::EmptyTaskId);
    }
    if task_id.len() > MAX_TASK_ID {
        return Err(IdError::TaskIdTooLong { len: task_id.len() });
    }
    match task_id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        Some(found) => Err(IdError::TaskIdCharacter { task_id: task_id.to_owned(), found }),
        None => Ok(()),
    }
}

/// Checks labels: keys of 1 to 64 bytes of `[A-Za-z0-9_.-]`; string values
/// of at most 1024 bytes without control characters; other values (numbers,
/// booleans, ...) as they are.
pub fn validate_labels(labels: &BTreeMap<String, rmpv::Value>) -> Result<(), IdError> {
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Err(IdError::LabelKey { key: key.clone() });
        }
        let text = match value {
            rmpv::Value::String(s) => s.as_str().map(str::to_owned).unwrap_or_else(|| s.to_string()),
            _ => continue,
        };
        if text.len() > MAX_LABEL_VALUE {
            return Err(IdError::LabelTooLong { key: key.clone(), len: text.len() });
        }
        if let Some(found) = text.chars().find(|c| c.is_control()) {
            return Err(IdError::LabelCharacter { key: key.clone(), found });
        }
        // A lane nobody knows would be ignored in silence: the task would run
        // in its default lane, not where the sender meant.
        if key == "lane" && crate::Lane::parse(&text).is_none() {
            return Err(IdError::UnknownLane { value: text });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_unique_hex_and_sort_by_time() {
        let (a, b) = (new_task_id(), new_task_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        // The first 12 digits are the Unix ms: an id made later sorts later.
        let ms = |id: &str| u64::from_str_radix(&id[..12], 16).unwrap();
        let now = (crate::unix_now() * 1000.0) as u64;
        assert!(ms(&a).abs_diff(now) < 5_000, "{a} does not start with the time");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_task_id();
        assert!(later > b, "{later} sorts before {b}");
    }

    fn labels(pairs: &[(&str, rmpv::Value)]) -> BTreeMap<String, rmpv::Value> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn ids_that_courier_makes_are_valid() {
        for id in [&crate::new_task_id()[..], "abc.1", "abc:replay:17", "spring:-100123", "a", &"x".repeat(128)] {
            assert_eq!(validate_task_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn bad_ids_are_refused_by_kind() {
        assert_eq!(validate_task_id(""), Err(IdError::EmptyTaskId));
        assert_eq!(validate_task_id(&"x".repeat(129)), Err(IdError::TaskIdTooLong { len: 129 }));
        assert!(matches!(validate_task_id("a\r\nb"), Err(IdError::TaskIdCharacter { found: '\r', .. })));
        assert!(matches!(validate_task_id("a b"), Err(IdError::TaskIdCharacter { found: ' ', .. })));
        assert!(matches!(validate_task_id("a*"), Err(IdError::TaskIdCharacter { found: '*', .. })));
        assert!(matches!(validate_task_id("ü"), Err(IdError::TaskIdCharacter { found: 'ü', .. })));
    }

    #[test]
    fn labels_are_checked_by_key_and_string_value() {
        let fine = labels(&[("parent_task_id", "x.1".into()), ("n", 5.into()), ("flag", true.into())]);
        assert_eq!(validate_labels(&fine), Ok(()));
        let ok_long = labels(&[("k", "é".repeat(512).into())]);
        assert_eq!(validate_labels(&ok_long), Ok(()));
        for key in ["", "a b", "a:b", "a\nb", &"k".repeat(65)] {
            assert!(matches!(validate_labels(&labels(&[(key, 1.into())])), Err(IdError::LabelKey { .. })), "{key:?}");
        }
        let crlf = labels(&[("k", "v\r\nPUB x 0".into())]);
        assert!(matches!(validate_labels(&crlf), Err(IdError::LabelCharacter { found: '\r', .. })));
        let lane = labels(&[("lane", "Bulk".into())]);
        assert!(matches!(validate_labels(&lane), Err(IdError::UnknownLane { .. })), "lanes are lower case");
        assert!(validate_labels(&labels(&[("lane", "bulk".into())])).is_ok());
        let long = labels(&[("k", "v".repeat(1025).into())]);
        assert!(matches!(validate_labels(&long), Err(IdError::LabelTooLong { len: 1025, .. })));
    }
}
