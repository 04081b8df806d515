//! Hostile input published straight to the task subject: every message ends
//! as a dead letter (and a failed record where a task id is readable), the
//! worker's memory stays bounded, and the next good task succeeds.

use std::time::Duration;

use bytes::Bytes;
use di::{Envelope, TaskStatus};
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(30);

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(0xd9);
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

/// `{task_id, task_name, args: [[[[...]]]]}` nested `depth` deep.
fn depth_bomb(task_id: &str, depth: usize) -> Vec<u8> {
    let mut out = vec![0x83];
    str8(&mut out, "task_id");
    str8(&mut out, task_id);
    str8(&mut out, "task_name");
    str8(&mut out, "test_di_task");
    str8(&mut out, "args");
    out.extend(std::iter::repeat_n(0x91, depth));
    out.push(0xc0);
    out
}

/// A map header claiming 2^32 - 1 entries, then two.
fn length_bomb(task_id: &str) -> Vec<u8> {
    let mut out = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
    str8(&mut out, "task_id");
    str8(&mut out, task_id);
    str8(&mut out, "task_name");
    str8(&mut out, "test_di_task");
    out
}

fn with_chat_id(task_id: &str, task_name: &str, chat_id: rmpv::Value) -> Vec<u8> {
    let mut envelope = Envelope::new(task_id.to_owned(), task_name, &()).unwrap();
    envelope.kwargs.insert("chat_id".into(), chat_id);
    envelope.to_msgpack().unwrap()
}

#[tokio::test]
async fn hostile_payloads_are_dead_lettered_and_the_worker_survives() {
    let scope = Scope::new();
    let worker = it::flood::workers(1, &scope.env()).await.remove(0);
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();

    let valid = with_chat_id("trunc-1", "test_di_task", rmpv::Value::from(1));
    let cases: Vec<(&str, Option<&str>, &str, Vec<u8>)> = vec![
        ("random bytes", None, "BadEnvelope", noise(4096)),
        ("truncated envelope", Some("trunc-1"), "BadEnvelope", valid[..valid.len() - 7].to_vec()),
        ("100,000-deep nesting", Some("deep-1"), "BadEnvelope", depth_bomb("deep-1", 100_000)),
        ("map claiming 2^32 entries", Some("mapbomb-1"), "BadEnvelope", length_bomb("mapbomb-1")),
        (
            "wrong argument types",
            Some("types-1"),
            "BadArguments",
            with_chat_id("types-1", "test_di_task", "seven".into()),
        ),
        ("unknown task", Some("unknown-1"), "UnknownTask", with_chat_id("unknown-1", "rm_rf", 1.into())),
        (
            "1 MB string",
            Some("huge-1"),
            "BadArguments",
            with_chat_id("huge-1", "test_di_task", "x".repeat(1_000_000).into()),
        ),
    ];
    for (n, (what, _, _, bytes)) in cases.iter().enumerate() {
        let message_id = format!("hostile-{n}");
        let published =
            producer.publisher().send(subject.clone(), &message_id, Default::default(), Bytes::from(bytes.clone()));
        published.await.unwrap_or_else(|e| panic!("publishing {what}: {e}"));
    }
    let good = producer.enqueue(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 9 }).await.unwrap();
    assert_eq!(good.wait(WAIT).await.unwrap().status, TaskStatus::Success, "the next good task succeeds");

    let letters = scope
        .eventually(WAIT, "a dead letter for each hostile message", || async {
            let letters = scope.dead_letters().await;
            (letters.len() >= cases.len()).then_some(letters)
        })
        .await;
    assert_eq!(letters.len(), cases.len(), "one dead letter each");
    for (what, task_id, kind, bytes) in &cases {
        let letter =
            letters.iter().find(|l| l.payload == *bytes).unwrap_or_else(|| panic!("no dead letter for {what}"));
        assert!(letter.reason.starts_with(kind), "{what}: {}", letter.reason);
        assert_eq!(letter.task_id.as_deref(), *task_id, "{what}");
        if let Some(id) = task_id {
            let record = producer.result(id).await.unwrap().unwrap_or_else(|| panic!("no record for {what}"));
            assert_eq!(record.status, TaskStatus::Failed, "{what}");
            assert_eq!(record.error.unwrap().exc_type, *kind, "{what}");
        }
    }
    let rss = it::rss_kib(worker.id());
    assert!(rss < 200 * 1024, "worker RSS grew to {} MiB", rss / 1024);
    assert_eq!(scope.backlog().await, (0, 0, 0), "nothing left to redeliver");
    let mut worker = worker;
    let exit = tokio::task::spawn_blocking(move || worker.terminate(WAIT)).await.unwrap();
    assert_eq!(exit.code(), Some(0), "the worker is still healthy enough to stop cleanly");
}

#[tokio::test]
async fn payload_over_the_size_limit_is_refused_unread() {
    let mut scope = Scope::new();
    scope.settings.nats.max_payload = 64 * 1024;
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let mut envelope =
        Envelope::new("big-1".into(), "test_di_task", &tasks::test_di_task::Args { chat_id: 1 }).unwrap();
    envelope.kwargs.insert("padding".into(), "p".repeat(100 * 1024).into());
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    let record = producer.wait("big-1", WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(error.exc_type, "BadEnvelope");
    assert!(error.message().contains("exceeds nats.max_payload"), "{}", error.message());
    let letters = scope
        .eventually(WAIT, "the dead letter", || async {
            let letters = scope.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
    assert_eq!(letters[0].task_id.as_deref(), Some("big-1"));
    worker.stop().await.unwrap();
}
