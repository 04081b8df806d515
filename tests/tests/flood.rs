//! Flood control end to end: worker processes sharing one bot's budget
//! against a fake Bot API that enforces the same limits as the settings and
//! answers 429 like Telegram when they are passed.

use std::time::{Duration, Instant};

use it::fake_telegram::FakeTelegram;
use it::flood::{exactly_once, workers};
use it::scope::Scope;
use settings::TelegramLimits;
use tasks::send_message;

const WAIT: Duration = Duration::from_secs(120);

fn limits(global_per_second: f64) -> TelegramLimits {
    let mut limits = it::test_settings().telegram.limits;
    limits.global_per_second = global_per_second;
    limits.global_burst = 10;
    limits.private_per_second = 1.0;
    limits.private_burst = 3;
    limits.group_per_minute = 60.0;
    limits.group_burst = 1;
    // Every task here is transactional: the whole rate is theirs.
    limits.interactive_reserve = 0.0;
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_send_2000_messages_at_the_limit_with_zero_429s() {
    let limits = limits(100.0);
    let scope = Scope::new();
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let producer = scope.producer().await;
    // 190 private chats and 10 groups, ten messages each.
    let chats: Vec<i64> = (1..=190).chain(-10..=-1).collect();
    let mut texts = Vec::new();
    for round in 0..10 {
        for &chat_id in &chats {
            let text = format!("message {round} to {chat_id}");
            producer.enqueue(send_message::TASK, &send_message::Args::text(chat_id, text.clone())).await.unwrap();
            texts.push(text);
        }
    }
    let _workers = workers(3, &it::flood::env(&scope, &fake.url, &limits)).await;
    scope
        .eventually(WAIT, "every message accepted", || async { (fake.accepted().len() >= texts.len()).then_some(()) })
        .await;
    assert_eq!(fake.too_many(), 0, "the fake answered 429");
    exactly_once(&fake, &texts);

    // At least 90% of what the limits allow: the global bucket is what
    // binds (2,000 at 100/s after a burst of 10; a chat needs 9 s at most).
    let times: Vec<Instant> = fake.accepted().iter().map(|(_, _, at)| *at).collect();
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    let took = last.duration_since(*first).as_secs_f64();
    let allowed = (texts.len() as f64 - f64::from(limits.global_burst)) / limits.global_per_second;
    assert!(took <= allowed / 0.9, "took {took:.1} s; the limits allow {allowed:.1} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_freezes_its_chat_for_every_worker_and_a_global_one_stops_all_sends() {
    let limits = limits(200.0);
    let scope = Scope::new();
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let producer = scope.producer().await;
    let _workers = workers(2, &it::flood::env(&scope, &fake.url, &limits)).await;
    let send = |chat_id: i64, text: String| {
        let producer = producer.clone();
        async move { producer.enqueue(send_message::TASK, &send_message::Args::text(chat_id, text)).await.unwrap() }
    };

    // One chat refused for 3 s: its first message meets the 429, the
    // next ones wait for the freeze; the others go on.
    fake.rules(|rules| rules.inject_chat_429(500, 3));
    let mut texts = vec!["frozen 0".to_owned()];
    send(500, texts[0].clone()).await;
    scope
        .eventually(WAIT, "the 429", || async {
            fake.sent_messages().iter().any(|r| r.body["chat_id"] == 500).then_some(())
        })
        .await;
    for i in 1..3 {
        texts.push(format!("frozen {i}"));
        send(500, texts[texts.len() - 1].clone()).await;
    }
    for chat_id in 600..640 {
        texts.push(format!("free {chat_id}"));
        send(chat_id, texts[texts.len() - 1].clone()).await;
    }
    scope.eventually(WAIT, "all sent", || async { (fake.accepted().len() >= texts.len()).then_some(()) }).await;
    let requests = fake.sent_messages();
    let to_frozen: Vec<Instant> = requests.iter().filter(|r| r.body["chat_id"] == 500).map(|r| r.at).collect();
    let refused = to_frozen[0];
    let during: Vec<&Instant> =
        to_frozen.iter().skip(1).filter(|at| at.duration_since(refused) < Duration::from_millis(2_900)).collect();
    assert!(during.is_empty(), "{} requests to the frozen chat within its 3 s", during.len());
    let others_during = fake
        .accepted()
        .iter()
        .filter(|(chat, _, at)| *chat != 500 && at.duration_since(refused) < Duration::from_secs(3))
        .count();
    assert!(others_during > 0, "other chats waited for the frozen one");
    exactly_once(&fake, &texts);

    // A bot-wide 429 for 3 s. Three chats meet it: the governor freezes
    // the whole bot, so chats that were never refused get nothing either
    // until it ends (without the bot-wide freeze they would be sent at once).
    fake.rules(|rules| rules.inject_global_429(3));
    let refused_chats = 700..703;
    for chat_id in refused_chats.clone() {
        texts.push(format!("global {chat_id}"));
        send(chat_id, texts[texts.len() - 1].clone()).await;
    }
    let third_refusal = scope
        .eventually(WAIT, "three chats refused", || async {
            let at: Vec<Instant> = fake
                .sent_messages()
                .iter()
                .filter(|r| r.body["chat_id"].as_i64().is_some_and(|c| refused_chats.contains(&c)))
                .map(|r| r.at)
                .collect();
            (at.len() >= 3).then(|| at.into_iter().max().unwrap())
        })
        .await;
    for chat_id in 710..730 {
        texts.push(format!("fresh {chat_id}"));
        send(chat_id, texts[texts.len() - 1].clone()).await;
    }
    scope.eventually(WAIT, "all sent", || async { (fake.accepted().len() >= texts.len()).then_some(()) }).await;
    let early: Vec<Duration> = fake
        .sent_messages()
        .iter()
        .filter(|r| r.body["chat_id"].as_i64().is_some_and(|c| (710..730).contains(&c)))
        .map(|r| r.at.saturating_duration_since(third_refusal))
        .filter(|since| *since < Duration::from_millis(2_500))
        .collect();
    assert!(early.is_empty(), "chats never refused were sent to during the bot-wide freeze: {early:?}");
    exactly_once(&fake, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_deactivated_and_unknown_chats_fail_for_good_with_a_reason_code() {
    let limits = limits(100.0);
    let mut scope = Scope::new();
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    scope.settings.telegram.token = Some(settings::Secret::new("123456:TEST-TOKEN"));
    scope.settings.telegram.api_url = fake.url.clone();
    let addr = format!("127.0.0.1:{}", it::servers::free_port());
    scope.settings.worker.http_addr = addr.clone();
    fake.rules(|rules| {
        rules.block(801);
        rules.deactivate(802);
        rules.forget(803);
    });
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    for (chat_id, code) in [(801, "blocked"), (802, "deactivated"), (803, "not_found")] {
        let args = send_message::Args::text(chat_id, "hello");
        let record = producer.enqueue(send_message::TASK, &args).await.unwrap().wait(WAIT).await.unwrap();
        assert_eq!(record.status, di::TaskStatus::Failed, "{record:?}");
        let error = record.error.unwrap();
        assert_eq!(error.exc_type, "Fatal");
        assert!(error.message().contains(&format!("({code})")), "{}", error.message());
        assert_eq!(fake.sent_to(chat_id).len(), 1, "not retried");
    }

    // A 429 is retried after its wait, and the metrics show both.
    fake.rules(|rules| rules.inject_chat_429(804, 1));
    let args = send_message::Args::text(804, "later");
    let record = producer.enqueue(send_message::TASK, &args).await.unwrap().wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (di::TaskStatus::Success, 1), "{record:?}");
    let (_, metrics) = it::http_get(&addr, "/metrics").await;
    assert!(metrics.contains("courier_telegram_sends_total{lane=\"transactional\"} 5"), "{metrics}");
    assert!(
        metrics.contains("courier_telegram_rate_limited_total{lane=\"transactional\",scope=\"chat\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("courier_telegram_flood_fallback 0"), "{metrics}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_a_p99_under_a_second_while_a_10000_broadcast_drains_at_the_limit() {
    let mut limits = limits(200.0);
    limits.interactive_reserve = 0.2;
    let scope = Scope::new();
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let producer = scope.producer().await;
    // The broadcast: one message to each of 10,000 chats, in the bulk lane.
    let broadcast: Vec<_> = (0..10_000_i64).collect();
    for chunk in broadcast.chunks(200) {
        let sends = chunk.iter().map(|i| {
            let producer = producer.clone();
            async move {
                let args = send_message::Args::text(100_000 + i, format!("news {i}"));
                let mut envelope = send_message::TASK.envelope(&args).unwrap();
                envelope.labels.insert("lane".into(), "bulk".into());
                producer.enqueue_envelope(&envelope, None).await.unwrap();
            }
        });
        futures_util::future::join_all(sends).await;
    }
    let _workers = workers(2, &it::flood::env(&scope, &fake.url, &limits)).await;
    scope.eventually(WAIT, "the broadcast under way", || async { (fake.accepted().len() >= 500).then_some(()) }).await;

    // Replies while it drains: enqueue to the message at the fake.
    let mut latencies = Vec::new();
    for i in 0..40_i64 {
        let text = format!("reply {i}");
        let args = send_message::Args::text(900_000 + i, text.clone());
        let mut envelope = send_message::TASK.envelope(&args).unwrap();
        envelope.labels.insert("lane".into(), "interactive".into());
        let asked = Instant::now();
        producer.enqueue_envelope(&envelope, None).await.unwrap();
        let arrived = scope
            .eventually(Duration::from_secs(30), "the reply at the fake", || async {
                fake.accepted().iter().find(|(_, t, _)| t.as_str() == Some(text.as_str())).map(|(_, _, at)| *at)
            })
            .await;
        latencies.push(arrived.duration_since(asked));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = fake.accepted().iter().filter(|(_, t, _)| t.as_str().is_some_and(|t| t.starts_with("news"))).count();
    assert!(drained < 10_000, "the broadcast had finished: the replies did not compete with it");
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "reply latency: p50 {:?}, p99 {:?}; broadcast messages sent meanwhile: {drained}",
        latencies[latencies.len() / 2],
        p99
    );
    assert!(p99 < Duration::from_secs(1), "reply p99 {p99:?} (all: {latencies:?})");
    assert_eq!(fake.too_many(), 0, "the fake answered 429");
}
