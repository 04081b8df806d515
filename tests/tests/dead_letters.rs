//! Operating dead letters: `producer dead-letters` lists them and
//! `producer replay <task_id>` puts one back in the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use di::TaskStatus;
use it::process::command;
use it::scope::Scope;
use serde_json::Value;

static FIXED: AtomicBool = AtomicBool::new(false);

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

const WAIT: Duration = Duration::from_secs(30);

async fn producer_cli(scope: &Scope, args: &[&str]) -> (i32, String) {
    let env = scope.env();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = command("producer").envs(env).args(&args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
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
    let letters: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
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
    assert_eq!(code, 3);
    worker.stop().await.unwrap();
}
