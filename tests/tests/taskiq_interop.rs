//! Interoperability with Python's taskiq: `examples/taskiq_producer.py`
//! (taskiq + taskiq-nats PullBasedJetStreamBroker, msgpack) enqueues to a
//! Courier worker, before or after one started, without touching the
//! workers' consumer, and taskiq-redis' RedisAsyncResultBackend reads what
//! Courier wrote. The Python venv is made
//! beforehand by `scripts/taskiq-venv.sh` (scripts/test.sh runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use di::shaku::HasComponent;
use di::{ResultRecord, ResultStore, TaskError, TaskStatus};
use it::scope::Scope;
use serde_json::Value;
use tasks as _;

/// The variable naming the venv with the taskiq stack; by default
/// `<target>/taskiq-venv`, where scripts/test.sh makes it.
const VENV_VAR: &str = "COURIER_TASKIQ_VENV";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The venv's python. The venv is never made here: a test that installs
/// from PyPI is slow and fails for reasons of its own.
fn python() -> PathBuf {
    let venv = std::env::var_os(VENV_VAR).map_or_else(
        || {
            // The test executable lives in <target>/<profile>/deps/.
            let exe = std::env::current_exe().expect("current exe");
            exe.ancestors().nth(3).expect("target dir").join("taskiq-venv")
        },
        PathBuf::from,
    );
    let make = format!(
        "make it with `scripts/taskiq-venv.sh {}` (scripts/test.sh does), or point {VENV_VAR} at one",
        venv.display()
    );
    let python = venv.join("bin/python");
    assert!(python.is_file(), "no taskiq venv at {}: {make}", venv.display());
    let wanted = std::fs::read(workspace().join("examples/requirements.txt")).expect("examples/requirements.txt");
    let installed = std::fs::read(venv.join(".requirements")).unwrap_or_default();
    assert!(
        installed == wanted,
        "the taskiq venv at {} is not up to date with examples/requirements.txt: {make}",
        venv.display()
    );
    python
}

