//! Cancellation and progress: a queued task that is cancelled never runs; a
//! running one sees `ctx.cancelled()` within a second, stops, ends
//! `cancelled` and its transaction leaves no rows; progress written while a
//! task runs is readable from another process.

use std::time::{Duration, Instant};

use di::TaskStatus;
use it::PgSchema;
use it::process::{ChildProcess, command};
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(30);

/// Inserts a row in its transaction, then waits to be cancelled.
mod patient {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub table: String,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<()> {
        let query = format!("INSERT INTO {} (note) VALUES ('written before the cancel')", args.table);
        let mut db = ctx.db().await?;
        di::sqlx::query(di::sqlx::AssertSqlSafe(query)).execute(&mut *db).await.retryable()?;
        drop(db);
        tokio::select! {
            () = ctx.cancelled() => Err(Failure::cancelled()),
            () = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
        }
    }

    register_task!(run: Args => ());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_that_is_cancelled_never_runs() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 10 }).await.unwrap();
    assert_eq!(producer.cancel(&handle.task_id).await.unwrap(), None, "recorded");
    let worker = scope.start_worker().await;
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
    assert_eq!(record.started_at, None, "it never started");
    scope.eventually(WAIT, "the message acked", || async { (scope.backlog().await.0 == 0).then_some(()) }).await;
    assert_eq!(producer.progress(&handle.task_id).await.unwrap(), None, "it never ran");
    assert_eq!(producer.cancel(&handle.task_id).await.unwrap(), Some(TaskStatus::Cancelled), "already ended");
    worker.stop().await.unwrap();
}

