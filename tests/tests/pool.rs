//! `send_report` holds no database connection while Telegram answers: with
//! a pool of 2 and six reports stuck in a slow Telegram, another task still
//! gets a connection. And the worker warns at start-up that its pool is
//! smaller than its concurrency.

use std::time::Duration;

use di::TaskStatus;
use it::PgSchema;
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(60);
const STUCK: i64 = 6;

// Multi-threaded: the fake Telegram answers while this thread blocks on processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_stuck_in_a_slow_telegram_leave_the_pool_free() {
    let mut scope = Scope::new();
    scope.settings.worker.concurrency = 8;
    let schema = PgSchema::create().await;
    let fake = FakeTelegram::start().await;
    let mut env = scope.env_with(&schema, &fake);
    env.push(("COURIER_DATABASE__MAX_CONNECTIONS".into(), "2".into()));
    for _ in 0..STUCK {
        fake.script_delay("sendMessage", Duration::from_secs(20));
    }
    let worker = tokio::task::spawn_blocking(move || ChildProcess::start(&env)).await.unwrap();
    let log = worker.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("database.max_connections < worker.concurrency")),
        "the start-up warning:\n{log}"
    );

    let producer = scope.producer().await;
    let mut reports = Vec::new();
    for chat_id in 1..=STUCK {
        reports.push(producer.enqueue(tasks::send_report::TASK, &tasks::send_report::Args { chat_id }).await.unwrap());
    }
    scope
        .eventually(Duration::from_secs(15), "all six reports inside Telegram's delay", || async {
            (fake.in_delay("sendMessage") == STUCK as usize).then_some(())
        })
        .await;
    let one = producer.enqueue(tasks::select_one::TASK, &tasks::select_one::Args {}).await.unwrap();
    let record = one.wait(Duration::from_secs(15)).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    assert_eq!(fake.in_delay("sendMessage"), STUCK as usize, "the reports were still waiting for Telegram");

    for (chat_id, report) in (1..=STUCK).zip(reports) {
        let record = report.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(fake.sent_to(chat_id).len(), 1, "one message to chat {chat_id}");
    }
    let mut worker = worker;
    let exit = tokio::task::spawn_blocking(move || worker.terminate(WAIT)).await.unwrap();
    assert_eq!(exit.code(), Some(0));
}
