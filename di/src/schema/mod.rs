//! What a task's arguments look like, read from its `Args` type itself:
//! the field names, a type for each, and which may be left out and with
//! what default. `producer tasks` lists it; argument errors name the fields.
//!
//! Serde has no reflection, so this asks `Args::deserialize` to read from a
//! tracing deserializer that notes what each `deserialize_*` call asks for
//! and answers with a sample (0, "", the first variant...). The sample is
//! then encoded and decoded again with each field left out: a field whose
//! absence still decodes has a default, which the encoding shows.
//! (`serde-reflection` does the tracing too, but refuses `deserialize_any`,
//! which an `rmpv::Value` field asks for, and adds four crates.)

mod trace;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use trace::Tracer;

/// A type as the tracer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `bool`.
    Bool,
    /// An integer type, named as in Rust (`i64`, `u32`...).
    Int(&'static str),
    /// `f32` or `f64`.
    Float,
    /// A string (or `char`).
    Str,
    /// Bytes.
    Bytes,
    /// `()` or a unit struct: nothing.
    Unit,
    /// `Option<T>`: the value or null.
    Option(Box<Shape>),
    /// A list of one type.
    Seq(Box<Shape>),
    /// A fixed list (a tuple).
    Tuple(Vec<Shape>),
    /// A map with string (or other) keys.
    Map(Box<Shape>, Box<Shape>),
    /// A struct with named fields.
    Struct(Vec<(&'static str, Shape)>),
    /// An enum: one of the variants (by name).
    Enum(&'static [&'static str]),
    /// Anything (`rmpv::Value`, `serde_json::Value`, untagged enums).
    Any,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool => f.write_str("bool"),
            Self::Int(name) => f.write_str(name),
            Self::Float => f.write_str("number"),
            Self::Str => f.write_str("string"),
            Self::Bytes => f.write_str("bytes"),
            Self::Unit => f.write_str("null"),
            Self::Option(inner) => write!(f, "{inner} or null"),
            Self::Seq(inner) => write!(f, "list of {inner}"),
            Self::Tuple(items) => {
                let items: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Self::Map(_, value) => write!(f, "map of {value}"),
            Self::Struct(fields) => {
                let fields: Vec<String> = fields.iter().map(|(name, shape)| format!("{name}: {shape}")).collect();
                write!(f, "{{{}}}", fields.join(", "))
            }
            Self::Enum(variants) => write!(f, "one of {}", variants.join(", ")),
            Self::Any => f.write_str("any"),
        }
    }
}

/// One argument of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its name in `kwargs`.
    pub name: &'static str,
    /// Its type.
    pub shape: Shape,
    /// Whether it must be given.
    pub required: bool,
    /// What it is when left out (`nil` for an `Option`), if it may be.
    pub default: Option<rmpv::Value>,
}

/// A task's arguments: named fields, or a type the tracer could not read
/// (a tuple, or one that refuses every sample).
#[derive(Debug, Clone, PartialEq)]
pub enum ArgsSchema {
    /// A struct: its fields in declaration order (none for `struct Args {}`).
    Fields(Vec<Field>),
    /// Not a struct with named fields: what it is instead.
    Other(Shape),
    /// The tracer could not read it.
    Unknown,
}

impl ArgsSchema {
    /// The field names, if it has named fields.
    pub fn field_names(&self) -> Option<Vec<&'static str>> {
        match self {
            Self::Fields(fields) => Some(fields.iter().map(|f| f.name).collect()),
            _ => None,
        }
    }
}

