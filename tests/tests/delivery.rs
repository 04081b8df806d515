//! Delivery over the real NATS JetStream and Redis (ARCHITECTURE.md, Contracts: delivery), each test
//! in its own stream, subjects, durable and key prefix, with the worker's
//! `run_worker` running in this process.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use courier::broker::publish::Published;
use di::{Envelope, TaskStatus};
use futures_util as _;
use it::REDIS_URL;
use it::scope::{Counter, Scope};
use redis::{self, AsyncCommands};

static RUNS: LazyLock<Counter> = LazyLock::new(Counter::default);

const FAST_RETRY: di::RetryPolicy =
    di::RetryPolicy { max_attempts: 3, initial_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) };

/// Counts its runs per task id; fails retryably until `fail_until`.
mod counted {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub fail_until: u32,
        pub fatal: bool,
        pub sleep_ms: u64,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u32> {
        super::RUNS.bump(ctx.task_id());
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        if args.fatal {
            return Err(Failure::fatal("this input can never work"));
        }
        if ctx.attempt() <= args.fail_until {
            return Err(Failure::retryable(format!("attempt {} failed", ctx.attempt())));
        }
        Ok(ctx.attempt())
    }

    register_task!(run: Args => u32, TaskOptions::new().retry(super::FAST_RETRY));
}

/// Waits out a flood limit (`Failure::Throttled`, which spends no attempt)
/// on its first `throttles` runs.
mod waits_out_limits {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub throttles: u32,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u32> {
        let runs = super::RUNS.bump(ctx.task_id());
        if runs <= args.throttles {
            return Err(Failure::throttled("flood control: send again later", Duration::from_millis(5)));
        }
        Ok(runs)
    }

    register_task!(run: Args => u32, TaskOptions::new());
}

fn args(fail_until: u32, fatal: bool, sleep_ms: u64) -> counted::Args {
    counted::Args { fail_until, fatal, sleep_ms }
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn round_trip_with_ttl() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 7 }).await.unwrap();
    let output = handle.output(WAIT).await.unwrap().expect("success");
    assert_eq!((output.select_one, output.chat_id, output.db_backend.as_str()), (1, 7, "SQLite"));

    let mut redis = redis::Client::open(REDIS_URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis.ttl(format!("{}{}", scope.settings.redis.key_prefix, handle.task_id)).await.unwrap();
    let want = scope.settings.redis.result_ttl.as_secs() as i64;
    assert!((want - 5..=want).contains(&ttl), "TTL {ttl}, redis.result_ttl is {want}");
    let record = producer.result(&handle.task_id).await.unwrap().unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 1));
    worker.stop().await.unwrap();
    assert_eq!(scope.backlog().await, (0, 0, 0), "the work queue is empty and nothing is pending");
}

#[tokio::test]
async fn the_same_task_id_published_twice_runs_once() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let envelope = counted::TASK.envelope(&args(0, false, 0)).unwrap();
    assert_eq!(producer.enqueue_envelope(&envelope, None).await.unwrap(), Published::Stored);
    assert_eq!(producer.enqueue_envelope(&envelope, None).await.unwrap(), Published::Duplicate);
    let worker = scope.start_worker().await;
    let record = producer.wait(&envelope.task_id, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    worker.stop().await.unwrap();
    assert_eq!(RUNS.get(&envelope.task_id), 1, "ran more than once");
}

#[tokio::test]
async fn fails_twice_then_succeeds_with_attempt_three() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(2, false, 0)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 3), "{record:?}");
    assert_eq!(RUNS.get(&handle.task_id), 3);
    assert!(scope.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn always_failing_task_is_dead_lettered_after_its_attempts() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(99, false, 0)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Failed, 3), "{record:?}");
    assert_eq!(record.error.as_ref().unwrap().exc_type, "Retryable");
    assert_eq!(RUNS.get(&handle.task_id), 3);
    let letters = scope
        .eventually(WAIT, "the dead letter", || async {
            let letters = scope.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        })
        .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].task_id.as_deref(), Some(handle.task_id.as_str()));
    assert!(letters[0].reason.contains("attempt 3 of 3"), "{}", letters[0].reason);
    assert_eq!(Envelope::from_msgpack(&letters[0].payload).unwrap().task_id, handle.task_id);
    worker.stop().await.unwrap();
    assert_eq!(scope.backlog().await, (0, 0, 0), "terminated, not left in the queue");
}

