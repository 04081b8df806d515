//! Task ids and labels at the edges (issue 11, points 12 and 13): refused
//! before anything is written by the producer API, the CLI and follow-ups;
//! dead-lettered, never run, when a foreign producer sends them; and an id
//! sent again is a reported duplicate, or with other arguments a conflict.

use std::time::Duration;

use bytes::Bytes;
use courier::ProducerError;
use courier::broker::publish::Published;
use di::{Envelope, IdError, TaskStatus};
use it::process::command;
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(30);

/// Enqueues one `noop` follow-up (whose id is `<own id>.1`).
mod spawner {
    use di::prelude::*;

    pub async fn run(ctx: TaskContext, _args: ()) -> TaskResult<String> {
        ctx.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await
    }

    register_task!(run: () => String);
}

/// Runs the `producer` binary with the scope's settings: exit code, stdout, stderr.
async fn producer_cli(scope: &Scope, args: &[&str]) -> (i32, String, String) {
    let env = scope.env();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = command("producer").envs(env).args(&args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    })
    .await
    .unwrap()
}

fn noop(task_id: &str) -> Envelope {
    Envelope::new(task_id.to_owned(), "noop", &tasks::noop::Args {}).unwrap()
}

#[tokio::test]
async fn the_producer_api_refuses_bad_ids_and_labels_before_writing() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let refused = |result: Result<Published, ProducerError>| match result {
        Err(ProducerError::Invalid(err)) => err,
        other => panic!("expected ProducerError::Invalid, got {other:?}"),
    };
    let err = refused(producer.enqueue_envelope(&noop("crlf\r\nPUB x 0"), None).await);
    assert!(matches!(err, IdError::TaskIdCharacter { found: '\r', .. }), "{err:?}");
    assert_eq!(refused(producer.enqueue_envelope(&noop(""), None).await), IdError::EmptyTaskId);
    let err = refused(producer.enqueue_envelope(&noop(&"x".repeat(129)), None).await);
    assert_eq!(err, IdError::TaskIdTooLong { len: 129 });

    let mut label_value = noop("label-value-1");
    label_value.labels.insert("note".into(), "one\r\ntwo".into());
    let err = refused(producer.enqueue_envelope(&label_value, None).await);
    assert!(matches!(err, IdError::LabelCharacter { found: '\r', .. }), "{err:?}");
    let mut label_key = noop("label-key-1");
    label_key.labels.insert("bad key".into(), 1.into());
    assert!(matches!(refused(producer.enqueue_envelope(&label_key, None).await), IdError::LabelKey { .. }));

    assert_eq!(scope.redis_keys().await, Vec::<String>::new(), "no record was written");
    assert_eq!(scope.backlog_stream_only().await, 0, "nothing was published");
}

#[tokio::test]
async fn the_cli_refuses_bad_ids_and_labels_with_the_usage_code() {
    let scope = Scope::new();
    // Creates the streams, so "nothing was published" can be counted.
    let _producer = scope.producer().await;
    for args in [
        &["send", "noop", "--id", "crlf\r\nid"][..],
        &["send", "noop", "--id", ""],
        &["send", "noop", "--id", "a b"],
        &["send", "noop", "--label", "note=one\r\ntwo"],
        &["send", "noop", "--label", "bad key=1"],
    ] {
        let (code, out, err) = producer_cli(&scope, args).await;
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains("task id") || err.contains("label"), "{args:?}: {err}");
    }
    assert_eq!(scope.redis_keys().await, Vec::<String>::new(), "no record was written");
    assert_eq!(scope.backlog_stream_only().await, 0, "nothing was published");
}

