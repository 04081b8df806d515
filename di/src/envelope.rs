//! The task envelope on the wire: a MessagePack map compatible with
//! Taskiq's `TaskiqMessage` (ARCHITECTURE.md, Contracts: wire).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::shape::DecodeLimits;

/// One task invocation as it travels from producer to worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Stable across redeliveries: the task's idempotency key.
    pub task_id: String,
    /// The registered task name.
    pub task_name: String,
    /// Free-form metadata (taskiq labels), copied into the result record.
    #[serde(default)]
    pub labels: BTreeMap<String, rmpv::Value>,
    /// taskiq's label type hints; carried, not interpreted.
    #[serde(default)]
    pub labels_types: Option<BTreeMap<String, rmpv::Value>>,
    /// Positional arguments (what a Python producer's `task.kiq(1, 2)` sends).
    #[serde(default)]
    pub args: Vec<rmpv::Value>,
    /// Arguments by name; Rust producers put the argument struct here.
    #[serde(default)]
    pub kwargs: BTreeMap<String, rmpv::Value>,
}

/// The label a producer puts the [`Envelope::args_digest`] in, to tell a
/// re-send of the same task from another task reusing its id.
pub const ARGS_DIGEST_LABEL: &str = "courier_args_digest";

/// Why bytes are not an envelope, or arguments not the task's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// The longest error message kept from a decoder: serde quotes the value
/// that did not fit, and a hostile one may be a megabyte long; the message
/// goes to the record, the dead letter's header and the log.
const MAX_ERROR_CHARS: usize = 300;

impl CodecError {
    /// `context: err`, cut at [`MAX_ERROR_CHARS`] while it is formatted (a
    /// long value is never copied whole).
    fn capped(context: &str, err: impl std::fmt::Display) -> Self {
        use std::fmt::Write as _;
        let mut out = Capped(format!("{context}: "));
        if write!(out, "{err}").is_err() {
            out.0.push_str("...");
        }
        Self(out.0)
    }
}

/// A `fmt::Write` that refuses (ending the formatting) past [`MAX_ERROR_CHARS`].
struct Capped(String);

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = MAX_ERROR_CHARS.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            return Ok(());
        }
        let cut = (0..=room).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        self.0.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

/// An envelope's arguments alone ([`Envelope::arguments_from_msgpack`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EnvelopeArguments {
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<rmpv::Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: BTreeMap<String, rmpv::Value>,
}

impl Envelope {
    /// An envelope for `task_name` with `args` encoded by field name.
    pub fn new<A: Serialize>(task_id: String, task_name: &str, args: &A) -> Result<Self, CodecError> {
        Ok(Self {
            task_id,
            task_name: task_name.to_owned(),
            labels: BTreeMap::new(),
            labels_types: None,
            args: Vec::new(),
            kwargs: encode_kwargs(args)?,
        })
    }

