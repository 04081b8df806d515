//! Discovering tasks and sending them arguments that fit: `producer tasks`
//! lists each task's arguments; `send` refuses a missing, unknown or
//! mistyped field by name before anything is written; a worker fails an
//! envelope with an unknown field the same way.

use std::time::Duration;

use di::TaskStatus;
use it::process::command;
use it::scope::Scope;
use serde_json::Value;
use tasks as _;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `producer` with `env`: exit code, stdout, stderr.
async fn producer(env: Vec<(String, String)>, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = command("producer").envs(env).args(&args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn producer_tasks_lists_each_argument_with_its_type() {
    let (code, out, err) = producer(Vec::new(), &["tasks"]).await;
    assert_eq!(code, 0, "{err}");
    let block: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("send_message ")).take(5).collect();
    assert!(block[0].contains("transactional lane") && block[0].contains("5 attempts"), "{out}");
    assert_eq!(block[1].split_whitespace().collect::<Vec<_>>(), ["chat_id", "i64", "required"], "{out}");
    assert_eq!(block[2].split_whitespace().collect::<Vec<_>>(), ["text", "string", "default", "\"\""], "{out}");
    let copy: Vec<&str> = block[4].split_whitespace().collect();
    assert_eq!(
        copy,
        ["copy_from", "{chat_id:", "i64,", "message_id:", "i32}", "or", "null", "default", "null"],
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("noop ")), "{out}");

    let (code, out, _) = producer(Vec::new(), &["tasks", "--json"]).await;
    assert_eq!(code, 0);
    let tasks: Value = serde_json::from_str(&out).unwrap();
    let sleep = tasks.as_array().unwrap().iter().find(|t| t["name"] == "sleep").expect("sleep is listed");
    assert_eq!(sleep["fields"], serde_json::json!([{"name": "ms", "type": "u64", "required": true, "default": null}]));
    assert_eq!(sleep["timeout_seconds"], 3600.0);
}

#[tokio::test]
async fn send_names_the_field_at_fault_and_enqueues_nothing() {
    let scope = Scope::new();
    // Creates the streams, so "nothing was published" can be counted.
    let _producer = scope.producer().await;
    for (kwargs, says) in [
        (r#"{"text": "hi"}"#, "missing field `chat_id`"),
        (r#"{"chat_id": 1, "text": "hi", "txet": "typo"}"#, "unknown field `txet`"),
        (r#"{"chat_id": "one", "text": "hi"}"#, "field `chat_id`: invalid type: string \"one\", expected i64"),
    ] {
        let (code, out, err) = producer(scope.env(), &["send", "send_message", "--kwargs", kwargs]).await;
        assert_eq!(code, 2, "{kwargs}: {out}{err}");
        assert!(err.contains(says), "{kwargs}: {err}");
        assert!(out.is_empty(), "no task id is printed: {out}");
    }
    let keys = scope.redis_keys().await;
    assert!(keys.is_empty(), "no record was written: {keys:?}");
    assert_eq!(scope.backlog_stream_only().await, 0, "nothing was published");
}

#[tokio::test]
async fn the_worker_fails_an_unknown_field_naming_it() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    // As a producer that checks nothing would send it.
    let mut envelope = di::Envelope::new("extra-field-1".into(), "sleep", &tasks::sleep::Args { ms: 1 }).unwrap();
    envelope.kwargs.insert("extra".into(), 1.into());
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    let record = producer.wait("extra-field-1", WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(error.exc_type, "BadArguments");
    assert!(error.message().contains("unknown field `extra`") && error.message().contains("ms"), "{}", error.message());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn send_json_prints_one_object_a_script_can_read() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let args = ["send", "noop", "--id", "json-1", "--wait", "20", "--json"];
    let (code, out, err) = producer(scope.env(), &args).await;
    assert_eq!(code, 0, "{err}");
    let sent: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((&sent["task_id"], &sent["duplicate"]), (&Value::from("json-1"), &Value::from(false)));
    assert_eq!(sent["record"]["status"], "success", "{out}");
    let (code, out, _) = producer(scope.env(), &["send", "noop", "--id", "json-1", "--json"]).await;
    assert_eq!(code, 0);
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&again["duplicate"], &again["record"]), (&Value::from(true), &Value::Null));
    worker.stop().await.unwrap();
}
