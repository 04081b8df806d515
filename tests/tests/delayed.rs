//! Delayed tasks (`enqueue_in`, `enqueue_at`, `producer send --in/--at`):
//! never early, on time, kept by the broker through restarts of NATS and
//! Redis, cancellable, and costing the workers no memory while they wait.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use di::TaskStatus;
use futures_util::StreamExt;
use it::PgSchema;
use it::process::ChildProcess;
use it::scope::Scope;
use it::servers::{PrivateNats, PrivateRedis};
use settings::{SecretUrl, SecretUrls};

const WAIT: Duration = Duration::from_secs(60);

fn unix_ms(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// `heartbeats` rows by task id: (first run, Unix ms; runs).
async fn heartbeats(pg: &sqlx::PgPool) -> HashMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT task_id, ran_at_ms, runs FROM heartbeats").fetch_all(pg).await.unwrap_or_default();
    rows.into_iter().map(|(id, at, runs)| (id, (at, runs))).collect()
}

/// A window in which a service was down, from the kill to listening again.
#[derive(Debug, Clone, Copy)]
struct Outage {
    down: i64,
    up: i64,
}

/// The acceptance test, calm: 1,000 heartbeat tasks due 1-10 s from now,
/// two worker processes. None runs before its due time; each runs within
/// 1 s of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_are_never_early_and_run_within_a_second() {
    thousand_delayed_tasks(false).await;
}

/// The acceptance test through restarts: the same, with a NATS restart,
/// a Redis restart and a worker killed (SIGKILL) while they wait. None runs before its due time;
/// none is lost; each runs within 1 s of its due time, except those due
/// around an outage (from 2 s before the kill until the clients are back,
/// `RECOVERY` after the server listens again), which run within 1 s of that;
/// a task an outage held back that long may meet the next outage too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_survive_nats_and_redis_restarts_and_a_killed_worker() {
    thousand_delayed_tasks(true).await;
}