/// The schema of `A`, with defaults (what the registry keeps per task).
pub fn of<A: Serialize + DeserializeOwned>() -> ArgsSchema {
    let Some((shape, sample)) = trace::<A>() else { return ArgsSchema::Unknown };
    let Shape::Struct(fields) = shape else { return ArgsSchema::Other(shape) };
    let sample = crate::envelope::encode_value(&sample).ok().and_then(|v| match v {
        rmpv::Value::Map(entries) => Some(entries),
        _ => None,
    });
    let fields = fields
        .into_iter()
        .map(|(name, shape)| {
            let default = sample.as_ref().and_then(|entries| default_of::<A>(entries, name));
            Field { name, shape, required: default.is_none(), default }
        })
        .collect();
    ArgsSchema::Fields(fields)
}

/// The shape of `A` and a sample value of it, or `None` if `A` refuses
/// every sample the tracer offers.
pub fn trace<A: DeserializeOwned>() -> Option<(Shape, A)> {
    let mut shape = Shape::Any;
    let sample = A::deserialize(Tracer { shape: &mut shape, depth: 0 }).ok()?;
    Some((shape, sample))
}

/// The value `name` takes when left out of `sample`, if `A` allows that.
fn default_of<A: Serialize + DeserializeOwned>(
    sample: &[(rmpv::Value, rmpv::Value)],
    name: &str,
) -> Option<rmpv::Value> {
    let without: Vec<_> = sample.iter().filter(|(key, _)| key.as_str() != Some(name)).cloned().collect();
    // Through bytes: rmp-serde reads back its own enum encoding, which
    // `rmpv::ext::from_value` does not.
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &rmpv::Value::Map(without)).ok()?;
    let decoded: A = rmp_serde::from_slice(&bytes).ok()?;
    match crate::envelope::encode_value(&decoded).ok()? {
        rmpv::Value::Map(entries) => {
            // A field skipped when serialized still has a default: unknown.
            let found = entries.into_iter().find(|(key, _)| key.as_str() == Some(name)).map(|(_, value)| value);
            Some(found.unwrap_or(rmpv::Value::Nil))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    enum Mode {
        Fast,
        Slow { by: u32 },
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Inner {
        a: bool,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Args {
        chat_id: i64,
        text: String,
        #[serde(default)]
        retries: u8,
        #[serde(default = "seven")]
        weight: f64,
        note: Option<String>,
        tags: Vec<String>,
        extra: BTreeMap<String, u64>,
        mode: Mode,
        inner: Inner,
        raw: rmpv::Value,
    }

    fn seven() -> f64 {
        7.0
    }

    #[test]
    fn fields_types_and_defaults_are_read_from_the_type() {
        let ArgsSchema::Fields(fields) = of::<Args>() else { panic!("{:?}", of::<Args>()) };
        let row = |name: &str| fields.iter().find(|f| f.name == name).unwrap();
        let described: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.name, f.shape)).collect();
        assert_eq!(
            described,
            [
                "chat_id: i64",
                "text: string",
                "retries: u8",
                "weight: number",
                "note: string or null",
                "tags: list of string",
                "extra: map of u64",
                "mode: one of Fast, Slow",
                "inner: {a: bool}",
                "raw: any",
            ]
        );
        assert!(row("chat_id").required && row("text").required && row("mode").required);
        assert_eq!(row("retries").default, Some(rmpv::Value::from(0)));
        assert_eq!(row("weight").default, Some(rmpv::Value::F64(7.0)));
        assert_eq!(row("note").default, Some(rmpv::Value::Nil), "an Option may be left out");
        assert!(!row("note").required);
    }

    #[test]
    fn no_arguments_and_non_structs() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Empty {}
        assert_eq!(of::<Empty>(), ArgsSchema::Fields(Vec::new()));
        assert_eq!(of::<()>(), ArgsSchema::Other(Shape::Unit));
        assert_eq!(of::<(i32, String)>(), ArgsSchema::Other(Shape::Tuple(vec![Shape::Int("i32"), Shape::Str])));
    }

    #[test]
    fn a_recursive_type_is_cut_off_not_followed_forever() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Node {
            next: Box<Node>,
        }
        assert_eq!(of::<Node>(), ArgsSchema::Unknown);
    }
}