    /// Encodes the envelope as a MessagePack map.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, CodecError> {
        rmp_serde::to_vec_named(self).map_err(|e| CodecError(format!("cannot encode envelope: {e}")))
    }

    /// Only the arguments of an encoded envelope (positional, then by
    /// name), the rest skipped, if its shape is within `limits` (checked
    /// first, as for [`Envelope::from_msgpack_within`]): cheaper than a
    /// whole decode for a reader that needs no more (the task index).
    pub fn arguments_from_msgpack(bytes: &[u8], limits: &DecodeLimits) -> Result<EnvelopeArguments, CodecError> {
        crate::shape::check(bytes, limits).map_err(|e| CodecError(format!("not a task envelope: {e}")))?;
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::capped("not a task envelope", e))
    }

    /// Decodes an envelope within the default [`DecodeLimits`]; any
    /// malformed input is an error, never a panic.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, CodecError> {
        Self::from_msgpack_within(bytes, &DecodeLimits::DEFAULT)
    }

    /// Decodes an envelope if its shape is within `limits` (depth, values,
    /// estimated memory), checked before anything is decoded.
    pub fn from_msgpack_within(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, CodecError> {
        crate::shape::check(bytes, limits).map_err(|e| CodecError(format!("not a task envelope: {e}")))?;
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::capped("not a task envelope", e))
    }

    /// The task id of bytes that are not a whole envelope, if one can be
    /// read, so the failure can still be recorded under it.
    pub fn salvage_task_id(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            task_id: String,
        }
        // Only the id is kept (the rest is skipped, not decoded): depth is
        // the one bound needed.
        let whole = crate::shape::check(bytes, &DecodeLimits::depth_only(crate::shape::MAX_DEPTH))
            .ok()
            .and_then(|()| rmp_serde::from_slice::<IdOnly>(bytes).ok())
            .map(|v| v.task_id);
        whole.or_else(|| leading_task_id(bytes)).filter(|id| !id.is_empty())
    }

    /// The FNV-1a 64-bit digest (16 hex digits) of the MessagePack of
    /// `[args, kwargs]`: equal arguments give equal digests.
    pub fn args_digest(&self) -> String {
        let kwargs = self.kwargs.iter().map(|(k, v)| (rmpv::Value::from(k.as_str()), v.clone())).collect();
        let value = rmpv::Value::Array(vec![rmpv::Value::Array(self.args.clone()), rmpv::Value::Map(kwargs)]);
        let mut bytes = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut bytes, &value);
        format!("{:016x}", fnv1a64(&bytes))
    }

    /// The task name of bytes that may not be a whole envelope, if one can
    /// be read (to file a dead letter under it).
    pub fn salvage_task_name(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct NameOnly {
            task_name: String,
        }
        crate::shape::check(bytes, &crate::shape::DecodeLimits::depth_only(crate::shape::MAX_DEPTH))
            .ok()
            .and_then(|()| rmp_serde::from_slice::<NameOnly>(bytes).ok())
            .map(|v| v.task_name)
            .filter(|name| !name.is_empty())
    }

    /// The lane its `lane` label names, if it names one.
    pub fn lane(&self) -> Option<crate::Lane> {
        self.labels.get("lane").and_then(rmpv::Value::as_str).and_then(crate::Lane::parse)
    }

    /// Decodes the arguments as `A`: from `kwargs` by field name, or from
    /// positional `args` in field order. Strict: a key `A` has no field for
    /// is an error too, and every error names the field at fault.
    pub fn decode_args<A: DeserializeOwned>(&self) -> Result<A, CodecError> {
        let value = match (self.args.is_empty(), self.kwargs.is_empty()) {
            (true, true) => {
                // No arguments: a struct without fields (or whose fields all
                // have defaults), or `()`. The struct's error names the field.
                return decode_strict(rmpv::Value::Map(Vec::new())).or_else(|missing| {
                    decode_strict(rmpv::Value::Nil).map_err(|_| CodecError::capped("arguments missing", missing.0))
                });
            }
            (true, false) => {
                rmpv::Value::Map(self.kwargs.iter().map(|(k, v)| (rmpv::Value::from(k.as_str()), v.clone())).collect())
            }
            (false, true) => rmpv::Value::Array(self.args.clone()),
            (false, false) => {
                return Err(CodecError(
                    "both positional args and kwargs were sent; Courier tasks take one or the other".to_owned(),
                ));
            }
        };
        decode_strict(value)
    }
}

/// Decodes `value` as `A`, refusing keys `A` has no field for (serde would
/// skip them silently), and naming the field at fault in every error.
fn decode_strict<A: DeserializeOwned>(value: rmpv::Value) -> Result<A, CodecError> {
    const CONTEXT: &str = "arguments do not fit the task";
    let mut unknown: Vec<String> = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        // A few are enough to say what is wrong (a hostile map may hold thousands).
        if unknown.len() < 5 {
            unknown.push(path.to_string());
        }
    };
    let decoded: Result<A, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note));
    match decoded {
        Err(err) => {
            // Serde's message without rmpv's "error while decoding value: ".
            let rmpv::ext::Error::Syntax(inner) = err.inner();
            match err.path().to_string() {
                root if root == "." => Err(CodecError::capped(CONTEXT, inner)),
                path => Err(CodecError::capped(&format!("{CONTEXT}: field `{path}`"), inner)),
            }
        }
        Ok(_) if !unknown.is_empty() => {
            let known = crate::schema::trace::<A>().and_then(|(shape, _)| match shape {
                crate::schema::Shape::Struct(fields) => Some(fields.iter().map(|(name, _)| *name).collect::<Vec<_>>()),
                _ => None,
            });
            let known = known.map_or_else(String::new, |names| format!(" (the task takes: {})", names.join(", ")));
            Err(CodecError::capped(CONTEXT, format_args!("unknown field `{}`{known}", unknown.join("`, `"))))
        }
        Ok(args) => Ok(args),
    }
}

