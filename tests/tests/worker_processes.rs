//! Real `worker` processes: SIGTERM in the middle of a task, and two
//! processes sharing one queue.

use std::time::Duration;

use di::TaskStatus;
use it::process::ChildWorker;
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_during_a_task_finishes_it_acks_it_and_exits_zero() {
    let scope = Scope::new();
    let mut worker = ChildWorker::start(&scope.env());
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 1_500 }).await.unwrap();
    scope
        .eventually(WAIT, "the task to be running", || async {
            let record = producer.result(&handle.task_id).await.unwrap();
            (record.map(|r| r.status) == Some(TaskStatus::Running)).then_some(())
        })
        .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = worker.terminate(WAIT);
        (status, worker.log())
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("task succeeded"), "{log}");
    let record = producer.result(&handle.task_id).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Success, "the running task completed");
    assert_eq!(scope.backlog().await, (0, 0, 0), "and its message was acked");
}

#[tokio::test]
async fn two_worker_processes_share_one_queue() {
    let mut scope = Scope::new();
    scope.settings.worker.concurrency = 1;
    let env = scope.env();
    let mut first = ChildWorker::start(&env);
    let mut second = ChildWorker::start(&env);
    let producer = scope.producer().await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 50 }).await.unwrap());
    }
    for handle in &handles {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success, "task {} lost", handle.task_id);
    }
    let (a, b) = tokio::task::spawn_blocking(move || {
        assert_eq!(first.terminate(WAIT).code(), Some(0));
        assert_eq!(second.terminate(WAIT).code(), Some(0));
        (first.log().matches("task succeeded").count(), second.log().matches("task succeeded").count())
    })
    .await
    .unwrap();
    assert_eq!(a + b, 20, "every task ran exactly once");
    assert!(a > 0 && b > 0, "both workers took tasks from the one queue ({a} and {b})");
    assert_eq!(scope.backlog().await, (0, 0, 0));
}

#[tokio::test]
async fn json_logs_carry_the_task_span_and_no_secrets() {
    let scope = Scope::new();
    let schema = it::PgSchema::create().await;
    let mut env = scope.env();
    env.push(("COURIER_LOG__FORMAT".into(), "json".into()));
    // Servers without auth accept credentials they do not need: the secrets
    // still travel through settings and must not reach the log.
    let nats = scope.settings.nats.url.expose().replace("nats://", "nats://courier:nats-hunter2@");
    env.push(("COURIER_NATS__URL".into(), nats));
    env.push((
        "COURIER_DATABASE__URL".into(),
        schema.url.replace("postgres://postgres@", "postgres://postgres:pg-hunter2@"),
    ));
    let mut worker = ChildWorker::start(&env);
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    let log = tokio::task::spawn_blocking(move || {
        assert_eq!(worker.terminate(WAIT).code(), Some(0));
        worker.log()
    })
    .await
    .unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    let done = lines.iter().find(|l| l["message"] == "task succeeded").expect("a `task succeeded` line");
    assert_eq!(done["span"]["task.id"], handle.task_id.as_str(), "{done}");
    assert_eq!(done["span"]["task.name"], "noop", "{done}");
    assert_eq!(done["span"]["task.attempt"], 1, "{done}");
    assert_eq!(done["span"]["task.outcome"], "success", "{done}");
    assert!(!log.contains("hunter2"), "a secret reached the log:\n{log}");
}
