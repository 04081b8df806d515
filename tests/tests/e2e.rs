//! The spec's definition of done, all real processes: NATS, Redis and
//! PostgreSQL running; the `worker` and `bot` binaries as child processes
//! with settings pointing at a fake Telegram; a `/report` update arrives ->
//! the bot enqueues -> the worker logs the execution with the task id ->
//! the result record appears in Redis with its TTL -> the fake Telegram
//! receives the worker's message for that chat -> the task's SELECT ran on
//! PostgreSQL.

use std::time::Duration;

use di::TaskStatus;
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;
use it::{PgSchema, REDIS_URL};
use redis::{self, AsyncCommands};

const WAIT: Duration = Duration::from_secs(30);
const CHAT: i64 = 4242;

fn texts(fake: &FakeTelegram) -> Vec<String> {
    fake.sent_to(CHAT).iter().map(|r| r.body["text"].as_str().unwrap_or_default().to_owned()).collect()
}

// Multi-threaded: the fake Telegram must answer while this thread blocks
// waiting for the child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_command_travels_from_bot_to_worker_to_telegram() {
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    let fake = FakeTelegram::start().await;
    let env = scope.env_with(&schema, &fake);
    let mut worker = ChildProcess::start(&env);
    let mut bot = ChildProcess::spawn("bot", &env, "bot ready");

    fake.push_message(CHAT, "/report");
    let queued = scope
        .eventually(WAIT, "the bot's reply", || async {
            texts(&fake).into_iter().find(|t| t.starts_with("Your report is queued: task "))
        })
        .await;
    let task_id = queued.trim_start_matches("Your report is queued: task ").lines().next().unwrap().to_owned();

    let ready = scope
        .eventually(WAIT, "the worker's message", || async {
            texts(&fake).into_iter().find(|t| t.starts_with("Your report is ready"))
        })
        .await;
    assert!(ready.contains(&task_id), "{ready}");
    assert!(ready.contains("PostgreSQL"), "{ready}");

    let producer = scope.producer().await;
    let record = producer.result(&task_id).await.unwrap().expect("the result record");
    assert_eq!(record.status, TaskStatus::Success);
    let output = tasks::test_di_task::TASK.decode_output(record.return_value).unwrap();
    assert_eq!((output.db_backend.as_str(), output.select_one, output.chat_id), ("PostgreSQL", 1, CHAT));
    let mut conn = redis::Client::open(REDIS_URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = conn.ttl(format!("{}{task_id}", scope.settings.redis.key_prefix)).await.unwrap();
    let want = scope.settings.redis.result_ttl.as_secs() as i64;
    assert!((want - 10..=want).contains(&ttl), "TTL {ttl}, want about {want}");
    let log = worker.log();
    assert!(
        log.lines().any(|l| l.contains("task succeeded") && l.contains(&task_id)),
        "the worker logs the execution with the task id:\n{log}"
    );

    fake.push_message(CHAT, &format!("/status {task_id}"));
    fake.push_message(CHAT, "/status nonsense!!");
    fake.push_message(CHAT, "/frobnicate");
    fake.push_message(CHAT, "/status does-not-exist");
    let replies = scope
        .eventually(WAIT, "four more replies", || async {
            let all = texts(&fake);
            (all.len() >= 6).then_some(all)
        })
        .await;
    assert!(replies.contains(&format!("Task {task_id}: done.")), "{replies:?}");
    assert!(replies.iter().any(|t| t.starts_with("Usage: /status")), "{replies:?}");
    assert!(replies.iter().any(|t| t.starts_with("I don't know that one.")), "{replies:?}");
    assert!(replies.iter().any(|t| t.starts_with("I know no task does-not-exist")), "{replies:?}");

    let (worker_exit, bot_exit) =
        tokio::task::spawn_blocking(move || (worker.terminate(WAIT), bot.terminate(WAIT))).await.unwrap();
    assert_eq!((worker_exit.code(), bot_exit.code()), (Some(0), Some(0)));
}

#[tokio::test]
async fn bot_without_token_refuses_to_start() {
    let scope = Scope::new();
    let out = it::process::command("bot").envs(scope.env()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("telegram.token"));
}