#[tokio::test]
async fn a_worker_dead_letters_bad_ids_and_labels_from_a_foreign_producer() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();
    let bad_id = "foreign\r\nid";
    let mut bad_label = noop("foreign-label-1");
    bad_label.labels.insert("note".into(), "one\r\ntwo".into());
    for (n, envelope) in [noop(bad_id), bad_label].iter().enumerate() {
        // A foreign producer: raw bytes, a message id of its own.
        let bytes = Bytes::from(envelope.to_msgpack().unwrap());
        producer.publisher().send(subject.clone(), &format!("foreign-{n}"), Default::default(), bytes).await.unwrap();
    }
    let good = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(good.wait(WAIT).await.unwrap().status, TaskStatus::Success, "the worker keeps serving");

    for (task_id, what) in [(bad_id, "invalid task id"), ("foreign-label-1", "invalid label")] {
        let record = scope
            .eventually(WAIT, "the failed record", || async {
                producer.result(task_id).await.unwrap().filter(|r| r.status.is_final())
            })
            .await;
        assert_eq!(record.status, TaskStatus::Failed, "{task_id:?}");
        let error = record.error.unwrap();
        assert_eq!(error.exc_type, "BadEnvelope", "{task_id:?}");
        assert!(error.message().starts_with(what), "{task_id:?}: {}", error.message());
    }
    let letters = scope
        .eventually(WAIT, "two dead letters", || async {
            let letters = scope.dead_letters().await;
            (letters.len() == 2).then_some(letters)
        })
        .await;
    assert!(letters.iter().all(|l| l.reason.starts_with("BadEnvelope: invalid")), "{letters:?}");
    assert_eq!(scope.backlog().await, (0, 0, 0), "nothing left to redeliver");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_follow_up_whose_id_would_be_too_long_fails_the_task_for_good() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    // 127 bytes: valid itself, but its follow-up `<id>.1` is 129.
    let parent = "p".repeat(127);
    producer.enqueue_envelope(&Envelope::new(parent.clone(), "spawner", &()).unwrap(), None).await.unwrap();
    let record = producer.wait(&parent, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(error.exc_type, "Fatal", "not retried: {}", error.message());
    assert!(error.message().contains("the task id is 129 bytes long"), "{}", error.message());
    assert_eq!(producer.result(&format!("{parent}.1")).await.unwrap(), None, "no follow-up was sent");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_id_sent_again_is_a_duplicate_and_with_other_arguments_a_conflict() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let args = |chat_id| tasks::test_di_task::Args { chat_id };
    let task = tasks::test_di_task::TASK;

    let first = producer.enqueue_with_id(task, "order-1".into(), &args(1)).await.unwrap();
    assert!(!first.duplicate);
    let again = producer.enqueue_with_id(task, "order-1".into(), &args(1)).await.unwrap();
    assert!(again.duplicate, "queued, same arguments: the stream's duplicate flag");
    let other = producer.enqueue_with_id(task, "order-1".into(), &args(2)).await;
    assert!(matches!(other, Err(ProducerError::Conflict { ref task_id }) if task_id == "order-1"), "{other:?}");

    let worker = scope.start_worker().await;
    assert_eq!(first.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    // Final: a duplicate without publishing, and still a conflict for other arguments.
    let late = producer.enqueue_with_id(task, "order-1".into(), &args(1)).await.unwrap();
    assert!(late.duplicate);
    assert!(matches!(
        producer.enqueue_with_id(task, "order-1".into(), &args(2)).await,
        Err(ProducerError::Conflict { .. })
    ));
    worker.stop().await.unwrap();
    assert_eq!(scope.deliveries().await, 1, "one message was ever delivered");
}

#[tokio::test]
async fn the_cli_reports_duplicates_and_refuses_other_arguments_under_an_id() {
    let scope = Scope::new();
    let _producer = scope.producer().await;
    let send = |kwargs: &'static str| {
        let scope = &scope;
        async move { producer_cli(scope, &["send", "test_di_task", "--id", "cli-1", "--kwargs", kwargs]).await }
    };
    let (code, out, err) = send(r#"{"chat_id": 1}"#).await;
    assert_eq!((code, out.trim()), (0, "cli-1"), "{err}");
    assert!(!err.contains("duplicate"), "{err}");

    let (code, out, err) = send(r#"{"chat_id": 1}"#).await;
    assert_eq!((code, out.trim()), (0, "cli-1"), "{err}");
    assert!(err.contains("duplicate"), "the CLI says so: {err:?}");

    let (code, _, err) = send(r#"{"chat_id": 2}"#).await;
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("other arguments"), "{err}");
    assert_eq!(scope.backlog_stream_only().await, 1, "one message in the stream");
}
