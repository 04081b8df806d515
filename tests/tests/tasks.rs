//! The shipped tasks with test doubles swapped in through shaku overrides,
//! the per-task session (commit, rollback), and the migrations on both
//! databases.

use std::sync::Arc;

use di::shaku::HasComponent;
use di::testing::{InMemoryResultStore, RecordingBot, TestRuntime};
use di::{AppContainer, BotError, Disposition, Executor, InMemoryEnqueuer, Outcome, Registry, SqlxDb, TaskStatus};
use di::{Db, sqlx};
use it::{PgSchema, test_settings};
use settings::SecretUrl;
use tasks::{send_report, test_di_task};

/// Inserts a report item, then fails (or panics): its insert must vanish.
mod insert_then_fail {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub chat_id: i64,
        pub panic: bool,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<()> {
        {
            let mut db = ctx.db().await?;
            di::sqlx::query("INSERT INTO report_items (chat_id, label, amount) VALUES ($1, 'tmp', 1)")
                .bind(args.chat_id)
                .execute(&mut *db)
                .await?;
        }
        if args.panic {
            panic!("after the insert");
        }
        Err(Failure::fatal("after the insert"))
    }

    register_task!(run: Args => ());
}

/// Enqueues two follow-ups.
mod fan_out {
    use di::prelude::*;

    pub async fn run(ctx: TaskContext, _args: ()) -> TaskResult<Vec<String>> {
        let a = ctx.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await?;
        let b = ctx.enqueue(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 3 }).await?;
        Ok(vec![a, b])
    }

    register_task!(run: () => Vec<String>);
}

async fn runtime_with_schema() -> TestRuntime {
    let rt = TestRuntime::new().await.unwrap();
    tasks::MIGRATOR.run(rt.mocks.db.pool()).await.expect("migrations on SQLite");
    rt
}

async fn count(pool: &sqlx::AnyPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn test_di_task_selects_and_messages_through_the_doubles() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run(test_di_task::TASK, &test_di_task::Args { chat_id: 42 }).await;
    let Outcome::Success(value) = exec.outcome else { panic!("{:?}", exec.outcome) };
    let output = test_di_task::TASK.decode_output(value).unwrap();
    assert_eq!(output.select_one, 1);
    assert_eq!(output.db_backend, "SQLite");
    assert_eq!(output.chat_id, 42);
    let sent = rt.mocks.bot.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].chat_id, 42);
    assert!(sent[0].text.contains(exec.task_id.as_deref().unwrap()), "{}", sent[0].text);
    let record = rt.mocks.store.records()[exec.task_id.as_deref().unwrap()].clone();
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(test_di_task::TASK.decode_output(record.return_value).unwrap(), output);
}

#[tokio::test]
async fn send_report_twice_with_one_id_sends_once_and_writes_one_row() {
    let rt = runtime_with_schema().await;
    let pool = rt.mocks.db.pool();
    for (label, amount) in [("a", 5_i64), ("b", 7)] {
        sqlx::query("INSERT INTO report_items (chat_id, label, amount) VALUES (9, $1, $2)")
            .bind(label)
            .bind(amount)
            .execute(pool)
            .await
            .unwrap();
    }
    let args = send_report::Args { chat_id: 9 };
    let first = rt.run_with_id(send_report::TASK, "report-9", &args, 1).await;
    let second = rt.run_with_id(send_report::TASK, "report-9", &args, 2).await;
    let decode = |o: Outcome| match o {
        Outcome::Success(v) => send_report::TASK.decode_output(v).unwrap(),
        other => panic!("{other:?}"),
    };
    let (first, second) = (decode(first.outcome), decode(second.outcome));
    assert_eq!((first.item_count, first.total, first.already_sent), (2, 12, false));
    assert_eq!((second.item_count, second.total, second.already_sent), (2, 12, true));
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(rt.mocks.bot.sent().len(), 1, "one message");
    assert_eq!(count(pool, "SELECT COUNT(*) FROM report_deliveries").await, 1, "one row");

    rt.run_with_id(send_report::TASK, "report-9-again", &args, 1).await;
    assert_eq!(rt.mocks.bot.sent().len(), 2, "another task id is another report");
}

