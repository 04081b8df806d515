//! Fault tests: a worker killed in the middle of a task, the broker
//! restarted with a backlog, a NATS server in `nats.url` down, Telegram
//! rate-limiting. Private servers where
//! one must die; the shared services are never stopped.

use std::time::Duration;

use di::{Db, TaskStatus};
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;
use it::servers::{PrivateNats, free_port};
use it::{PgSchema, test_settings};
use settings::{Secret, SecretUrl, SecretUrls};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `sql` in the test's schema.
async fn sql(schema: &PgSchema, statement: &'static str) -> i64 {
    let mut settings = test_settings();
    settings.database.url = SecretUrl::new(schema.url.clone());
    let db = di::SqlxDb::connect(&settings.database).await.unwrap();
    let out = if statement.starts_with("SELECT") {
        di::sqlx::query_scalar(statement).fetch_one(db.pool()).await.unwrap()
    } else {
        di::sqlx::query(statement).execute(db.pool()).await.unwrap().rows_affected() as i64
    };
    db.close().await;
    out
}

// Multi-threaded: the fake Telegram answers while this thread blocks on processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_task_a_second_worker_finishes_it_once() {
    let mut scope = Scope::new();
    scope.settings.nats.ack_wait = Duration::from_secs(2);
    let schema = PgSchema::create().await;
    let fake = FakeTelegram::start().await;
    let env = scope.env_with(&schema, &fake);
    let first = ChildProcess::start(&env);
    sql(&schema, "INSERT INTO report_items (chat_id, label, amount) VALUES (77, 'a', 40), (77, 'b', 2)").await;

    // The first worker's message hangs in Telegram's front door.
    fake.script_delay("sendMessage", Duration::from_secs(30));
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::send_report::TASK, &tasks::send_report::Args { chat_id: 77 }).await.unwrap();
    scope
        .eventually(WAIT, "the first worker inside sendMessage", || async {
            (fake.in_delay("sendMessage") == 1).then_some(())
        })
        .await;
    first.signal("KILL");
    drop(first);
    scope
        .eventually(WAIT, "the hung request to end", || async { (fake.in_delay("sendMessage") == 0).then_some(()) })
        .await;

    let second = tokio::task::spawn_blocking(move || ChildProcess::start(&env)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    assert!(record.attempt >= 2, "finished by a redelivery: {record:?}");
    let output = tasks::send_report::TASK.decode_output(record.return_value).unwrap();
    assert_eq!((output.item_count, output.total, output.already_sent), (2, 42, false));

    let messages = fake.sent_to(77);
    assert_eq!(messages.len(), 1, "the report was sent {} times: {messages:?}", messages.len());
    assert_eq!(sql(&schema, "SELECT COUNT(*) FROM report_deliveries").await, 1, "delivery rows");
    drop(second);
}

#[tokio::test]
async fn nats_restart_with_a_thousand_tasks_queued_loses_none() {
    let mut nats = PrivateNats::start();
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(nats.url());
    scope.settings.worker.concurrency = 16;
    let producer = scope.producer().await;
    let mut ids = Vec::with_capacity(1000);
    for _ in 0..1000 {
        ids.push(producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap().task_id);
    }
    assert_eq!(scope.backlog_stream_only().await, 1000, "all queued before the restart");

    nats.restart();
    assert_eq!(scope.backlog_stream_only().await, 1000, "file storage kept them");
    let worker = scope.start_worker().await;
    // And once more while the worker is busy with them.
    let producer = scope.producer().await;
    scope
        .eventually(WAIT, "some progress", || async {
            let done = producer.result(&ids[0]).await.ok().flatten().is_some_and(|r| r.status == TaskStatus::Success);
            done.then_some(())
        })
        .await;
    nats.restart();

    for id in &ids {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("task {id} lost: {e}"));
        assert_eq!(record.status, TaskStatus::Success, "task {id}");
    }
    // Nothing is left to deliver: the consumer has nothing pending or
    // unacknowledged. A message may stay in the stream after a SIGKILL of
    // the server when the consumer's ack was stored but the stream's removal
    // of the message was not (a work queue removes on ack); such a message
    // is never delivered again, so each one left must be a task that already
    // succeeded, never one that did not run.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (left, _, _) = loop {
        let backlog = scope.backlog().await;
        if backlog.1 == 0 && backlog.2 == 0 {
            break backlog;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer still has work after {WAIT:?}: (stream messages, consumer pending, ack pending) = \
             {backlog:?}; deliveries {}",
            scope.deliveries().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if left > 0 {
        let js = scope.jetstream().await;
        let mut stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut found = 0;
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(raw) = stream.get_raw_message(sequence).await else { continue };
            found += 1;
            let id = di::Envelope::salvage_task_id(&raw.payload).expect("a task message");
            let record = producer.result(&id).await.unwrap().unwrap_or_else(|| panic!("{id}: no record"));
            assert_eq!(record.status, TaskStatus::Success, "left in the stream and not done: {id}");
        }
        eprintln!("{found} message(s) left in the stream after the restarts, each a task that already succeeded");
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_reaches_the_live_server_of_a_list_whose_others_are_down() {
    let nats = PrivateNats::start_with(&["--user", "courier", "--pass", "list-s3cret"]);
    let (dead, also_dead) = (free_port(), free_port());
    let mut scope = Scope::new();
    // Credentials on some servers only: one client uses them for every server.
    scope.settings.nats.url = SecretUrls::from_list([
        format!("nats://courier:list-s3cret@127.0.0.1:{dead}"),
        format!("nats://127.0.0.1:{also_dead}"),
        format!("nats://courier:list-s3cret@127.0.0.1:{}", nats.port),
    ]);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();

    // The worker binary, given the list as COURIER_NATS__URL (comma-separated).
    let env = scope.env();
    assert!(env.iter().any(|(k, v)| k == "COURIER_NATS__URL" && v.matches(',').count() == 2), "{env:?}");
    let mut child = ChildProcess::start(&env);
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    assert!(child.terminate(WAIT).success(), "{}", child.log());
    assert!(!child.log().contains("list-s3cret"), "the password leaked:\n{}", child.log());

    // With every server down, start-up fails naming each (redacted).
    let mut down = Scope::new();
    down.settings.nats.connect_timeout = Duration::from_secs(2);
    down.settings.nats.url = SecretUrls::from_list([
        format!("nats://courier:list-s3cret@127.0.0.1:{dead}"),
        format!("nats://127.0.0.1:{also_dead}"),
    ]);
    let err = courier::run_worker(down.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains(&format!(":{dead}")) && err.contains(&format!(":{also_dead}")), "{err}");
    assert!(!err.contains("list-s3cret"), "the password leaked: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_429_is_retried_after_retry_after_and_succeeds() {
    let mut scope = Scope::new();
    let fake = FakeTelegram::start().await;
    scope.settings.telegram.token = Some(Secret::new("123456:TEST-TOKEN"));
    scope.settings.telegram.api_url = fake.url.clone();
    fake.script_rate_limit("sendMessage", 2);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 55 }).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    // A 429 is Telegram's limit, not the task's failure: no attempt is spent.
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 1), "{record:?}");
    let attempts = fake.sent_to(55);
    assert_eq!(attempts.len(), 2, "one refused, one accepted");
    let gap = attempts[1].at - attempts[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}, sooner than Telegram's retry_after of 2 s");
    worker.stop().await.unwrap();
}
