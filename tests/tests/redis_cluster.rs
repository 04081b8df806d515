//! The result store and the flood-control governor on a real Redis Cluster:
//! six `redis-server` processes on loopback (three primaries, one replica
//! each), `redis.cluster = true` with every node's URL.
//!
//! - Every store operation works with a task's keys spread over all three
//!   primaries, and the governor's scripts run (their keys share one hash
//!   tag, so one slot).
//! - Three worker processes run 1,500 `send_report` tasks through the
//!   governor; mid-run the primary that holds the governor's slot is killed
//!   with SIGKILL, its replica takes over, and the killed node comes back as
//!   a replica. No task is lost, every chat gets its report, the workers
//!   carry on by themselves.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use di::components::result_store::ScanCursor;
use di::redis_conn::{RedisClient, key_slot};
use di::{Governor, Lane, RedisResultStore, ResultRecord, ResultStore, TaskStatus};
use futures_util::StreamExt;
use it::PgSchema;
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;
use it::servers::PrivateRedisCluster;
use settings::SecretUrls;

const WAIT: Duration = Duration::from_secs(180);

fn record(status: TaskStatus, task_name: &str) -> ResultRecord {
    ResultRecord::new(task_name, status, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_the_governor_work_with_keys_on_every_primary() {
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start).await.unwrap();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrls::new(cluster.urls());
    scope.settings.redis.cluster = true;
    let store = RedisResultStore::connect(&scope.settings.redis).await.expect("the store connects to the cluster");

    // 300 tasks: their keys fall on every primary.
    let prefix = scope.settings.redis.key_prefix.clone();
    let ids: Vec<String> = (0..300).map(|i| format!("task-{i}")).collect();
    let primaries: HashSet<usize> =
        ids.iter().filter_map(|id| cluster.primary_of(key_slot(format!("{prefix}{id}").as_bytes()), &[])).collect();
    assert_eq!(primaries.len(), 3, "the ids' keys cover every primary");

    for id in &ids {
        assert!(store.put_if_absent(id, &record(TaskStatus::Queued, "noop")).await.unwrap(), "{id} is new");
        let before = store.begin(id, &record(TaskStatus::Running, "noop")).await.unwrap().expect("queued before");
        assert_eq!(before.status, TaskStatus::Queued, "{id}: begin returns what was there");
    }
    // A walk over the unfinished records visits every primary.
    let mut found = HashMap::new();
    let mut cursor = ScanCursor::default();
    loop {
        let (next, page) = store.unfinished_page(cursor).await.unwrap();
        found.extend(page.into_iter().map(|(id, r)| (id, r.status)));
        let Some(next) = next else { break };
        cursor = next;
    }
    for id in &ids {
        assert_eq!(found.get(id), Some(&TaskStatus::Running), "the walk found {id} running");
    }

    for (i, id) in ids.iter().enumerate() {
        let status = if i % 30 == 0 { TaskStatus::Cancelled } else { TaskStatus::Success };
        store.put(id, &record(status, "noop")).await.unwrap();
        let again = store.begin(id, &record(TaskStatus::Running, "noop")).await.unwrap().expect("a record");
        assert_eq!(again.status, status, "{id}: begin returns the final record over the running one");
        store.put(id, &record(status, "noop")).await.unwrap();
        assert_eq!(store.get(id).await.unwrap().map(|r| r.status), Some(status), "{id}");
    }
    assert_eq!(store.count_final(&ids).await.unwrap(), ids.len(), "EXISTS over every slot");
    let cancelled = store.cancelled_among(&ids).await.unwrap();
    let expected: Vec<String> = ids.iter().step_by(30).cloned().collect();
    assert_eq!(cancelled, expected, "MGET over every slot");
    let progress = di::TaskProgress::new(0.5, "half");
    store.set_progress(&ids[1], &progress).await.unwrap();
    assert_eq!(store.progress(&ids[1]).await.unwrap().map(|p| p.fraction), Some(0.5));
    store.delete(&ids[2]).await.unwrap();
    assert!(store.get(&ids[2]).await.unwrap().is_none(), "delete removes both keys");
    store.ping().await.unwrap();

    // The governor's scripts run on the cluster (all their keys share the
    // bot's hash tag), and what one governor records, another one sees.
    let mut limits = scope.settings.telegram.limits.clone();
    limits.global_per_second = 1_000.0;
    let client = || Some(RedisClient::new(&scope.settings.redis).unwrap());
    let (one, two) =
        (Governor::new(77, &prefix, limits.clone(), client()), Governor::new(77, &prefix, limits, client()));
    for chat in 0..20 {
        assert!(matches!(one.admit(chat, Lane::Interactive).await, di::Admission::Go(_)), "chat {chat} admitted");
    }
    one.rate_limited(5, Lane::Interactive, Duration::from_secs(30)).await;
    let seen = two.status().await.expect("the status script runs on the cluster");
    assert_eq!(seen.frozen_count, 1, "the other governor sees the freeze: {seen:?}");
}

#[test]
fn several_redis_urls_need_the_cluster_setting() {
    let mut settings = it::test_settings();
    settings.redis.url = SecretUrls::new("redis://127.0.0.1:7000,redis://127.0.0.1:7001");
    let err = RedisClient::new(&settings.redis).expect_err("two URLs, no cluster");
    assert!(err.to_string().contains("redis.cluster = true"), "{err}");
    settings.redis.cluster = true;
    assert!(RedisClient::new(&settings.redis).is_ok_and(|c| c.is_cluster()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_governors_primary_killed_mid_run_loses_no_task() {
    const N: i64 = 1_500;
    let mut cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start).await.unwrap();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrls::new(cluster.urls());
    scope.settings.redis.cluster = true;
    let schema = PgSchema::create().await;
    let mut limits = scope.settings.telegram.limits.clone();
    limits.global_per_second = 200.0;
    let fake = FakeTelegram::start_with_limits(limits).await;
    let mut env = scope.env_with(&schema, &fake);
    env.extend([
        ("COURIER_DATABASE__MAX_CONNECTIONS".to_owned(), "16".to_owned()),
        ("COURIER_WORKER__CONCURRENCY".to_owned(), "16".to_owned()),
        ("COURIER_TELEGRAM__LIMITS__GLOBAL_PER_SECOND".to_owned(), "200".to_owned()),
        ("RUST_LOG".to_owned(), "info,async_nats=warn,di::governor=debug".to_owned()),
    ]);
    let (workers, addrs) = ChildProcess::start_many(&env, 3).await;
    let producer = scope.producer().await;
    let ids: Vec<String> = futures_util::stream::iter(1..=N)
        .map(|chat_id| {
            let producer = producer.clone();
            async move {
                let id = format!("report-{chat_id}");
                let args = tasks::send_report::Args { chat_id };
                producer.enqueue_with_id(tasks::send_report::TASK, id.clone(), &args).await.expect("enqueued");
                id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    // Mid-run: kill the primary of the governor's slot (bot 1: `tg:{1}:`).
    let deadline = Instant::now() + WAIT;
    while fake.accepted_count() < 300 {
        assert!(Instant::now() < deadline, "no progress before the kill: {} sent", fake.accepted_count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slot = key_slot(b"{1}");
    let victim = cluster.primary_of(slot, &[]).expect("the governor's slot has a primary");
    let sent_at_kill = fake.accepted_count();
    let killed = Instant::now();
    cluster.nodes[victim].stop();
    let promoted = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(now) = cluster.primary_of(slot, &[victim]).filter(|n| *n != victim) {
                cluster.wait_healthy(&[victim]);
                return (now, killed.elapsed());
            }
            assert!(Instant::now() < deadline, "no replica took over the slot within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The killed node comes back (empty: no persistence) as a replica.
    tokio::task::block_in_place(|| {
        cluster.nodes[victim].restart();
        cluster.wait_healthy(&[]);
    });

    for id in &ids {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("task {id} lost: {e}"));
        if record.status != TaskStatus::Success {
            // What the workers said of it, and their warnings.
            let said: Vec<String> = workers
                .iter()
                .flat_map(|w| w.log().lines().map(str::to_owned).collect::<Vec<_>>())
                .filter(|line| line.contains(id.as_str()) || line.contains("WARN"))
                .take(60)
                .collect();
            panic!("task {id}: {record:?}\n{}", said.join("\n"));
        }
    }
    let finished = killed.elapsed();
    let mut per_chat: HashMap<i64, u32> = HashMap::new();
    for (chat, _, _) in fake.accepted() {
        *per_chat.entry(chat).or_default() += 1;
    }
    assert_eq!(per_chat.len() as i64, N, "every chat got its report");
    // A report is sent twice only when its task ran and its outcome could
    // not be recorded (the store's primary was gone): at most what was in
    // flight on the three workers.
    let twice = per_chat.values().filter(|n| **n > 1).count();
    assert!(twice <= 3 * 16, "{twice} reports sent twice, more than the workers had in flight");
    let mut times: Vec<Instant> = fake.accepted().into_iter().map(|(_, _, at)| at).filter(|at| *at >= killed).collect();
    times.sort_unstable();
    let stall = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    for (i, addr) in addrs.iter().enumerate() {
        scope
            .eventually(Duration::from_secs(30), &format!("worker {i} ready"), || async {
                (it::http_get(addr, "/readyz").await.0 == 200).then_some(())
            })
            .await;
    }
    for worker in &workers {
        let log = worker.log();
        assert!(log.contains("worker ready"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        // A governor that fell back to its per-process limit while the
        // primary was gone is shared again once a replica took over.
        if let Some(fell) = log.rfind("flood control falls back") {
            let unavailable: Vec<&str> =
                log.lines().filter(|l| l.contains("flood-control store unavailable")).take(5).collect();
            assert!(
                log[fell..].contains("flood control is shared again"),
                "the governor stayed on its fallback limit; its errors:\n{}",
                unavailable.join("\n")
            );
        }
    }
    eprintln!(
        "{N} reports over a 6-node Redis Cluster; node {victim} (the governor's primary) killed after \
         {sent_at_kill} sends; node {} took over after {:.2} s; longest pause in sending {:.2} s; all done \
         {:.1} s after the kill; {twice} chats got two reports; {} answers of 429",
        promoted.0,
        promoted.1.as_secs_f64(),
        stall.as_secs_f64(),
        finished.as_secs_f64(),
        fake.too_many(),
    );
    drop(workers);
}
