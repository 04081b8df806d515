//! Delivery that never gets stuck (issue: hardening, points 1-6): a deleted
//! consumer or a server that lost its streams is repaired, deliveries that
//! never ran a task spend no attempt, a message at `max_deliver` is failed
//! and dead-lettered, a failed dead-letter copy never re-runs the task,
//! messages never wait behind long tasks, a task that finished at the hard
//! stop is not run again, and core mode retries only the save.
//!
//! The invariant every test here checks in its own way: every task ends with
//! a final record (success or failed) or is still deliverable; none is
//! orphaned and none runs again because of a fault outside it.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use di::{Envelope, TaskStatus};
use futures_util::StreamExt;
use it::scope::{Counter, Scope};
use it::servers::{PrivateNats, ServerProcess, free_port};
use settings::{NatsMode, SecretUrl, SecretUrls};
use tasks as _;

static RUNS: LazyLock<Counter> = LazyLock::new(Counter::default);

const WAIT: Duration = Duration::from_secs(30);

/// Counts its runs per task id, sleeps (asynchronously, or blocking its
/// thread), then succeeds or fails for good.
mod counted {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub sleep_ms: u64,
        pub block_ms: u64,
        pub fatal: bool,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u32> {
        super::RUNS.bump(ctx.task_id());
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        // A body that cannot be interrupted: it returns after the hard stop.
        std::thread::sleep(Duration::from_millis(args.block_ms));
        if args.fatal {
            return Err(Failure::fatal("this input can never work"));
        }
        Ok(ctx.attempt())
    }

    register_task!(run: Args => u32, TaskOptions::new().max_attempts(1));
}

fn counted(sleep_ms: u64, block_ms: u64, fatal: bool) -> Envelope {
    counted::TASK.envelope(&counted::Args { sleep_ms, block_ms, fatal }).unwrap()
}

/// The worker's durable, created beforehand with a small `max_deliver`
/// (as an operator or a taskiq producer might leave it) and `ack_wait` 2 s.
async fn consumer_with_max_deliver(scope: &Scope, max_deliver: i64) -> consumer::PullConsumer {
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let config = consumer::pull::Config {
        durable_name: Some(scope.settings.nats.durable.clone()),
        filter_subject: scope.settings.nats.subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(2),
        max_deliver,
        ..Default::default()
    };
    stream.create_consumer(config).await.unwrap()
}

