//! Scale-out on a real NATS cluster: three `nats-server` processes with
//! routes and JetStream on loopback, the task stream at three replicas,
//! three worker processes given all three URLs. 5,000 `send_report` tasks;
//! mid-run the node that leads the stream is killed with SIGKILL, then
//! started again. No task is lost, no report is sent twice (nothing but the
//! broker failed, so at-least-once delivers exactly once here), the workers
//! reconnect by themselves, and `/readyz` answers throughout and is ready
//! again at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use it::PgSchema;
use it::fake_telegram::FakeTelegram;
use it::process::ChildProcess;
use it::scope::Scope;
use it::servers::PrivateNatsCluster;
use settings::SecretUrls;

const N: i64 = 5_000;
const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_killed_mid_run_loses_no_task_and_sends_no_report_twice() {
    let mut cluster = tokio::task::spawn_blocking(PrivateNatsCluster::start).await.unwrap();
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(cluster.urls());
    scope.settings.nats.stream_replicas = 3;
    let schema = PgSchema::create().await;
    let fake = FakeTelegram::start().await;
    let mut env = scope.env();
    env.extend([
        ("COURIER_NATS__STREAM_REPLICAS".to_owned(), "3".to_owned()),
        ("COURIER_DATABASE__URL".to_owned(), schema.url.clone()),
        ("COURIER_DATABASE__MAX_CONNECTIONS".to_owned(), "16".to_owned()),
        ("COURIER_WORKER__CONCURRENCY".to_owned(), "16".to_owned()),
        ("COURIER_TELEGRAM__TOKEN".to_owned(), "123456:TEST-TOKEN".to_owned()),
        ("COURIER_TELEGRAM__API_URL".to_owned(), fake.url.clone()),
        // The fake has no limits here: this test is about the broker.
        ("COURIER_TELEGRAM__LIMITS__ENFORCE".to_owned(), "false".to_owned()),
    ]);
    let (workers, addrs) = ChildProcess::start_many(&env, 3).await;
    let producer = scope.producer().await;
    let js = scope.jetstream().await;
    let stream = scope.settings.nats.stream.clone();
    let info = js.get_stream(&stream).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "the stream has three replicas");

    // Enqueue all of it (the workers start on it at once).
    let ids: Vec<String> = futures_util::stream::iter(1..=N)
        .map(|chat_id| {
            let producer = producer.clone();
            async move {
                let args = tasks::send_report::Args { chat_id };
                let id = format!("report-{chat_id}");
                producer.enqueue_with_id(tasks::send_report::TASK, id.clone(), &args).await.expect("enqueued");
                id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    // Mid-run: kill the stream's leader.
    let deadline = Instant::now() + WAIT;
    while fake.accepted_count() < 1_000 {
        assert!(Instant::now() < deadline, "no progress before the kill: {} sent", fake.accepted_count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = js.get_stream(&stream).await.unwrap().info().await.unwrap().cluster.clone();
    let leader = leader.and_then(|c| c.leader).expect("the stream has a leader");
    let victim: usize = leader.trim_start_matches("node-").parse().expect("a node-<n> name");
    let sent_at_kill = fake.accepted_count();
    let killed = Instant::now();
    cluster.nodes[victim].stop();

    // /readyz answers (within 3 s) throughout, and says why while pulls go
    // unanswered: (ms since the kill, worker, status), until every task is done.
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (addrs, polling) = (addrs.clone(), polling.clone());
        tokio::spawn(async move {
            let mut seen: Vec<(u128, usize, u16)> = Vec::new();
            while polling.load(Ordering::Relaxed) {
                for (i, addr) in addrs.iter().enumerate() {
                    let answer = tokio::time::timeout(Duration::from_secs(3), it::http_get(addr, "/readyz")).await;
                    let (status, _) =
                        answer.unwrap_or_else(|_| panic!("worker {i}'s /readyz did not answer within 3 s"));
                    assert!(status == 200 || status == 503, "worker {i}: /readyz {status}");
                    seen.push((killed.elapsed().as_millis(), i, status));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        cluster.nodes[victim].restart();
        cluster.wait_ready(victim);
    });

    // Every task ends well.
    for id in &ids {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("task {id} lost: {e}"));
        assert_eq!(record.status, di::TaskStatus::Success, "task {id}: {record:?}");
    }
    let finished = killed.elapsed();
    polling.store(false, Ordering::Relaxed);
    let seen = poller.await.expect("/readyz answered throughout");
    // Each chat got its report exactly once.
    let mut per_chat: HashMap<i64, u32> = HashMap::new();
    for (chat, _, _) in fake.accepted() {
        *per_chat.entry(chat).or_default() += 1;
    }
    let twice: Vec<(&i64, &u32)> = per_chat.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "reports sent more than once: {twice:?}");
    assert_eq!(per_chat.len() as i64, N, "every chat got its report");
    // The longest pause in sending after the kill: what the failover cost.
    let mut times: Vec<Instant> = fake.accepted().into_iter().map(|(_, _, at)| at).filter(|at| *at >= killed).collect();
    times.sort_unstable();
    let (stall, stall_from) = times.windows(2).map(|w| (w[1] - w[0], w[0] - killed)).max().unwrap_or_default();
    let not_ready: Vec<&(u128, usize, u16)> = seen.iter().filter(|(_, _, status)| *status == 503).collect();
    let not_ready_span = not_ready.first().zip(not_ready.last()).map(|(a, b)| (a.0, b.0));
    // A pause in sending longer than a pull's answer time plus a check is a
    // pause /readyz reported.
    if stall > Duration::from_secs(6) {
        assert!(!not_ready.is_empty(), "sending paused {stall:?} and /readyz never said so: {seen:?}");
    }
    let first_after = times.first().map(|t| *t - killed).unwrap_or_default();

    // Every worker is ready again and still running (they reconnected by themselves).
    for (i, addr) in addrs.iter().enumerate() {
        scope
            .eventually(Duration::from_secs(30), &format!("worker {i} ready again"), || async {
                (it::http_get(addr, "/readyz").await.0 == 200).then_some(())
            })
            .await;
    }
    for worker in &workers {
        assert!(worker.log().contains("worker ready"), "{}", worker.log());
    }
    eprintln!(
        "{N} reports over a 3-node cluster; leader {leader} killed after {sent_at_kill} sends, restarted {:.1} s \
         later; first send after the kill {:.2} s, longest pause {:.2} s from {:.2} s, all done {:.1} s after \
         the kill; /readyz 503 in {} of {} answers, between {not_ready_span:?} ms after the kill",
        (restarted - killed).as_secs_f64(),
        first_after.as_secs_f64(),
        stall.as_secs_f64(),
        stall_from.as_secs_f64(),
        finished.as_secs_f64(),
        not_ready.len(),
        seen.len(),
    );
    drop(workers);
}