/// Runs a Python script of the repository with a scope's environment; its
/// stdout parsed as JSON.
fn run_python(script: &str, env: Vec<(String, String)>, args: &[&str]) -> Value {
    let out = Command::new(python()).arg(workspace().join(script)).args(args).envs(env).output().expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

/// `examples/taskiq_producer.py <task> <kwargs>` with the scope's settings,
/// in the environment variables a worker reads (so a worker could be
/// started with the very same environment).
async fn example(scope: &Scope, task: &'static str, kwargs: &'static str) -> Value {
    let env = scope.env();
    tokio::task::spawn_blocking(move || run_python("examples/taskiq_producer.py", env, &[task, kwargs])).await.unwrap()
}

/// The settings that matter for delivery of the consumer taskiq publishes
/// to (the transactional lane's: `nats.subject`, `nats.durable`).
async fn consumer_settings(scope: &Scope) -> (consumer::AckPolicy, Duration, i64, i64, String) {
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.expect("the task stream");
    let mut consumer: PullConsumer = stream.get_consumer(&scope.settings.nats.durable).await.expect("the consumer");
    let c = consumer.info().await.unwrap().config.clone();
    (c.ack_policy, c.ack_wait, c.max_deliver, c.max_ack_pending, c.filter_subject)
}

/// What a worker with the scope's settings wants its consumer to be.
fn workers_consumer_settings(scope: &Scope) -> (consumer::AckPolicy, Duration, i64, i64, String) {
    let registry = di::Registry::from_inventory().unwrap();
    let most_attempts = registry.tasks().map(|t| i64::from(t.options.retry.max_attempts)).max().unwrap();
    let c = courier::broker::consumer_config(&scope.settings.nats, most_attempts, di::Lane::Transactional);
    (c.ack_policy, c.ack_wait, c.max_deliver, c.max_ack_pending, c.filter_subject)
}

#[tokio::test]
async fn taskiq_producer_enqueues_and_taskiq_backend_reads_the_result() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let made_by_the_worker = consumer_settings(&scope).await;
    assert_eq!(made_by_the_worker, workers_consumer_settings(&scope));

    let result = example(&scope, "test_di_task", r#"{"chat_id": 42}"#).await;
    assert_eq!(result["is_err"], false, "{result}");
    assert_eq!(result["return_value"]["select_one"], 1, "{result}");
    assert_eq!(result["return_value"]["chat_id"], 42, "{result}");
    assert_eq!(result["return_value"]["db_backend"], "SQLite", "{result}");

    // A task that is still running for a while: taskiq must wait for the end
    // (its wait_result polls for the key, which exists only when done).
    let slow = example(&scope, "sleep", r#"{"ms": 500}"#).await;
    assert_eq!(
        (slow["is_err"].clone(), slow["return_value"].clone()),
        (Value::from(false), Value::from(500)),
        "{slow}"
    );

    // Courier sees the same record, with its own fields.
    let producer = scope.producer().await;
    let task_id = result["task_id"].as_str().unwrap();
    let record = producer.result(task_id).await.unwrap().expect("the record");
    assert_eq!((record.status, record.attempt, record.task_name.as_str()), (TaskStatus::Success, 1, "test_di_task"));

    // The example made no consumer, so taskiq-nats' startup() rewrote none.
    assert_eq!(consumer_settings(&scope).await, made_by_the_worker);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn taskiq_producer_before_any_worker_makes_the_stream_a_worker_serves() {
    let scope = Scope::new();
    // No worker yet: the example makes the stream, publishes and waits.
    let sent = {
        let env = scope.env();
        tokio::task::spawn_blocking(move || {
            run_python("examples/taskiq_producer.py", env, &["test_di_task", r#"{"chat_id": 7}"#])
        })
    };
    let js = scope.jetstream().await;
    scope
        .eventually(Duration::from_secs(30), "the task published by the taskiq producer", || async {
            let mut stream = js.get_stream(&scope.settings.nats.stream).await.ok()?;
            (stream.info().await.ok()?.state.messages == 1).then_some(())
        })
        .await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let consumer = stream.get_consumer::<consumer::pull::Config>(&scope.settings.nats.durable).await;
    assert!(consumer.is_err(), "a producer makes no consumer");

    // A worker started on that stream (it refuses one it cannot serve) runs
    // the task, with the consumer it wants.
    let worker = scope.start_worker().await;
    let result = sent.await.unwrap();
    assert_eq!(
        (result["is_err"].clone(), result["return_value"]["chat_id"].clone()),
        (Value::from(false), Value::from(7)),
        "{result}"
    );
    assert_eq!(consumer_settings(&scope).await, workers_consumer_settings(&scope));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn taskiq_reads_a_failed_courier_record_as_an_error() {
    let scope = Scope::new();
    // Write a failed record the way the worker does, then read it with taskiq.
    let container = di::AppContainer::builder(&scope.settings)
        .with_db(di::SqlxDb::sqlite_in_memory().await.unwrap())
        .with_bot(di::testing::RecordingBot::new())
        .build()
        .await
        .unwrap();
    let store: Arc<dyn ResultStore> = container.module().resolve();
    let error = TaskError::new("BadArguments", "invalid type: string \"x\", expected i64");
    store.put("failed-1", &ResultRecord::failure("test_di_task", TaskStatus::Failed, 1, error)).await.unwrap();
    let env = scope.env();
    let result = tokio::task::spawn_blocking(move || run_python("tests/python/taskiq_reader.py", env, &["failed-1"]))
        .await
        .unwrap();
    assert_eq!(result["is_err"], true, "{result}");
    assert_eq!(result["error_type"], "BadArguments", "{result}");
    assert!(result["error"].as_str().unwrap().contains("expected i64"), "{result}");
    container.shutdown().await;
}