/// The task stream's message count.
async fn stream_messages(scope: &Scope) -> u64 {
    let js = scope.jetstream().await;
    js.get_stream(&scope.settings.nats.stream).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated_and_readyz_is_503_while_it_cannot_pull() {
    let mut scope = Scope::new();
    let addr = format!("127.0.0.1:{}", free_port());
    scope.settings.worker.http_addr = addr.clone();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let first = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(first.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    assert_eq!(it::http_get(&addr, "/readyz").await.0, 200);

    // Delete the durable and put another on its subject in its place: on a
    // work-queue stream the worker cannot create its own beside it.
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let blocker = consumer::pull::Config {
        durable_name: Some("blocker".into()),
        filter_subject: scope.settings.nats.subject.clone(),
        ..Default::default()
    };
    scope
        .eventually(WAIT, "the blocker in place of the worker's consumer", || async {
            let _ = stream.delete_consumer(&scope.settings.nats.durable).await;
            stream.create_consumer(blocker.clone()).await.ok().map(|_: consumer::PullConsumer| ())
        })
        .await;
    let (status, body) = scope
        .eventually(WAIT, "/readyz to report the consumer", || async {
            let (status, body) = it::http_get(&addr, "/readyz").await;
            (status == 503 && body.contains("consumer")).then_some((status, body))
        })
        .await;
    assert!(body.contains("consumer"), "{status} {body}");

    let later = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    stream.delete_consumer("blocker").await.unwrap();
    let removed = Instant::now();
    let record = later.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    assert!(
        removed.elapsed() < Duration::from_secs(10),
        "completed {:?} after the repair became possible",
        removed.elapsed()
    );
    scope
        .eventually(WAIT, "/readyz 200 again", || async {
            (it::http_get(&addr, "/readyz").await.0 == 200).then_some(())
        })
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_that_lost_its_streams_gets_them_back_from_the_worker() {
    let mut nats = PrivateNats::start();
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(nats.url());
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let before = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(before.wait(WAIT).await.unwrap().status, TaskStatus::Success);

    nats.wipe_and_restart();
    // The worker reconnects and re-creates the stream and its consumer.
    let js = scope.jetstream().await;
    scope
        .eventually(WAIT, "the consumer re-created", || async {
            let stream = js.get_stream(&scope.settings.nats.stream).await.ok()?;
            stream.consumer_info(&scope.settings.nats.durable).await.ok().map(|_| ())
        })
        .await;
    let after = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(after.wait(Duration::from_secs(10)).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn deliveries_while_redis_is_down_spend_no_attempt() {
    let mut redis = ServerProcess::redis();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    scope.settings.redis.connect_timeout = Duration::from_millis(500);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let delivered_before = scope.deliveries().await;
    redis.stop();
    // The task allows one attempt; the producer's `queued` write needs Redis,
    // so the envelope is published directly.
    let envelope = counted(0, 0, false);
    producer.publisher().publish(&envelope, None).await.unwrap();
    scope
        .eventually(WAIT, "a delivery while Redis is down", || async {
            (scope.deliveries().await > delivered_before).then_some(())
        })
        .await;
    // Down for longer than the worker's connect timeout: that delivery fails
    // to record `running`, never starts the task, and is handed back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    let record = scope
        .eventually(WAIT, "the final record", || async {
            producer.result(&envelope.task_id).await.ok().flatten().filter(|r| r.status.is_final())
        })
        .await;
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 1), "{record:?}");
    assert_eq!(RUNS.get(&envelope.task_id), 1);
    assert!(scope.deliveries().await >= delivered_before + 2, "it was delivered more than once");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_at_max_deliver_is_failed_dead_lettered_and_removed() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    // A consumer created elsewhere (a taskiq producer, an operator) with a
    // small max_deliver; the worker uses it as it is.
    let consumer = consumer_with_max_deliver(&scope, 2).await;
    let envelope = counted(0, 0, false);
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    // Two deliveries that never finish (a worker that crashed twice).
    for _ in 0..2 {
        let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
        let message = batch.next().await.expect("a delivery").unwrap();
        message.ack_with(AckKind::Nak(None)).await.unwrap();
    }

    let worker = scope.start_worker().await;
    let record = producer.wait(&envelope.task_id, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed, "{record:?}");
    assert_eq!(record.error.as_ref().map(|e| e.exc_type.as_str()), Some("MaxDeliveries"), "{record:?}");
    assert_eq!(RUNS.get(&envelope.task_id), 0, "the worker never ran it");
    let letters = scope
        .eventually(WAIT, "the dead letter", || async {
            let letters = scope.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].task_id.as_deref(), Some(envelope.task_id.as_str()));
    assert!(letters[0].reason.contains("MaxDeliveries"), "{}", letters[0].reason);
    scope
        .eventually(WAIT, "the message removed", || async { (stream_messages(&scope).await == 0).then_some(()) })
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_dead_letter_copy_is_retried_without_running_the_task_again() {
    let scope = Scope::new();
    // A stream that holds the dead-letter stream's name but not its subject:
    // every copy fails until it is removed.
    let js = scope.jetstream().await;
    let producer = scope.producer().await;
    let dead = courier::broker::dead_letter_stream(&scope.settings.nats);
    js.delete_stream(&dead).await.unwrap();
    let impostor = jetstream::stream::Config {
        name: dead.clone(),
        subjects: vec![format!("{}.impostor", scope.settings.nats.dead_letter_subject)],
        ..Default::default()
    };
    js.create_stream(impostor).await.unwrap();
    let worker = scope.start_worker().await;

    let envelope = counted(0, 0, true);
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    let record = producer.wait(&envelope.task_id, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    // Long enough for the in-place retries to give up and the message to
    // come back at least once.
    scope
        .eventually(WAIT, "a redelivery", || async {
            let (messages, _, _) = scope.backlog().await;
            (messages == 1 && scope.deliveries().await >= 2).then_some(())
        })
        .await;
    assert_eq!(RUNS.get(&envelope.task_id), 1, "the copy failed, so only the copy is retried");

    js.delete_stream(&dead).await.unwrap();
    let letters = scope
        .eventually(WAIT, "the dead letter", || async {
            let letters = scope.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
    assert_eq!(letters[0].task_id.as_deref(), Some(envelope.task_id.as_str()));
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    assert_eq!(RUNS.get(&envelope.task_id), 1, "the task body ran once");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_takes_messages_that_would_wait_behind_long_tasks() {
    let mut scope = Scope::new();
    // Four slots, one of them kept for interactive tasks: three long
    // transactional tasks fill the rest.
    scope.settings.worker.concurrency = 4;
    let busy = scope.start_worker().await;
    let producer = scope.producer().await;
    let long: Vec<Envelope> = (0..3).map(|_| counted(20_000, 0, false)).collect();
    for envelope in &long {
        producer.enqueue_envelope(envelope, None).await.unwrap();
    }
    scope
        .eventually(WAIT, "the long tasks running", || async {
            let mut running = 0;
            for envelope in &long {
                if producer.result(&envelope.task_id).await.ok()??.status == TaskStatus::Running {
                    running += 1;
                }
            }
            (running == 3).then_some(())
        })
        .await;
    let idle = scope.start_worker().await;
    let short: Vec<Envelope> = (0..2).map(|_| counted(0, 0, false)).collect();
    for envelope in &short {
        producer.enqueue_envelope(envelope, None).await.unwrap();
    }
    for envelope in &short {
        let record = producer.wait(&envelope.task_id, WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success);
    }
    for envelope in &long {
        let record = producer.result(&envelope.task_id).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Running, "the short tasks did not wait for the long ones");
    }
    idle.stop().await.unwrap();
    busy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_whose_body_finished_keeps_its_outcome_at_the_hard_stop() {
    let redis = ServerProcess::redis();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    scope.settings.worker.concurrency = 4;
    scope.settings.worker.shutdown_timeout = Duration::from_millis(500);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let envelopes: Vec<Envelope> = (0..4).map(|_| counted(300, 0, false)).collect();
    for envelope in &envelopes {
        producer.enqueue_envelope(envelope, None).await.unwrap();
    }
    scope
        .eventually(WAIT, "all four running", || async {
            envelopes.iter().all(|e| RUNS.get(&e.task_id) == 1).then_some(())
        })
        .await;
    // Writes freeze for 3 s: the bodies return, but their records are still
    // being saved when the shutdown timeout interrupts what is running.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("WRITE").query_async(&mut conn).await.unwrap();
    worker.stop().await.unwrap();

    let again = scope.start_worker().await;
    for envelope in &envelopes {
        let record = producer.wait(&envelope.task_id, WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    for envelope in &envelopes {
        assert_eq!(RUNS.get(&envelope.task_id), 1, "a body that had returned was run again");
    }
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_mode_retries_only_the_save_and_honours_shutdown() {
    let mut redis = ServerProcess::redis();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    scope.settings.nats.mode = NatsMode::Core;
    let worker = scope.start_worker_core().await;
    let producer = scope.producer().await;
    let envelope = counted(1_500, 0, false);
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    scope.eventually(WAIT, "the task running", || async { (RUNS.get(&envelope.task_id) == 1).then_some(()) }).await;
    // Redis goes away while the body runs, and comes back after it ended.
    redis.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    let record = scope
        .eventually(WAIT, "the final record", || async {
            producer.result(&envelope.task_id).await.ok().flatten().filter(|r| r.status.is_final())
        })
        .await;
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(RUNS.get(&envelope.task_id), 1, "only the save was retried");

    // A task that cannot start while Redis is down does not hold up shutdown.
    redis.stop();
    let stuck = counted(0, 0, false);
    producer.publisher().publish(&stuck, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    worker.stop().await.unwrap();
    assert!(
        stopping.elapsed() < scope.settings.worker.shutdown_timeout,
        "the stop waited {:?}, as long as the shutdown timeout",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_redis_crashes_and_worker_restarts_every_task_is_final_or_deliverable() {
    let mut redis = ServerProcess::redis_persistent();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    scope.settings.redis.connect_timeout = Duration::from_millis(500);
    scope.settings.worker.concurrency = 4;
    scope.settings.worker.shutdown_timeout = Duration::from_millis(100);
    scope.settings.nats.ack_wait = Duration::from_secs(2);
    let producer = scope.producer().await;
    // A consumer with a tiny max_deliver, as a taskiq producer might leave it:
    // outages and restarts would strand messages at it.
    let _ = consumer_with_max_deliver(&scope, 2).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let envelope = counted(400, 0, false);
        producer.enqueue_envelope(&envelope, None).await.unwrap();
        ids.push(envelope.task_id);
    }
    let mut worker = scope.start_worker().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Redis dies under running tasks, then the worker stops with tasks in hand.
        redis.stop();
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        worker.stop().await.unwrap();
        redis.restart();
        worker = scope.start_worker().await;
    }
    let producer = scope.producer().await;
    for id in &ids {
        let record = scope
            .eventually(Duration::from_secs(60), &format!("a final record for {id} (else it is orphaned)"), || async {
                producer.result(id).await.ok().flatten().filter(|r| r.status.is_final())
            })
            .await;
        assert!(record.status.is_final(), "{record:?}");
    }
    scope
        .eventually(WAIT, "an empty task stream", || async { (stream_messages(&scope).await == 0).then_some(()) })
        .await;
    worker.stop().await.unwrap();
}
