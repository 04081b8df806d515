//! Courier Board in a real headless Chromium (chromedriver + fantoccini):
//! log in, find a task by `chat_id`, open it, replay a dead letter and see
//! it succeed, watch a running campaign's progress move without a reload,
//! pause and resume it. Every page is saved as a
//! screenshot under `<target>/board-screenshots/`.
//!
//! Real parts throughout: the `worker` and `board` binaries as processes,
//! NATS, Redis and PostgreSQL, a limit-enforcing fake Bot API (so the
//! campaign is still sending while the browser pauses it).

use std::time::Duration;

use di::TaskStatus;
use it::PgSchema;
use it::browser::Browser;
use it::fake_telegram::FakeTelegram;
use it::process::{ChildProcess, command};
use it::scope::Scope;
use it::servers::free_port;

const PASSWORD: &str = "browser-pass-4Kd";
const WAIT: Duration = Duration::from_secs(30);

/// Reloads `path` until the text of `css` contains `needle`.
async fn until_shown(browser: &Browser, url: &str, css: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        browser.goto(url).await;
        let text = browser.text(css).await;
        if text.contains(needle) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url}: {css} never showed {needle:?}; last: {text:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn campaign_status(env: &[(String, String)], id: &str) -> String {
    let env = env.to_vec();
    let id = id.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        command("producer").envs(env).args(["broadcast", "status", &id, "--json"]).output().unwrap()
    })
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_in_a_real_browser() {
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    // Slow enough that the campaign is still running while the browser works.
    let mut limits = it::test_settings().telegram.limits;
    limits.global_per_second = 5.0;
    limits.global_burst = 5;
    limits.interactive_reserve = 0.2;
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let mut env = it::flood::env(&scope, &fake.url, &limits);
    env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
    let workers = it::flood::workers(1, &env).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board_env = env.clone();
    board_env.push(("COURIER_BOARD__ADDR".into(), addr.clone()));
    board_env.push(("COURIER_BOARD__PASSWORD".into(), PASSWORD.into()));
    let mut board =
        tokio::task::spawn_blocking(move || ChildProcess::spawn("board", &board_env, "board ready")).await.unwrap();
    let base = format!("http://{addr}");

    // Two messages to the chat the test looks for, one to another.
    let producer = scope.producer().await;
    let mut sent = Vec::new();
    for (chat_id, text) in [(700_001, "hello board"), (700_002, "someone else"), (700_001, "hello again")] {
        let args = tasks::send_message::Args { chat_id, text: text.into(), ..Default::default() };
        sent.push(producer.enqueue(tasks::send_message::TASK, &args).await.unwrap().task_id);
    }
    for id in &sent {
        assert_eq!(producer.wait(id, WAIT).await.unwrap().status, TaskStatus::Success);
    }
    // A dead letter whose cause is gone: a replay succeeds.
    let dead_id = it::unique("board-dead");
    let payload = di::Envelope::new(dead_id.clone(), "noop", &tasks::noop::Args {}).unwrap().to_msgpack().unwrap();
    let subject = scope.settings.nats.subject.clone();
    producer
        .publisher()
        .dead_letter(payload.into(), "Fatal: the cause is fixed now", Some(&dead_id), 3, &dead_id, &subject)
        .await
        .unwrap();
    // A campaign of 300 recipients at 4 a second: over a minute of sending.
    let campaign = it::unique("board_campaign");
    let recipients = std::env::temp_dir().join(format!("{campaign}.csv"));
    let rows: String = (0..300).map(|i| format!("{}\n", 800_000 + i)).collect();
    std::fs::write(&recipients, format!("chat_id\n{rows}")).unwrap();
    let start = {
        let (env, file, id) = (env.clone(), recipients.clone(), campaign.clone());
        tokio::task::spawn_blocking(move || {
            command("producer")
                .envs(env)
                .args(["broadcast", "start", "--task", "send_message", "--kwargs", r#"{"text":"news"}"#, "--id", &id])
                .arg("--recipients")
                .arg(file)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));

    let browser = Browser::start().await;
    // Log in.
    browser.goto(&format!("{base}/")).await;
    browser.wait_for_text("h1", "Log in", WAIT).await;
    browser.screenshot("01-login").await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#login").await;
    browser.wait_for_text("h1", "Overview", WAIT).await;
    browser.wait_for_text("#workers", ":", WAIT).await;
    browser.screenshot("02-overview").await;

    // Find the chat's tasks by chat_id, open one.
    browser.goto(&format!("{base}/tasks")).await;
    browser.fill("#key", "chat_id=700001").await;
    browser.click("#search-button").await;
    // The page lists every task before the search answers: wait for the
    // answer (both of the chat's tasks, not the other chat's), not for the
    // first listing that happens to show one of them.
    browser
        .wait_until_text("#results", "both of chat 700001's tasks and not the other chat's", WAIT, |results| {
            results.contains(&sent[0]) && results.contains(&sent[2]) && !results.contains(&sent[1])
        })
        .await;
    browser.screenshot("03-search-by-chat-id").await;
    browser.click(&format!("a[href='/tasks/{}']", sent[0])).await;
    browser.wait_for_text("#task-status", "success", WAIT).await;
    let arguments = browser.text("#task-args").await;
    assert!(arguments.contains("700001") && arguments.contains("hello board"), "{arguments}");
    browser.screenshot("04-task").await;

    // Replay the dead letter; it runs and succeeds.
    browser.goto(&format!("{base}/dead-letters")).await;
    browser.wait_for_text("#dead-letters", &dead_id, WAIT).await;
    browser.screenshot("05-dead-letters").await;
    browser.click(&format!("tr[data-task-id='{dead_id}'] button.replay")).await;
    browser.wait_for_text("#flash", "replayed", WAIT).await;
    let record = producer.wait(&dead_id, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    until_shown(&browser, &format!("{base}/tasks/{dead_id}"), "#task-status", "success").await;
    browser.screenshot("06-replayed-task").await;

    // Pause the running campaign, then resume it.
    let row = format!("#campaign-{campaign}");
    until_shown(&browser, &format!("{base}/campaigns"), &format!("{row} td.status"), "running").await;
    browser.screenshot("07-campaign-running").await;
    // The progress bar moves on without a reload (the page refreshes it).
    let caption = format!("{row} .bar span");
    let before = browser.text(&caption).await;
    browser.wait_until_text(&caption, &format!("a caption other than {before:?}"), WAIT, |now| now != before).await;
    browser.click(&format!("{row} button.pause")).await;
    until_shown(&browser, &format!("{base}/campaigns"), &format!("{row} td.status"), "paused").await;
    assert_eq!(campaign_status(&env, &campaign).await, "paused");
    browser.screenshot("08-campaign-paused").await;
    browser.click(&format!("{row} button.resume")).await;
    until_shown(&browser, &format!("{base}/campaigns"), &format!("{row} td.status"), "running").await;
    assert_eq!(campaign_status(&env, &campaign).await, "running");
    browser.screenshot("09-campaign-resumed").await;

    // The other pages render.
    browser.goto(&format!("{base}/schedules")).await;
    browser.wait_for_text("h1", "Schedules", WAIT).await;
    browser.screenshot("10-schedules").await;
    browser.goto(&format!("{base}/flood")).await;
    browser.wait_for_text("#flood", "global", WAIT).await;
    browser.screenshot("11-flood-control").await;

    // Every action left an audit line naming who did it.
    let log = board.log();
    for action in ["login", "replay dead letter", "pause campaign", "resume campaign"] {
        assert!(
            log.contains(&format!("action=\"{action}\"")) || log.contains(&format!("action={action}")),
            "{action}:\n{log}"
        );
    }
    assert!(!log.contains(PASSWORD));
    let _ = std::fs::remove_file(&recipients);
    // Stop the sends.
    let env_cancel = env.clone();
    let _ = tokio::task::spawn_blocking(move || {
        command("producer").envs(env_cancel).args(["broadcast", "cancel", &campaign]).output()
    })
    .await;
    drop(browser);
    board.terminate(Duration::from_secs(5));
    drop(workers);
}