async fn thousand_delayed_tasks(restarts: bool) {
    /// How long clients may take to notice a restarted server and reconnect
    /// (async-nats backs off between attempts, pullers re-bind, and a request
    /// lost in the restart waits out the client's 5 s timeout).
    const RECOVERY: i64 = 6_000;
    const N: usize = 1_000;
    let mut nats = PrivateNats::start();
    let mut redis = PrivateRedis::redis();
    let schema = PgSchema::create().await;
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(nats.url());
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    let mut env = scope.env();
    env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
    env.push(("COURIER_WORKER__CONCURRENCY".into(), "16".into()));
    env.push(("COURIER_DATABASE__MAX_CONNECTIONS".into(), "16".into()));
    let workers = it::flood::workers(2, &env).await;
    let producer = scope.producer().await;

    let start = SystemTime::now() + Duration::from_secs(1);
    let dues: Vec<(String, SystemTime)> = futures_util::stream::iter(0..N)
        .map(|i| {
            let producer = producer.clone();
            let due = start + Duration::from_millis(9_000 * i as u64 / N as u64);
            async move {
                let args = tasks::heartbeat::Args { note: format!("delayed {i}") };
                let handle = producer.enqueue_at(tasks::heartbeat::TASK, &args, due).await.expect("enqueued");
                (handle.task_id, due)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let published = SystemTime::now();
    assert!(published < start + Duration::from_millis(2_500), "enqueueing took too long to test the timing");
    let scheduled = producer.result(&dues[N - 1].0).await.unwrap().expect("a scheduled record");
    assert_eq!(scheduled.status, TaskStatus::Scheduled);
    let due_at = scheduled.due_at.expect("the due time is in the record");
    assert!((due_at - unix_ms(dues[N - 1].1) as f64 / 1000.0).abs() < 0.002, "{due_at}");

    let mut outages = Vec::new();
    if restarts {
        tokio::time::sleep_until(tokio::time::Instant::now() + until(start + Duration::from_secs(2))).await;
        let down = unix_ms(SystemTime::now());
        tokio::task::block_in_place(|| nats.restart());
        outages.push(Outage { down, up: unix_ms(SystemTime::now()) });
        tokio::time::sleep_until(tokio::time::Instant::now() + until(start + Duration::from_secs(5))).await;
        let down = unix_ms(SystemTime::now());
        tokio::task::block_in_place(|| redis.restart());
        outages.push(Outage { down, up: unix_ms(SystemTime::now()) });
        // A worker killed: what it had claimed waits out its lease (10 s),
        // what it had pulled its ack_wait; the other worker takes both.
        tokio::time::sleep_until(tokio::time::Instant::now() + until(start + Duration::from_secs(6))).await;
        let down = unix_ms(SystemTime::now());
        workers[0].signal("KILL");
        outages.push(Outage { down, up: down + 10_000 });
    }

    let pg = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let ran = loop {
        let ran = heartbeats(&pg).await;
        if ran.len() >= N || tokio::time::Instant::now() > deadline {
            break ran;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let logs = || workers.iter().map(ChildProcess::log).collect::<Vec<_>>().join("\n----\n");
    let missing: Vec<&String> = dues.iter().map(|(id, _)| id).filter(|id| !ran.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} of {N} delayed tasks never ran (outages {outages:?}):\n{}", missing.len(), logs());
    let mut late = Vec::new();
    let (mut worst, mut worst_calm, mut calm) = (0, 0, 0);
    for (id, due) in &dues {
        let due = unix_ms(*due);
        let (at, _) = ran[id];
        assert!(at >= due, "task {id} ran {} ms before its due time", due - at);
        // The latest a task may run: 1 s after its due time, or, when it may
        // still be on its way as a service goes (up to 1 s before it), 1 s
        // after that outage's recovery. Outages chain: a task an outage held
        // back may still be on its way when the next one comes.
        let latest = outages.iter().fold(due + 1_000, |latest, o| {
            if latest >= o.down - 1_000 && due <= o.up + RECOVERY {
                latest.max(o.up + RECOVERY + 1_000)
            } else {
                latest
            }
        });
        let allowed = latest - due;
        if at - due > allowed {
            let relative: Vec<i64> = outages.iter().map(|o| due - o.down).collect();
            late.push((id.clone(), at - due, allowed, relative));
        }
        worst = worst.max(at - due);
        if allowed == 1_000 {
            worst_calm = worst_calm.max(at - due);
            calm += 1;
        }
    }
    if !late.is_empty() {
        let worst_late = late.iter().map(|l| l.1 - l.2).max().unwrap_or_default();
        let warnings: String = logs().lines().filter(|l| !l.contains("task{")).take(80).collect::<Vec<_>>().join("\n");
        panic!(
            "{} tasks late, up to {worst_late} ms beyond what is allowed; outages {outages:?}; (id, late, allowed, \
             due - each outage): {late:?}\n{warnings}",
            late.len()
        );
    }
    eprintln!(
        "{N} delayed tasks: none early; the {calm} due away from the restarts at most {worst_calm} ms after their \
         due time, all at most {worst} ms; outages {outages:?}"
    );
}

fn until(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::now()).unwrap_or_default()
}

/// A scheduled task's record says so with its due time; a cancelled one
/// never runs (the mover drops it: only the other reaches the task
/// stream); `producer send --in` schedules too.
#[tokio::test]
async fn scheduled_records_cancel_and_the_cli() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let runs =
        producer.enqueue_in(tasks::noop::TASK, &tasks::noop::Args {}, Duration::from_millis(1_500)).await.unwrap();
    let cancelled =
        producer.enqueue_in(tasks::noop::TASK, &tasks::noop::Args {}, Duration::from_millis(1_500)).await.unwrap();
    let record = producer.result(&runs.task_id).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Scheduled);
    let due = record.due_at.unwrap();
    assert_eq!(producer.cancel(&cancelled.task_id).await.unwrap(), None, "the cancel is recorded");

    let done = runs.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert!(done.started_at.unwrap() >= due, "started {} before due {due}", done.started_at.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(producer.result(&cancelled.task_id).await.unwrap().unwrap().status, TaskStatus::Cancelled);
    let js = scope.jetstream().await;
    let mut tasks_stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    assert_eq!(tasks_stream.info().await.unwrap().state.last_sequence, 1, "only the uncancelled task was moved");
    let delayed = courier::schedule::delayed_stream(&scope.settings.nats);
    let mut delayed = js.get_stream(&delayed).await.unwrap();
    assert_eq!(delayed.info().await.unwrap().state.messages, 0, "both left the delayed stream");

    // The CLI: --in, then the record; --in and --at together are refused.
    let mut env = scope.env();
    env.push(("COURIER_DATABASE__URL".into(), "sqlite::memory:".into()));
    let out = it::process::command("producer")
        .args(["send", "noop", "--in", "1s"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(producer.result(&id).await.unwrap().unwrap().status, TaskStatus::Scheduled);
    assert_eq!(producer.wait(&id, WAIT).await.unwrap().status, TaskStatus::Success);
    // --at: an RFC 3339 time, kept in the record to the millisecond.
    let at = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() + Duration::from_millis(1_500));
    let at_text = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out = it::process::command("producer")
        .args(["send", "noop", "--at", &at_text])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let scheduled = producer.result(&id).await.unwrap().unwrap();
    assert_eq!(scheduled.status, TaskStatus::Scheduled);
    let due = scheduled.due_at.unwrap();
    assert!((due - at.timestamp_millis() as f64 / 1000.0).abs() < 0.002, "due {due}, asked {at_text}");
    let done = producer.wait(&id, WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert!(done.started_at.unwrap() >= due, "started {} before due {due}", done.started_at.unwrap());
    let both = it::process::command("producer")
        .args(["send", "noop", "--in", "1s", "--at", "2030-01-01T00:00:00Z"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", String::from_utf8_lossy(&both.stderr));
    worker.stop().await.unwrap();
}

/// Delayed tasks outlive every worker: the only worker is killed (SIGKILL)
/// while they wait, they come due with no worker running and run none the
/// less when one starts again, never before their due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_outlive_every_worker() {
    const N: usize = 50;
    let scope = Scope::new();
    let env = scope.env();
    let mut first = it::flood::workers(1, &env).await.remove(0);
    let producer = scope.producer().await;
    let due = SystemTime::now() + Duration::from_millis(2_000);
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(producer.enqueue_at(tasks::noop::TASK, &tasks::noop::Args {}, due).await.unwrap().task_id);
    }
    tokio::task::block_in_place(|| {
        first.signal("KILL");
        first.wait(Duration::from_secs(10));
    });
    tokio::time::sleep(until(due) + Duration::from_secs(2)).await;
    for id in &ids {
        let record = producer.result(id).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Scheduled, "nothing ran with no worker: {record:?}");
    }
    let second = it::flood::workers(1, &env).await.remove(0);
    let due = unix_ms(due) as f64 / 1000.0;
    for id in &ids {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("{e}\n{}", second.log()));
        assert_eq!(record.status, TaskStatus::Success);
        assert!(record.started_at.unwrap() >= due, "{id} started {} before due {due}", record.started_at.unwrap());
    }
}

/// Waiting tasks live in the broker and Redis, not in a worker: 100,000
/// tasks due in an hour leave the worker's resident memory where it was,
/// and all of them are indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_cost_the_worker_no_memory() {
    const N: usize = 100_000;
    let scope = Scope::new();
    let worker = it::flood::workers(1, &scope.env()).await.remove(0);
    let producer = scope.producer().await;
    // Warm the worker up (its pools, its first pulls) before the baseline.
    let warm = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    warm.wait(WAIT).await.unwrap();
    let before = it::rss_kib(worker.id());
    let due = SystemTime::now() + Duration::from_secs(3_600);
    futures_util::stream::iter(0..N)
        .map(|_| {
            let producer = producer.clone();
            async move { producer.enqueue_at(tasks::noop::TASK, &tasks::noop::Args {}, due).await.unwrap() }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let redis = redis::Client::open(scope.settings.redis.url.expose()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let index = format!(
        "{}delayed:{{{}}}:due",
        scope.settings.redis.key_prefix,
        courier::schedule::delayed_stream(&scope.settings.nats)
    );
    scope
        .eventually(WAIT, "every waiting task indexed", || {
            let mut conn = conn.clone();
            let index = index.clone();
            async move {
                let n: usize = redis::cmd("ZCARD").arg(&index).query_async(&mut conn).await.unwrap_or(0);
                (n == N).then_some(())
            }
        })
        .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let after = it::rss_kib(worker.id());
    let grown = after.saturating_sub(before);
    eprintln!("worker RSS {before} KiB before, {after} KiB with {N} tasks waiting");
    assert!(grown < 16 * 1024, "the worker grew {grown} KiB holding {N} waiting tasks ({before} -> {after})");
}

/// Fails its first attempt asking for a retry in 11 s, then succeeds.
mod slow_retry {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {}

    pub async fn run(ctx: TaskContext, _args: Args) -> TaskResult<u32> {
        if ctx.attempt() == 1 {
            return Err(Failure::retry_after("not yet", Duration::from_secs(11)));
        }
        Ok(ctx.attempt())
    }

    register_task!(run: Args => u32);
}

/// A retry that waits longer than `nats.postpone_after` (5 s here) is
/// postponed through the delayed stream: while it waits the consumer holds
/// no ack-pending slot for it, and it still runs again on time.
#[tokio::test]
async fn long_retries_wait_in_the_delayed_stream_not_in_ack_pending() {
    let mut scope = Scope::new();
    scope.settings.nats.postpone_after = Duration::from_secs(5);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(slow_retry::TASK, &slow_retry::Args {}).await.unwrap();
    let failed_at = unix_ms(SystemTime::now());
    let js = scope.jetstream().await;
    let delayed = courier::schedule::delayed_stream(&scope.settings.nats);
    scope
        .eventually(WAIT, "the retry waiting in the delayed stream", || async {
            let mut stream = js.get_stream(&delayed).await.ok()?;
            (stream.info().await.ok()?.state.messages == 1).then_some(())
        })
        .await;
    let (messages, _, ack_pending) = scope.backlog().await;
    assert_eq!((messages, ack_pending), (0, 0), "nothing waits in the task stream or holds a slot");
    let waiting = producer.result(&handle.task_id).await.unwrap().unwrap();
    assert_eq!(waiting.status, TaskStatus::Retrying);
    assert!(waiting.due_at.is_some(), "the retrying record says when it is due (a cancel outlives it)");
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(record.attempt, 2);
    let waited = (record.started_at.unwrap() * 1000.0) as i64 - failed_at;
    assert!((10_900..13_000).contains(&waited), "the retry ran {waited} ms after the failure");
    worker.stop().await.unwrap();
}

/// The index is rebuilt whenever it is not known to be whole on the Redis
/// server answering: a rebuilder that died halfway (marker `building`), or
/// a Redis that came back from a snapshot holding an old marker and an
/// index without the newest entries. Hostile headers in the delayed stream
/// (`Nats-Expected-Stream`, a label trying to set Courier's controls) do
/// not stop a move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_half_built_index_is_rebuilt_and_hostile_headers_do_not_block_moves() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let client = redis::Client::open(scope.settings.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!(
        "{}delayed:{{{}}}",
        scope.settings.redis.key_prefix,
        courier::schedule::delayed_stream(&scope.settings.nats)
    );
    for marker in ["building", "whole:0000000000000000000000000000000000000000"] {
        let handle =
            producer.enqueue_in(tasks::noop::TASK, &tasks::noop::Args {}, Duration::from_millis(2_000)).await.unwrap();
        scope
            .eventually(WAIT, "the task indexed", || {
                let mut conn = conn.clone();
                let index = format!("{base}:due");
                async move {
                    let n: u64 = redis::cmd("ZCARD").arg(&index).query_async(&mut conn).await.unwrap_or(0);
                    (n == 1).then_some(())
                }
            })
            .await;
        // The index loses its entry; the marker says what a dead rebuilder
        // or a restored snapshot would leave.
        let _: () = redis::cmd("DEL").arg(format!("{base}:due")).query_async(&mut conn).await.unwrap();
        let _: () = redis::cmd("SET").arg(format!("{base}:whole")).arg(marker).query_async(&mut conn).await.unwrap();
        let record = handle.wait(WAIT).await.unwrap_or_else(|e| panic!("marker {marker}: the task was stranded: {e}"));
        assert_eq!(record.status, TaskStatus::Success, "marker {marker}");
    }

    // A label named like a server header, and one like Courier's move id.
    let mut envelope = tasks::noop::TASK.envelope(&tasks::noop::Args {}).unwrap();
    let delayed = courier::schedule::delayed_stream(&scope.settings.nats);
    envelope.labels.insert("Nats-Expected-Stream".into(), delayed.as_str().into());
    envelope.labels.insert("Courier-Move-Id".into(), "x".into());
    let due = SystemTime::now() + Duration::from_millis(500);
    producer.enqueue_envelope_at(&envelope, None, due).await.unwrap();
    // And a message written straight into the delayed stream with one.
    let mut headers = async_nats::HeaderMap::new();
    let raw = tasks::noop::TASK.envelope(&tasks::noop::Args {}).unwrap();
    headers.insert("Nats-Expected-Stream", delayed.as_str());
    headers.insert("Courier-Due", "0");
    headers.insert("Courier-Task-Id", raw.task_id.as_str());
    let js = scope.jetstream().await;
    js.publish_with_headers(
        courier::schedule::delayed_subject(&scope.settings.nats),
        headers,
        raw.to_msgpack().unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for id in [&envelope.task_id, &raw.task_id] {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("{id} was not moved: {e}"));
        assert_eq!(record.status, TaskStatus::Success);
    }
    worker.stop().await.unwrap();
}

/// Another worker's rebuild deletes and re-creates the indexer consumer
/// under this worker's feet: a pull left waiting on the deleted consumer
/// gets no answer, and this worker binds the new one within seconds (it
/// once waited out the client's 30 s pull, and delayed tasks and retries
/// ran that late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_consumer_recreated_elsewhere_is_bound_again_within_seconds() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let first =
        producer.enqueue_in(tasks::noop::TASK, &tasks::noop::Args {}, Duration::from_millis(300)).await.unwrap();
    assert_eq!(first.wait(WAIT).await.unwrap().status, TaskStatus::Success, "the index works before");

    // What a rebuild on another worker does to the consumer.
    let js = scope.jetstream().await;
    let stream = js.get_stream(courier::schedule::delayed_stream(&scope.settings.nats)).await.unwrap();
    let durable = courier::schedule::index_durable(&scope.settings.nats);
    let config = stream.consumer_info(&durable).await.unwrap().config.clone();
    stream.delete_consumer(&durable).await.unwrap();
    stream.create_consumer(config).await.unwrap();

    let due = SystemTime::now() + Duration::from_millis(500);
    let handle = producer.enqueue_at(tasks::noop::TASK, &tasks::noop::Args {}, due).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    let late = (record.started_at.unwrap() * 1000.0) as i64 - unix_ms(due);
    // Two missed heartbeats (2 s) and a nap; the old wait was 30 s.
    assert!((0..8_000).contains(&late), "the task ran {late} ms after its due time");
    worker.stop().await.unwrap();
}
