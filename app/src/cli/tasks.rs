//! The registered tasks as a user sees them: name, lane, attempts, timeout
//! and each argument's type and default (`producer tasks`,
//! `worker --list-tasks --json`).

use std::fmt::Write as _;

use di::{ArgsSchema, Registry};
use serde::Serialize;

/// One task, ready to print or to serialize.
#[derive(Debug, Serialize)]
pub struct TaskInfo {
    /// The registered name (what `send` takes).
    pub name: &'static str,
    /// Its lane unless an enqueue says otherwise.
    pub lane: &'static str,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The time limit of one attempt, in seconds.
    pub timeout_seconds: f64,
    /// Where it is registered.
    pub file: &'static str,
    /// Its arguments by name (`kwargs`); `None` when they are not a struct
    /// with named fields, which `arguments` then describes.
    pub fields: Option<Vec<FieldInfo>>,
    /// `fields` in one phrase, or what the arguments are instead.
    pub arguments: String,
}

/// One argument.
#[derive(Debug, Serialize)]
pub struct FieldInfo {
    /// Its name in `--kwargs`.
    pub name: &'static str,
    /// Its type (`i64`, `string`, `list of u64`, `string or null`...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether `--kwargs` must give it.
    pub required: bool,
    /// Its value when left out, if it may be.
    pub default: Option<serde_json::Value>,
}

/// Every task of `registry`, sorted by name.
pub fn describe(registry: &Registry) -> Vec<TaskInfo> {
    registry
        .tasks()
        .map(|def| {
            let (fields, arguments) = match def.schema() {
                ArgsSchema::Fields(fields) if fields.is_empty() => (Some(Vec::new()), "none".to_owned()),
                ArgsSchema::Fields(fields) => {
                    let fields: Vec<FieldInfo> = fields
                        .into_iter()
                        .map(|f| FieldInfo {
                            name: f.name,
                            ty: f.shape.to_string(),
                            required: f.required,
                            default: f.default.and_then(|v| serde_json::to_value(v).ok()),
                        })
                        .collect();
                    let phrase = fields.iter().map(|f| format!("{}: {}", f.name, f.ty)).collect::<Vec<_>>().join(", ");
                    (Some(fields), phrase)
                }
                ArgsSchema::Other(di::Shape::Unit) => (None, "none".to_owned()),
                ArgsSchema::Other(shape) => (None, format!("positional: {shape}")),
                ArgsSchema::Unknown => (None, "not described (its type refuses sample values)".to_owned()),
            };
            TaskInfo {
                name: def.name(),
                lane: def.options.lane.name(),
                max_attempts: def.options.retry.max_attempts,
                timeout_seconds: def.options.timeout.as_secs_f64(),
                file: def.file,
                fields,
                arguments,
            }
        })
        .collect()
}

/// The listing for people: a line per task, then a line per argument.
pub fn render(tasks: &[TaskInfo]) -> String {
    let mut out = String::new();
    for task in tasks {
        let timeout = humantime::format_duration(std::time::Duration::from_secs_f64(task.timeout_seconds));
        let attempts =
            if task.max_attempts == 1 { "1 attempt".to_owned() } else { format!("{} attempts", task.max_attempts) };
        let _ = writeln!(out, "{}  ({} lane, {attempts}, timeout {timeout})", task.name, task.lane);
        match &task.fields {
            Some(fields) if !fields.is_empty() => {
                let width = fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
                let type_width = fields.iter().map(|f| f.ty.len()).max().unwrap_or(0);
                for f in fields {
                    let need = match (&f.default, f.required) {
                        (_, true) => "required".to_owned(),
                        (Some(value), false) => format!("default {value}"),
                        (None, false) => "optional".to_owned(),
                    };
                    let _ = writeln!(out, "    {:<width$}  {:<type_width$}  {need}", f.name, f.ty);
                }
            }
            _ => {
                let _ = writeln!(out, "    arguments: {}", task.arguments);
            }
        }
    }
    out
}