/// FNV-1a, 64 bits: a few lines, stable across versions and platforms.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The task id of a map whose first entry is `task_id` (as Courier and
/// taskiq write it), read without decoding the rest: a truncated envelope
/// still names its task.
fn leading_task_id(bytes: &[u8]) -> Option<String> {
    let mut rd = bytes;
    rmp::decode::read_map_len(&mut rd).ok()?;
    let (key, rest) = rmp::decode::read_str_from_slice(rd).ok()?;
    if key != "task_id" {
        return None;
    }
    let (id, _) = rmp::decode::read_str_from_slice(rest).ok()?;
    Some(id.to_owned())
}

/// Encodes a value as a MessagePack value with field names (a map for a
/// struct), the form kept in `kwargs` and in `return_value`.
pub fn encode_value<T: Serialize>(value: &T) -> Result<rmpv::Value, CodecError> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| CodecError(format!("cannot encode: {e}")))?;
    rmpv::decode::read_value(&mut bytes.as_slice()).map_err(|e| CodecError(format!("cannot re-read: {e}")))
}

/// Decodes a value written by [`encode_value`] (a task's output, say).
pub fn decode_value<T: DeserializeOwned>(value: rmpv::Value) -> Result<T, CodecError> {
    rmpv::ext::from_value(value).map_err(|e| CodecError::capped("value does not fit the type", e))
}

