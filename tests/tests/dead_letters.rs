//! Operating dead letters: `producer dead-letters` lists them (with
//! filters) and `producer replay <task_id>` or `replay --all` puts them back
//! in the queue, under the task id read from the payload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use di::TaskStatus;
use it::process::command;
use it::scope::Scope;
use serde_json::Value;

static FIXED: AtomicBool = AtomicBool::new(false);
static FIXED_A: AtomicBool = AtomicBool::new(false);

/// Fails for good until the test "fixes the cause".
mod fragile {
    use std::sync::atomic::Ordering;

    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<String> {
        if super::FIXED.load(Ordering::SeqCst) {
            Ok("fixed".to_owned())
        } else {
            Err(Failure::fatal("the cause is not fixed yet"))
        }
    }

    register_task!(run: () => String);
}

/// Fails with "cause A" until the test fixes it.
mod broken_a {
    use std::sync::atomic::Ordering;

    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        if super::FIXED_A.load(Ordering::SeqCst) { Ok(()) } else { Err(Failure::fatal("cause A")) }
    }

    register_task!(run: () => ());
}

/// Always fails with "cause B".
mod broken_b {
    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        Err(Failure::fatal("cause B"))
    }

    register_task!(run: () => ());
}

const WAIT: Duration = Duration::from_secs(30);

/// The JSON objects among a listing's lines (log lines are skipped).
fn json_lines(out: &str) -> Vec<Value> {
    out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn producer_cli(scope: &Scope, args: &[&str]) -> (i32, String) {
    let env = scope.env();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = command("producer").envs(env).args(&args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout) + &text(&out.stderr))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn list_and_replay_a_dead_letter() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(fragile::TASK, &()).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Failed);
    scope.eventually(WAIT, "the dead letter", || async { (scope.dead_letters().await.len() == 1).then_some(()) }).await;

    let (code, listed) = producer_cli(&scope, &["dead-letters"]).await;
    assert_eq!(code, 0, "{listed}");
    let letters = json_lines(&listed);
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["task_id"], handle.task_id.as_str());
    assert!(letters[0]["reason"].as_str().unwrap().contains("the cause is not fixed yet"), "{listed}");

    FIXED.store(true, Ordering::SeqCst);
    let (code, said) = producer_cli(&scope, &["replay", &handle.task_id]).await;
    assert_eq!(code, 0, "{said}");
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    assert!(scope.dead_letters().await.is_empty(), "the replayed letter left the dead letters");

    let (code, _) = producer_cli(&scope, &["replay", "no-such-task"]).await;
    assert_eq!(code, 4, "not found");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn filters_pick_dead_letters_and_replay_all_counts_them() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let a1 = producer.enqueue(broken_a::TASK, &()).await.unwrap();
    let a2 = producer.enqueue(broken_a::TASK, &()).await.unwrap();
    let b1 = producer.enqueue(broken_b::TASK, &()).await.unwrap();
    for handle in [&a1, &a2, &b1] {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Failed);
    }
    scope
        .eventually(WAIT, "three dead letters", || async { (scope.dead_letters().await.len() == 3).then_some(()) })
        .await;

    let listed = |args: &'static [&'static str]| {
        let scope = &scope;
        async move {
            let (code, out) = producer_cli(scope, &[&["dead-letters"][..], args].concat()).await;
            assert_eq!(code, 0, "{args:?}: {out}");
            json_lines(&out)
        }
    };
    let by_task = listed(&["--task", "broken_a"]).await;
    assert_eq!(by_task.len(), 2, "{by_task:?}");
    assert!(by_task.iter().all(|l| l["task_name"] == "broken_a"), "{by_task:?}");
    let by_reason = listed(&["--reason-contains", "cause B"]).await;
    assert_eq!(by_reason.len(), 1, "{by_reason:?}");
    assert_eq!(by_reason[0]["task_id"], b1.task_id.as_str());
    assert_eq!(listed(&["--since", "1h"]).await.len(), 3);
    assert_eq!(listed(&["--until", "2000-01-01T00:00:00Z"]).await.len(), 0);
    assert_eq!(listed(&["--since", "2999-01-01T00:00:00Z"]).await.len(), 0);
    let newest = listed(&["--limit", "1"]).await;
    assert_eq!(newest.len(), 1);
    assert_eq!(listed(&["--task", "broken_a", "--reason-contains", "cause B"]).await.len(), 0, "filters combine");

    FIXED_A.store(true, Ordering::SeqCst);
    let (code, said) = producer_cli(&scope, &["replay", "--all", "--task", "broken_a"]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("matched 2, replayed 2, failed 0"), "{said}");
    for handle in [&a1, &a2] {
        scope
            .eventually(WAIT, "the replayed task's success", || async {
                producer.result(&handle.task_id).await.unwrap().filter(|r| r.status == TaskStatus::Success)
            })
            .await;
    }
    let left = scope.dead_letters().await;
    assert_eq!(left.len(), 1, "only broken_b's letter is left");
    assert_eq!(left[0].task_id.as_deref(), Some(b1.task_id.as_str()));
    let (code, said) = producer_cli(&scope, &["replay", "--all", "--task", "broken_a"]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("matched 0, replayed 0, failed 0"), "{said}");
    let (code, said) = producer_cli(&scope, &["replay"]).await;
    assert_eq!(code, 2, "replay needs an id or --all: {said}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn replay_resets_and_runs_the_task_id_of_the_payload_not_the_header() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    // A dead letter whose header copy of the id is lossy (flattened or cut).
    let payload = di::Envelope::new("real-1".into(), "noop", &tasks::noop::Args {}).unwrap().to_msgpack().unwrap();
    let subject = scope.settings.nats.subject.clone();
    producer
        .publisher()
        .dead_letter(payload.into(), "Fatal: test", Some("real 1 (lossy copy)"), 1, "lossy-1", &subject)
        .await
        .unwrap();
    let (code, said) = producer_cli(&scope, &["replay", "real-1"]).await;
    assert_eq!(code, 0, "{said}");
    let record = producer.wait("real-1", WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 1));
    assert_eq!(producer.result("real 1 (lossy copy)").await.unwrap(), None, "nothing under the header's id");
    assert!(scope.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_reused_stream_sequence_does_not_swallow_a_new_dead_letter() {
    // A task stream deleted and created again numbers its messages from 1
    // again: a dead letter keyed by the sequence alone would be dropped as a
    // duplicate of the old one for the dead-letter stream's duplicate window.
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();
    let letter = |id: &str| di::Envelope::new(id.into(), "noop", &tasks::noop::Args {}).unwrap().to_msgpack().unwrap();
    for (id, expect_duplicate) in [("before-1", false), ("before-1", true), ("after-1", false)] {
        let published = producer
            .publisher()
            .dead_letter(letter(id).into(), "Fatal: test", Some(id), 1, "1", &subject)
            .await
            .unwrap();
        assert_eq!(
            published == courier::broker::publish::Published::Duplicate,
            expect_duplicate,
            "{id}: {published:?}"
        );
    }
    let ids: Vec<String> = scope.dead_letters().await.into_iter().filter_map(|l| l.task_id).collect();
    assert_eq!(ids, ["before-1", "after-1"]);
    worker.stop().await.unwrap();
}
