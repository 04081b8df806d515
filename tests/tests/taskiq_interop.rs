//! Interoperability with Python's taskiq: a taskiq producer
//! (PullBasedJetStreamBroker, msgpack) enqueues to a Courier worker, and
//! taskiq-redis' RedisAsyncResultBackend reads what Courier wrote.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use async_nats::jetstream::consumer::PullConsumer;
use di::shaku::HasComponent;
use di::{ResultRecord, ResultStore, TaskError, TaskStatus};
use it::scope::Scope;
use serde_json::Value;
use tasks as _;

/// The venv with the taskiq stack, made once under the target directory.
fn python() -> PathBuf {
    let target = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().parent().unwrap().to_owned();
    let venv = target.join("taskiq-venv");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let status = Command::new(root.join("scripts/taskiq-venv.sh")).arg(&venv).status().expect("run taskiq-venv.sh");
    assert!(status.success(), "installing taskiq into {} failed (PyPI unreachable?)", venv.display());
    venv.join("bin/python")
}

/// Runs the taskiq producer script with a scope's settings (`env`, `s`).
fn taskiq(env: Vec<(String, String)>, s: &settings::NatsSettings, args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/taskiq_producer.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .envs(env)
        .env("COURIER_NATS__ACK_WAIT_SECONDS", s.ack_wait.as_secs_f64().to_string())
        .env("COURIER_NATS__MAX_DELIVER", s.max_deliver.to_string())
        .env("COURIER_NATS__MAX_ACK_PENDING", s.max_ack_pending.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "taskiq producer failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the taskiq producer")
}

#[tokio::test]
async fn taskiq_producer_enqueues_and_taskiq_backend_reads_the_result() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;

    let (env, nats) = (scope.env(), scope.settings.nats.clone());
    let result =
        tokio::task::spawn_blocking(move || taskiq(env, &nats, &["send", "test_di_task", r#"{"chat_id": 42}"#]))
            .await
            .unwrap();
    assert_eq!(result["is_err"], false, "{result}");
    assert_eq!(result["return_value"]["select_one"], 1, "{result}");
    assert_eq!(result["return_value"]["chat_id"], 42, "{result}");
    assert_eq!(result["return_value"]["db_backend"], "SQLite", "{result}");

    // A task that is still running for a while: taskiq must wait for the end
    // (its wait_result polls for the key, which exists only when done).
    let (env, nats) = (scope.env(), scope.settings.nats.clone());
    let slow =
        tokio::task::spawn_blocking(move || taskiq(env, &nats, &["send", "sleep", r#"{"ms": 500}"#])).await.unwrap();
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

    // The consumer kept Courier's settings (the producer passed them).
    let js = scope.jetstream().await;
    let mut consumer: PullConsumer = js
        .get_stream(&scope.settings.nats.stream)
        .await
        .unwrap()
        .get_consumer(&scope.settings.nats.durable)
        .await
        .unwrap();
    let config = consumer.info().await.unwrap().config.clone();
    assert_eq!(config.max_deliver, scope.settings.nats.max_deliver);
    assert_eq!(config.ack_wait, scope.settings.nats.ack_wait);
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
    let (env, nats) = (scope.env(), scope.settings.nats.clone());
    let result = tokio::task::spawn_blocking(move || taskiq(env, &nats, &["read", "failed-1"])).await.unwrap();
    assert_eq!(result["is_err"], true, "{result}");
    assert_eq!(result["error_type"], "BadArguments", "{result}");
    assert!(result["error"].as_str().unwrap().contains("expected i64"), "{result}");
    container.shutdown().await;
}