fn encode_kwargs<A: Serialize>(args: &A) -> Result<BTreeMap<String, rmpv::Value>, CodecError> {
    match encode_value(args)? {
        rmpv::Value::Nil => Ok(BTreeMap::new()),
        rmpv::Value::Map(entries) => entries
            .into_iter()
            .map(|(k, v)| match k {
                rmpv::Value::String(s) if s.as_str().is_some() => Ok((s.into_str().unwrap_or_default(), v)),
                other => Err(CodecError(format!("argument names must be strings, found {other}"))),
            })
            .collect(),
        other => Err(CodecError(format!("task arguments must be a struct with named fields, found {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Args {
        chat_id: i64,
        text: String,
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn args_digest_tells_arguments_apart_but_not_ids() {
        let a = Envelope::new("id-1".into(), "t", &Args { chat_id: 7, text: "x".into() }).unwrap();
        let same = Envelope::new("id-2".into(), "t", &Args { chat_id: 7, text: "x".into() }).unwrap();
        let other = Envelope::new("id-1".into(), "t", &Args { chat_id: 8, text: "x".into() }).unwrap();
        assert_eq!(a.args_digest(), same.args_digest());
        assert_ne!(a.args_digest(), other.args_digest());
        assert_eq!(a.args_digest().len(), 16);
    }

    #[test]
    fn round_trip_by_kwargs() {
        let env = Envelope::new("id-1".into(), "t", &Args { chat_id: 7, text: "x".into() }).unwrap();
        let back = Envelope::from_msgpack(&env.to_msgpack().unwrap()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.decode_args::<Args>().unwrap(), Args { chat_id: 7, text: "x".into() });
    }

    #[test]
    fn positional_args_fill_fields_in_order() {
        let mut env = Envelope::new("id".into(), "t", &()).unwrap();
        env.args = vec![rmpv::Value::from(7), rmpv::Value::from("x")];
        assert_eq!(env.decode_args::<Args>().unwrap(), Args { chat_id: 7, text: "x".into() });
    }

    #[test]
    fn wrong_types_are_an_error() {
        let mut env = Envelope::new("id".into(), "t", &()).unwrap();
        env.kwargs.insert("chat_id".into(), rmpv::Value::from("seven"));
        env.kwargs.insert("text".into(), rmpv::Value::from("x"));
        let err = env.decode_args::<Args>().unwrap_err();
        assert!(err.0.contains("invalid type"), "{err}");
    }

    #[test]
    fn missing_unknown_and_mistyped_fields_are_named() {
        let with = |pairs: &[(&str, rmpv::Value)]| {
            let mut env = Envelope::new("id".into(), "t", &()).unwrap();
            env.kwargs.extend(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env.decode_args::<Args>().unwrap_err().0
        };
        let missing = with(&[("chat_id", 7.into())]);
        assert!(missing.contains("missing field `text`"), "{missing}");
        let unknown = with(&[("chat_id", 7.into()), ("text", "x".into()), ("txet", "y".into())]);
        assert!(unknown.contains("unknown field `txet`") && unknown.contains("chat_id, text"), "{unknown}");
        let mistyped = with(&[("chat_id", "seven".into()), ("text", "x".into())]);
        assert!(mistyped.contains("field `chat_id`") && mistyped.contains("invalid type"), "{mistyped}");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        for bytes in [&b""[..], &[0xc1], b"hello world", &[0x85, 0xa7]] {
            assert!(Envelope::from_msgpack(bytes).is_err());
        }
        let good = Envelope::new("id-9".into(), "t", &()).unwrap().to_msgpack().unwrap();
        let truncated = &good[..good.len() - 3];
        assert!(Envelope::from_msgpack(truncated).is_err());
        assert_eq!(Envelope::salvage_task_id(truncated).as_deref(), Some("id-9"));
    }

    #[test]
    fn task_id_is_salvaged_from_a_partial_envelope() {
        let mut map = rmpv::Value::Map(vec![(rmpv::Value::from("task_id"), rmpv::Value::from("abc"))]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &map).unwrap();
        assert!(Envelope::from_msgpack(&bytes).is_err(), "no task_name");
        assert_eq!(Envelope::salvage_task_id(&bytes).as_deref(), Some("abc"));
        map = rmpv::Value::from(5);
        bytes.clear();
        rmpv::encode::write_value(&mut bytes, &map).unwrap();
        assert_eq!(Envelope::salvage_task_id(&bytes), None);
    }

    #[test]
    fn errors_quoting_a_huge_value_are_cut_short() {
        let mut env = Envelope::new("id".into(), "t", &()).unwrap();
        env.kwargs.insert("chat_id".into(), rmpv::Value::from("é".repeat(500_000)));
        env.kwargs.insert("text".into(), rmpv::Value::from("x"));
        let err = env.decode_args::<Args>().unwrap_err();
        assert!(err.0.starts_with("arguments do not fit the task:") && err.0.contains("invalid type"), "{err}");
        assert!(err.0.len() <= MAX_ERROR_CHARS + 3, "{} bytes", err.0.len());
        assert!(err.0.ends_with("..."));
    }

    #[test]
    fn map_claiming_four_billion_entries_does_not_allocate() {
        // map32 header claiming 2^32-1 entries, then almost nothing.
        let bomb = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa7, b't', b'a', b's', b'k', b'_', b'i', b'd'];
        assert!(Envelope::from_msgpack(&bomb).is_err());
        assert_eq!(Envelope::salvage_task_id(&bomb), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut bytes = vec![0x82, 0xa7];
        bytes.extend_from_slice(b"task_id");
        bytes.extend_from_slice(&[0xa1, b'x', 0xa4]);
        bytes.extend_from_slice(b"args");
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        assert!(Envelope::from_msgpack(&bytes).is_err());
        // The task index reads refused messages' arguments: within limits too.
        assert!(Envelope::arguments_from_msgpack(&bytes, &DecodeLimits::DEFAULT).is_err());
    }
}
