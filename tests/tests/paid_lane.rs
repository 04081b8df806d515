//! The paid lane end to end: worker processes send `allow_paid_broadcast`
//! messages outside the global limit until the day's Stars are spent, then
//! at the free rate; `producer governor` shows the spend and frozen chats;
//! the shipped `fake-telegram` binary enforces the limits and takes orders
//! over HTTP.

use std::time::{Duration, Instant};

use it::fake_telegram::FakeTelegram;
use it::flood::{env, exactly_once, workers};
use it::process::{ChildProcess, command};
use it::scope::Scope;
use settings::TelegramLimits;
use tasks::send_message;

const WAIT: Duration = Duration::from_secs(120);

fn limits() -> TelegramLimits {
    let mut limits = it::test_settings().telegram.limits;
    limits.global_per_second = 10.0;
    limits.global_burst = 5;
    limits.private_per_second = 1.0;
    limits.private_burst = 3;
    limits.interactive_reserve = 0.0;
    limits.paid_per_second = 200.0;
    limits.paid_burst = 20;
    limits.paid_daily_stars = 20;
    limits
}

/// `producer governor --json` with `env`.
fn governor_json(env: &[(String, String)]) -> serde_json::Value {
    let out = command("producer").envs(env.iter().cloned()).args(["governor", "--json"]).output().unwrap();
    assert!(out.status.success(), "producer governor: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_broadcasts_pass_the_global_limit_until_the_stars_are_spent_then_go_at_the_free_rate() {
    let limits = limits();
    let scope = Scope::new();
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let producer = scope.producer().await;
    let env = env(&scope, &fake.url, &limits);
    // 20 Stars: 200 paid messages; 40 more at the free 10/s.
    let mut texts = Vec::new();
    for chat_id in 1..=240 {
        let text = format!("paid {chat_id}");
        let envelope = send_message::TASK.envelope(&send_message::Args::text(chat_id, text.clone())).unwrap();
        producer.enqueue_envelope(&envelope, Some(di::Lane::Paid)).await.unwrap();
        texts.push(text);
    }
    let _workers = workers(2, &env).await;
    scope.eventually(WAIT, "every message accepted", || async { (fake.accepted().len() >= 240).then_some(()) }).await;
    assert_eq!(fake.too_many(), 0, "the fake answered 429");
    exactly_once(&fake, &texts);
    let paid: Vec<Instant> =
        fake.sent_messages().iter().filter(|r| r.body["allow_paid_broadcast"] == true).map(|r| r.at).collect();
    assert_eq!(paid.len(), 200, "sent paid: exactly the day's 20 Stars");
    assert_eq!(fake.rules(|rules| rules.paid_accepted), 200);
    // 200 at the free 10/s would take 20 s.
    let span = *paid.iter().max().unwrap() - *paid.iter().min().unwrap();
    assert!(span < Duration::from_secs(10), "200 paid messages took {span:?}");

    let status = governor_json(&env);
    assert_eq!(status["paid_stars_today"], 20.0, "{status}");
    assert_eq!(status["paid_stars_budget"], 20, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_telegram_binary_enforces_the_limits_and_producer_governor_shows_a_frozen_chat() {
    let limits = limits();
    let scope = Scope::new();
    let addr = format!("127.0.0.1:{}", it::servers::free_port());
    let url = format!("http://{addr}/");
    let env = env(&scope, &url, &limits);
    let _fake = tokio::task::spawn_blocking({
        let (env, addr) = (env.clone(), addr.clone());
        move || ChildProcess::spawn_with_args("fake-telegram", &env, &["--addr", &addr], "fake Bot API at")
    })
    .await
    .unwrap();
    let (status, _) = it::http_post_json(&addr, "/_fake/429", r#"{"chat_id": 42, "retry_after": 30}"#).await;
    assert_eq!(status, 200);
    let _workers = workers(1, &env).await;
    let producer = scope.producer().await;
    for chat_id in [41, 42, 43] {
        let args = send_message::Args::text(chat_id, format!("to {chat_id}"));
        producer.enqueue(send_message::TASK, &args).await.unwrap();
    }
    scope
        .eventually(WAIT, "the other two sent", || async {
            let (_, stats) = it::http_get(&addr, "/_fake/stats").await;
            let stats: serde_json::Value = serde_json::from_str(&stats).ok()?;
            (stats["accepted"] == 2 && stats["too_many"] == 1).then_some(())
        })
        .await;
    let status = governor_json(&env);
    assert_eq!(status["frozen_count"], 1, "{status}");
    assert_eq!(status["frozen"][0]["key"], "chat 42", "{status}");
    let left = status["frozen"][0]["seconds_left"].as_f64().unwrap();
    assert!(left > 20.0 && left <= 30.0, "{status}");
}
