//! The registry: every task file registered once, names unique, and the
//! duplicate-name error naming both places.

use std::collections::BTreeMap;

use di::registry::{RunError, TaskDef, TaskFuture};
use di::{Envelope, Registry, RegistryError, TaskContext, TaskOptions};
use tasks as _;

#[test]
fn every_task_file_is_registered_exactly_once() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks/src");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".rs") && f != "lib.rs")
        .collect();
    files.sort();
    assert!(!files.is_empty());

    let mut registered: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for def in inventory_defs().filter(|d| d.file.starts_with("tasks/src/")) {
        registered.entry(def.file.trim_start_matches("tasks/src/").to_owned()).or_default().push(def.name());
    }
    for file in &files {
        let names = registered.get(file).unwrap_or_else(|| panic!("tasks/src/{file} registers no task"));
        assert_eq!(names.len(), 1, "tasks/src/{file} registers {names:?}");
        assert_eq!(format!("{}.rs", names[0]), *file, "a task is named after its file");
    }
    assert_eq!(registered.len(), files.len(), "registrations from files that do not exist: {registered:?}");
    let registry = Registry::from_inventory().expect("no duplicate names");
    for file in &files {
        assert!(registry.get(file.trim_end_matches(".rs")).is_some());
    }
}

fn inventory_defs() -> impl Iterator<Item = &'static TaskDef> {
    di::inventory::iter::<TaskDef>.into_iter()
}

fn never(_ctx: TaskContext, _envelope: &Envelope) -> TaskFuture {
    Box::pin(async { Err(RunError::BadArguments("unused".into())) })
}

fn check_none(_envelope: &Envelope) -> Result<(), di::CodecError> {
    Ok(())
}

static FIRST: TaskDef = TaskDef::new("tasks::report", "tasks/src/report.rs", 40, TaskOptions::new(), never, check_none);
static SECOND: TaskDef =
    TaskDef::new("tasks::other", "tasks/src/other.rs", 12, TaskOptions::new().name("report"), never, check_none);
static DISTINCT: TaskDef = TaskDef::new("tasks::fine", "tasks/src/fine.rs", 3, TaskOptions::new(), never, check_none);

#[test]
fn duplicate_names_are_an_error_naming_both_places() {
    let err = Registry::from_defs([&FIRST, &DISTINCT, &SECOND]).unwrap_err();
    let RegistryError::Duplicate { name, first, second } = &err;
    assert_eq!(name, "report");
    assert_eq!(first, "tasks/src/other.rs:12");
    assert_eq!(second, "tasks/src/report.rs:40");
    let text = err.to_string();
    assert!(text.contains("tasks/src/other.rs:12") && text.contains("tasks/src/report.rs:40"), "{text}");
}

#[test]
fn lookup_and_listing() {
    let registry = Registry::from_defs([&FIRST, &DISTINCT]).unwrap();
    assert_eq!(registry.names(), vec!["fine", "report"]);
    assert_eq!(registry.get("report").map(|d| d.line), Some(40));
    assert!(registry.get("missing").is_none());
}

#[test]
fn worker_check_reports_duplicate_task_names_as_a_usage_error() {
    use courier::cli::Exit;
    use courier::worker::check::{exit, registry_line};
    let line = registry_line(Registry::from_defs([&FIRST, &DISTINCT, &SECOND]));
    assert!(!line.ok);
    assert!(line.to_string().starts_with("FAIL  tasks") && line.detail.contains("\"report\""), "{line}");
    assert!(line.detail.contains("tasks/src/other.rs:12") && line.detail.contains("tasks/src/report.rs:40"));
    let fine = registry_line(Registry::from_defs([&FIRST, &DISTINCT]));
    assert!(fine.ok && fine.detail.starts_with("2 registered"), "{fine}");
    assert_eq!(exit(&[fine]), Exit::Ok);
    assert_eq!(exit(&[line]), Exit::Usage);
}