#[tokio::test]
async fn failure_after_an_insert_rolls_it_back() {
    let rt = runtime_with_schema().await;
    for panic in [false, true] {
        let exec = rt.run(insert_then_fail::TASK, &insert_then_fail::Args { chat_id: 77, panic }).await;
        assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }), "{:?}", exec.outcome);
    }
    assert_eq!(count(rt.mocks.db.pool(), "SELECT COUNT(*) FROM report_items").await, 0);
    // The connection went back to the pool: the next task can use it.
    let exec = rt.run(test_di_task::TASK, &test_di_task::Args { chat_id: 1 }).await;
    assert_eq!(exec.disposition, Disposition::Ack);
}

#[tokio::test]
async fn refused_message_rolls_back_the_delivery_claim() {
    let rt = runtime_with_schema().await;
    rt.mocks.bot.fail_next(BotError::Rejected("Forbidden: bot was blocked by the user".into()));
    let exec = rt.run_with_id(send_report::TASK, "blocked-1", &send_report::Args { chat_id: 4 }, 1).await;
    assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }), "{:?}", exec.outcome);
    assert_eq!(count(rt.mocks.db.pool(), "SELECT COUNT(*) FROM report_deliveries").await, 0);
    assert!(rt.mocks.bot.sent().is_empty());
}

#[tokio::test]
async fn follow_up_tasks_get_stable_ids() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run_with_id(fan_out::TASK, "parent", &(), 1).await;
    assert_eq!(exec.disposition, Disposition::Ack);
    let queued = rt.enqueuer.queued();
    let names: Vec<_> = queued.iter().map(|e| (e.task_id.as_str(), e.task_name.as_str())).collect();
    assert_eq!(names, vec![("parent.1", "noop"), ("parent.2", "test_di_task")]);
    assert_eq!(queued[1].decode_args::<tasks::test_di_task::Args>().unwrap().chat_id, 3);
    assert_eq!(queued[0].labels["parent_task_id"], rmpv::Value::from("parent"));
}

#[tokio::test]
async fn migrations_and_send_report_on_postgres() {
    let schema = PgSchema::create().await;
    let mut settings = test_settings();
    settings.database.url = SecretUrl::new(schema.url.clone());
    let bot = RecordingBot::new();
    let store = InMemoryResultStore::new();
    let container =
        AppContainer::builder(&settings).with_bot(bot.clone()).with_store(store.clone()).build().await.unwrap();
    let module = container.module().clone();
    let db: Arc<dyn Db> = module.resolve();
    assert_eq!(db.backend(), "PostgreSQL");
    tasks::MIGRATOR.run(db.pool()).await.expect("migrations on PostgreSQL");
    tasks::MIGRATOR.run(db.pool()).await.expect("migrations are idempotent");
    sqlx::query("INSERT INTO report_items (chat_id, label, amount) VALUES (1, 'x', 40), (1, 'y', 2)")
        .execute(db.pool())
        .await
        .unwrap();

    let registry = Arc::new(Registry::from_inventory().unwrap());
    let executor =
        Executor::new(registry, module.clone(), Arc::new(InMemoryEnqueuer::new()), di::DecodeLimits::DEFAULT);
    let bytes = send_report::TASK.envelope_with_id("pg-1".into(), &send_report::Args { chat_id: 1 }).unwrap();
    let bytes = bytes.to_msgpack().unwrap();
    for attempt in 1..=2 {
        let exec = executor.process_attempt(&bytes, attempt).await.unwrap();
        assert_eq!(exec.disposition, Disposition::Ack, "{:?}", exec.outcome);
    }
    assert_eq!(bot.sent().len(), 1);
    assert_eq!(bot.sent()[0].text, "Your report: 2 items, total 42.");
    assert_eq!(count(db.pool(), "SELECT COUNT(*) FROM report_deliveries").await, 1);
    drop((db, module));
    container.shutdown().await;
}

#[tokio::test]
async fn sqlite_memory_db_is_a_working_double() {
    let db = SqlxDb::sqlite_in_memory().await.unwrap();
    tasks::MIGRATOR.run(db.pool()).await.unwrap();
    assert_eq!(count(db.pool(), "SELECT COUNT(*) FROM report_items").await, 0);
}
