//! The bot across a restart: the updates it handled are confirmed at
//! shutdown, and an update Telegram serves again (as after a crash) is a
//! duplicate, not a second report. Real processes: NATS, Redis and
//! PostgreSQL, the `worker` and `bot` binaries, a fake Telegram.

use std::time::Duration;

use di::TaskStatus;
use it::PgSchema;
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;

const WAIT: Duration = Duration::from_secs(30);
const CHAT: i64 = 5151;

fn reports(fake: &FakeTelegram) -> usize {
    fake.sent_to(CHAT)
        .iter()
        .filter(|r| r.body["text"].as_str().unwrap_or_default().starts_with("Your report is ready"))
        .count()
}

/// Whether the fake saw a `getUpdates` with `offset` (and, if given, `timeout`).
fn polled(fake: &FakeTelegram, offset: i64, timeout: Option<u64>) -> bool {
    fake.polls()
        .iter()
        .any(|p| p.body["offset"] == offset && timeout.is_none_or(|t| p.body["timeout"].as_u64() == Some(t)))
}

// Multi-threaded: the fake Telegram must answer while this thread blocks
// waiting for the child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_read_again_after_a_restart_is_not_a_second_report() {
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    let fake = FakeTelegram::start().await;
    let env = scope.env_with(&schema, &fake);
    let worker = tokio::task::spawn_blocking({
        let env = env.clone();
        move || ChildProcess::start(&env)
    });
    let worker = worker.await.unwrap();
    let bot = tokio::task::spawn_blocking({
        let env = env.clone();
        move || ChildProcess::spawn("bot", &env, "bot ready")
    });
    let mut bot = bot.await.unwrap();

    let update = fake.push_message(CHAT, "/report");
    scope.eventually(WAIT, "the worker's report", || async { (reports(&fake) == 1).then_some(()) }).await;
    let task_id = format!("report-{CHAT}-{update}");
    let producer = scope.producer().await;
    let record = producer.result(&task_id).await.unwrap().expect("a record under the id derived from the update");
    assert_eq!(record.status, TaskStatus::Success);

    let exit = tokio::task::spawn_blocking(move || bot.terminate(WAIT)).await.unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(
        polled(&fake, update + 1, Some(0)),
        "the bot confirms the update it handled with getUpdates(offset = {}, timeout = 0) at shutdown: {:?}",
        update + 1,
        fake.polls().iter().map(|p| p.body.clone()).collect::<Vec<_>>()
    );

    // Telegram serves the update again (as to a bot that crashed before
    // confirming it); a new bot process reads it.
    fake.serve_again(update);
    let polls_before = fake.polls().len();
    let bot = tokio::task::spawn_blocking(move || ChildProcess::spawn("bot", &env, "bot ready"));
    let mut bot = bot.await.unwrap();
    // Once it polls past the update it has handled it (and published
    // whatever it was going to publish).
    scope
        .eventually(WAIT, "the new bot to read the update again", || async {
            fake.polls()[polls_before..].iter().any(|p| p.body["offset"] == update + 1).then_some(())
        })
        .await;
    let js = scope.jetstream().await;
    let mut stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let published = stream.info().await.unwrap().state.last_sequence;
    assert_eq!(published, 1, "the update read again was dropped as a duplicate, not queued as another report");
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    assert_eq!(reports(&fake), 1, "the chat got exactly one report");

    let mut worker = worker;
    let (bot_exit, worker_exit) =
        tokio::task::spawn_blocking(move || (bot.terminate(WAIT), worker.terminate(WAIT))).await.unwrap();
    assert_eq!((bot_exit.code(), worker_exit.code()), (Some(0), Some(0)));
}