/// Cancel by filter (`producer cancel --label`, `--task`): queued and
/// scheduled tasks whose records match never run; the others do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_by_label_and_task_name_spares_the_rest() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let labelled = |batch: &str| {
        let mut envelope = tasks::noop::TASK.envelope(&tasks::noop::Args {}).unwrap();
        envelope.labels.insert("batch".into(), batch.into());
        envelope
    };
    let (doomed, spared) = (labelled("a"), labelled("b"));
    producer.enqueue_envelope(&doomed, None).await.unwrap();
    producer.enqueue_envelope(&spared, None).await.unwrap();
    let later = producer
        .enqueue_in(tasks::sleep::TASK, &tasks::sleep::Args { ms: 1 }, Duration::from_millis(1_500))
        .await
        .unwrap();
    let env = scope.env();
    let cli = |args: &[&str]| {
        let out =
            command("producer").args(args).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["cancel", "--label", "batch=a"]), "1");
    assert_eq!(cli(&["cancel", "--task", "sleep"]), "1", "the scheduled sleep task");
    assert_eq!(cli(&["cancel", "--task", "sleep"]), "0", "nothing unfinished is left to cancel");

    let worker = scope.start_worker().await;
    assert_eq!(producer.wait(&spared.task_id, WAIT).await.unwrap().status, TaskStatus::Success);
    let doomed = producer.wait(&doomed.task_id, WAIT).await.unwrap();
    assert_eq!((doomed.status, doomed.started_at), (TaskStatus::Cancelled, None));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = producer.result(&later.task_id).await.unwrap().unwrap();
    assert_eq!((later.status, later.started_at), (TaskStatus::Cancelled, None), "the scheduled task never ran");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_stops_within_a_second_and_its_transaction_leaves_no_rows() {
    let schema = PgSchema::create().await;
    let table = format!("{}.notes", schema.name);
    let pg = sqlx::PgPool::connect(&schema.url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE {table} (note TEXT)"))).execute(&pg).await.unwrap();
    let mut scope = Scope::new();
    scope.settings.database.url = settings::SecretUrl::new(&schema.url);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(patient::TASK, &patient::Args { table: table.clone() }).await.unwrap();
    scope
        .eventually(WAIT, "running", || async {
            let record = producer.result(&handle.task_id).await.unwrap()?;
            (record.status == TaskStatus::Running).then_some(())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    // From another process, as a user would.
    let env = scope.env();
    let task_id = handle.task_id.clone();
    let out =
        tokio::task::spawn_blocking(move || command("producer").envs(env).args(["cancel", &task_id]).output().unwrap())
            .await
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record = handle.wait(WAIT).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
    assert!(took < Duration::from_millis(1_500), "stopped {took:?} after the cancel");
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(&pg).await.unwrap();
    assert_eq!(rows, 0, "the cancelled task's transaction was rolled back");
    worker.stop().await.unwrap();
}

/// The acceptance test: `sleep` tasks running on two worker processes are
/// cancelled through the API; each one's worker tells it within a second,
/// it stops, and its record ends `cancelled` (timed from the cancel's
/// write, by reading the record every 20 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_sleep_tasks_on_two_workers_stop_within_a_second_of_the_cancel() {
    const N: usize = 6;
    let scope = Scope::new();
    let mut env = scope.env();
    env.push(("COURIER_WORKER__CONCURRENCY".into(), "4".into()));
    let mut workers = it::flood::workers(2, &env).await;
    let producer = scope.producer().await;
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 60_000 }).await.unwrap().task_id);
    }
    scope
        .eventually(WAIT, "every task running", || async {
            for id in &ids {
                (producer.result(id).await.unwrap()?.status == TaskStatus::Running).then_some(())?;
            }
            Some(())
        })
        .await;
    let log = |workers: &[ChildProcess]| workers.iter().map(ChildProcess::log).collect::<Vec<_>>().join("\n----\n");
    let mut took = Vec::new();
    for id in &ids {
        assert_eq!(producer.cancel(id).await.unwrap(), None, "the cancel is recorded");
        let asked = Instant::now();
        loop {
            let record = producer.result(id).await.unwrap().unwrap();
            // The cancel is final at once; the task's own end (its finish
            // time) says when it stopped.
            if record.finished_at.is_some() && record.started_at.is_some() {
                assert_eq!(record.status, TaskStatus::Cancelled, "{record:?}");
                break;
            }
            assert!(asked.elapsed() < WAIT, "{id} never stopped:\n{}", log(&workers));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(asked.elapsed());
    }
    // Three slots a worker for this lane: each runs three (its log names
    // the tasks it ended).
    let ran_on = |worker: &ChildProcess| ids.iter().filter(|id| worker.log().contains(id.as_str())).count();
    scope
        .eventually(Duration::from_secs(10), "both workers ran some", || async {
            (ran_on(&workers[0]) > 0 && ran_on(&workers[1]) > 0).then_some(())
        })
        .await;
    let slowest = took.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "stopped {took:?} after their cancels:\n{}", log(&workers));
    eprintln!("{N} running sleep tasks on 2 workers stopped {took:?} after their cancels");
    for worker in &mut workers {
        worker.terminate(Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_written_by_a_running_task_is_readable_from_another_process() {
    let scope = Scope::new();
    // The task runs in a worker process; this process reads its progress.
    let env = scope.env();
    let mut worker = tokio::task::spawn_blocking(move || ChildProcess::start(&env)).await.unwrap();
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 3_000 }).await.unwrap();
    let task_id = handle.task_id.clone();
    let (seen, status) = scope
        .eventually(WAIT, "progress past a third", || async {
            let state = producer.status(&task_id).await.unwrap()?;
            let progress = state.progress?;
            (progress.fraction > 0.3 && progress.fraction < 1.0).then_some((progress, state.record.status))
        })
        .await;
    assert!(seen.message.starts_with("slept "), "{seen:?}");
    assert_eq!(status, TaskStatus::Running, "read beside the record while it runs");
    // The CLI follows it to the end.
    let env = scope.env();
    let out = tokio::task::spawn_blocking(move || {
        command("producer").envs(env).args(["result", &task_id, "--watch"]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "success");
    assert!(!out.stderr.contains(&b'\r'), "no bar into a pipe");

    // On a terminal (a pseudo-terminal from `script`), a bar redrawn in place.
    let handle = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 2_000 }).await.unwrap();
    let env = scope.env();
    let line = format!("'{}' result {} --watch", it::process::binary("producer").display(), handle.task_id);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script").args(["-qec", &line, "/dev/null"]).envs(env).output().unwrap()
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("running [#") && shown.contains("% slept "), "a bar with the task's message: {shown:?}");
    // A terminal turns each newline into CR LF: a CR alone is a redraw.
    assert!(shown.replace("\r\n", "\n").contains('\r'), "redrawn in place: {shown:?}");
    assert!(shown.contains("\"status\": \"success\"") || shown.contains("\"status\":\"success\""), "{shown:?}");
    worker.terminate(Duration::from_secs(10));
}