#[tokio::test]
async fn fatal_error_is_not_retried() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(0, true, 0)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Failed, 1));
    assert_eq!(record.error.unwrap().exc_type, "Fatal");
    scope.eventually(WAIT, "the dead letter", || async { (scope.dead_letters().await.len() == 1).then_some(()) }).await;
    assert_eq!(RUNS.get(&handle.task_id), 1, "a fatal error must not be retried");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_and_unknown_tasks_are_dead_lettered_and_the_worker_goes_on() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();
    let garbage = Bytes::from_static(b"\xc1 definitely not msgpack");
    producer.publisher().send(subject.clone(), "garbage-1", Default::default(), garbage.clone()).await.unwrap();
    let unknown = Envelope::new("unknown-1".into(), "no_such_task", &()).unwrap();
    producer.enqueue_envelope(&unknown, None).await.unwrap();
    let good = producer.enqueue(counted::TASK, &args(0, false, 0)).await.unwrap();

    assert_eq!(good.wait(WAIT).await.unwrap().status, TaskStatus::Success, "the next good task succeeds");
    let record = producer.wait("unknown-1", WAIT).await.unwrap();
    assert_eq!(record.error.unwrap().exc_type, "UnknownTask");
    let letters = scope
        .eventually(WAIT, "two dead letters", || async {
            let letters = scope.dead_letters().await;
            (letters.len() == 2).then_some(letters)
        })
        .await;
    assert!(letters.iter().any(|l| l.payload == garbage && l.task_id.is_none() && l.reason.starts_with("BadEnvelope")));
    assert!(letters.iter().any(|l| l.task_id.as_deref() == Some("unknown-1") && l.reason.starts_with("UnknownTask")));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_three_times_longer_than_ack_wait_runs_once() {
    let mut scope = Scope::new();
    scope.settings.nats.ack_wait = Duration::from_secs(1);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(0, false, 3_000)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 1));
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    worker.stop().await.unwrap();
    assert_eq!(RUNS.get(&handle.task_id), 1, "redelivered while still running");
}

#[tokio::test]
async fn shutdown_lets_the_running_task_finish_and_acks_it() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(0, false, 1_500)).await.unwrap();
    scope.eventually(WAIT, "the task to start", || async { (RUNS.get(&handle.task_id) == 1).then_some(()) }).await;
    worker.stop().await.unwrap();
    let record = producer.result(&handle.task_id).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Success, "finished during shutdown");
    assert_eq!(scope.backlog().await, (0, 0, 0), "and acked");
}

#[tokio::test]
async fn core_nats_mode_round_trip() {
    let mut scope = Scope::new();
    scope.settings.nats.mode = settings::NatsMode::Core;
    let worker = scope.start_worker_core().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(counted::TASK, &args(1, false, 0)).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 2));
    // Core NATS keeps nothing until a due time: refused, by kind, and no
    // `scheduled` record is left for a task never sent.
    let refused = producer.enqueue_in(counted::TASK, &args(1, false, 0), Duration::from_secs(60)).await;
    assert!(
        matches!(refused, Err(courier::ProducerError::Publish(courier::broker::publish::PublishError::NeedsJetstream))),
        "{refused:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_final_record_is_announced_on_the_done_subject() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let client = async_nats::connect(scope.settings.nats.url.expose()).await.unwrap();
    let mut notices = client.subscribe(format!("{}.>", scope.settings.nats.done_subject)).await.unwrap();
    let handle = producer.enqueue(counted::TASK, &args(1, false, 0)).await.unwrap();
    let notice = it::scope::next_with_timeout(&mut notices, WAIT).await.expect("a completion notice");
    assert_eq!(notice.subject.as_str(), format!("{}.{}", scope.settings.nats.done_subject, handle.task_id));
    // Announced once, for the final record only (not for the retried attempt).
    assert_eq!(producer.result(&handle.task_id).await.unwrap().unwrap().attempt, 2);
    assert!(it::scope::next_with_timeout(&mut notices, Duration::from_millis(300)).await.is_none());
    worker.stop().await.unwrap();
}

/// Deliveries that wait out Telegram's limits spend no attempt, and must
/// not reach the consumer's `max_deliver` (the task's attempts plus 50)
/// either: a task throttled 70 times (a long broadcast backlog, or a
/// governor on its small fallback limit) still runs.
#[tokio::test]
async fn a_task_throttled_more_times_than_max_deliver_still_runs() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(waits_out_limits::TASK, &waits_out_limits::Args { throttles: 70 }).await.unwrap();
    let record = producer.wait(&handle.task_id, Duration::from_secs(90)).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    assert_eq!(RUNS.get(&handle.task_id), 71, "ran until it was let through");
    worker.stop().await.unwrap();
}
