//! The one-step executor: every outcome, its disposition, and the result
//! record it leaves, with doubles in the container (no broker needed).

use std::time::Duration;

use di::testing::TestRuntime;
use di::{BotError, Disposition, Envelope, Failure, Outcome, TaskStatus};
use tasks as _;

/// Fails (retryably) until attempt `fail_until`, then returns the attempt.
mod flaky {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub fail_until: u32,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u32> {
        if ctx.attempt() <= args.fail_until { Err(Failure::retryable("not yet")) } else { Ok(ctx.attempt()) }
    }

    register_task!(run: Args => u32, TaskOptions::new().max_attempts(3));
}

/// Always fails for good.
mod always_fatal {
    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        Err(Failure::fatal("the input can never work"))
    }

    register_task!(run: () => ());
}

/// Panics.
mod panics {
    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        panic!("boom")
    }

    register_task!(run: () => ());
}

/// Sleeps far past its timeout.
mod sleeps {
    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }

    register_task!(run: () => (), TaskOptions::new().timeout(Duration::from_millis(100)).max_attempts(2));
}

#[tokio::test]
async fn success_is_acked_and_recorded_after_running() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run_with_id(flaky::TASK, "ok-1", &flaky::Args { fail_until: 0 }, 1).await;
    assert_eq!(exec.outcome, Outcome::Success(rmpv::Value::from(1)));
    assert_eq!(exec.disposition, Disposition::Ack);
    let record = rt.mocks.store.records()["ok-1"].clone();
    assert_eq!(record.status, TaskStatus::Success);
    assert!(!record.is_err);
    assert_eq!(record.task_name, "flaky");
    assert_eq!(rt.mocks.store.history("ok-1"), vec![TaskStatus::Running, TaskStatus::Success]);
}

#[tokio::test]
async fn retryable_failure_retries_until_the_attempt_limit() {
    let rt = TestRuntime::new().await.unwrap();
    let args = flaky::Args { fail_until: 10 };
    let first = rt.run_with_id(flaky::TASK, "r-1", &args, 1).await;
    assert!(matches!(first.outcome, Outcome::Failed(Failure::Retryable { .. })));
    let Disposition::Retry { delay } = first.disposition else { panic!("{:?}", first.disposition) };
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    assert_eq!(rt.mocks.store.records()["r-1"].status, TaskStatus::Retrying);

    let last = rt.run_with_id(flaky::TASK, "r-1", &args, 3).await;
    let Disposition::DeadLetter { reason } = &last.disposition else { panic!("{:?}", last.disposition) };
    assert!(reason.contains("attempt 3 of 3"), "{reason}");
    let record = rt.mocks.store.records()["r-1"].clone();
    assert_eq!((record.status, record.attempt, record.is_err), (TaskStatus::Failed, 3, true));
    assert_eq!(record.error.unwrap().exc_type, "Retryable");
}

#[tokio::test]
async fn fails_twice_then_succeeds_on_attempt_three() {
    let rt = TestRuntime::new().await.unwrap();
    let args = flaky::Args { fail_until: 2 };
    for attempt in 1..=2 {
        let exec = rt.run_with_id(flaky::TASK, "f-1", &args, attempt).await;
        assert!(matches!(exec.disposition, Disposition::Retry { .. }));
    }
    let exec = rt.run_with_id(flaky::TASK, "f-1", &args, 3).await;
    assert_eq!(exec.disposition, Disposition::Ack);
    let record = rt.mocks.store.records()["f-1"].clone();
    assert_eq!((record.status, record.attempt), (TaskStatus::Success, 3));
}

#[tokio::test]
async fn fatal_failure_is_not_retried() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run_with_id(always_fatal::TASK, "x-1", &(), 1).await;
    assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }));
    let record = rt.mocks.store.records()["x-1"].clone();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.unwrap().exc_type, "Fatal");
}

#[tokio::test]
async fn panic_is_caught_and_the_executor_goes_on() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run_with_id(panics::TASK, "p-1", &(), 1).await;
    assert_eq!(exec.outcome, Outcome::Panic("boom".into()));
    assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }));
    assert_eq!(rt.mocks.store.records()["p-1"].error.clone().unwrap().exc_type, "Panic");
    let next = rt.run(flaky::TASK, &flaky::Args { fail_until: 0 }).await;
    assert_eq!(next.disposition, Disposition::Ack);
}

#[tokio::test]
async fn timeout_counts_as_retryable() {
    let rt = TestRuntime::new().await.unwrap();
    let exec = rt.run_with_id(sleeps::TASK, "t-1", &(), 1).await;
    assert_eq!(exec.outcome, Outcome::Timeout(Duration::from_millis(100)));
    assert!(matches!(exec.disposition, Disposition::Retry { .. }));
    let exec = rt.run_with_id(sleeps::TASK, "t-1", &(), 2).await;
    assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }));
    assert_eq!(rt.mocks.store.records()["t-1"].error.clone().unwrap().exc_type, "Timeout");
}

#[tokio::test]
async fn rate_limit_waits_what_telegram_asked() {
    let rt = TestRuntime::new().await.unwrap();
    rt.mocks.bot.fail_next(BotError::RateLimited { retry_after: Duration::from_secs(7) });
    let exec = rt.run(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 5 }).await;
    assert_eq!(exec.disposition, Disposition::Retry { delay: Duration::from_secs(7) });
}

#[tokio::test]
async fn garbage_bytes_are_dead_lettered_without_a_record() {
    let rt = TestRuntime::new().await.unwrap();
    for bytes in [&b"\xc1\xc1 garbage"[..], b"", b"{\"json\": true}"] {
        let exec = rt.run_bytes(bytes, 1).await;
        assert!(matches!(exec.outcome, Outcome::BadEnvelope(_)), "{:?}", exec.outcome);
        assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }));
        assert!(exec.task_id.is_none() && exec.record.is_none());
    }
    assert!(rt.mocks.store.records().is_empty());
}

#[tokio::test]
async fn truncated_envelope_is_recorded_under_its_task_id() {
    let rt = TestRuntime::new().await.unwrap();
    let bytes = flaky::TASK.envelope_with_id("trunc-1".into(), &flaky::Args { fail_until: 0 }).unwrap();
    let bytes = bytes.to_msgpack().unwrap();
    let exec = rt.run_bytes(&bytes[..bytes.len() - 4], 1).await;
    assert!(matches!(exec.outcome, Outcome::BadEnvelope(_)), "{:?}", exec.outcome);
    let record = rt.mocks.store.records()["trunc-1"].clone();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.unwrap().exc_type, "BadEnvelope");
}

#[tokio::test]
async fn wrong_argument_types_are_a_failed_record() {
    let rt = TestRuntime::new().await.unwrap();
    let mut envelope = Envelope::new("args-1".into(), "flaky", &()).unwrap();
    envelope.kwargs.insert("fail_until".into(), rmpv::Value::from("three"));
    let exec = rt.run_bytes(&envelope.to_msgpack().unwrap(), 1).await;
    let Outcome::BadArguments(why) = &exec.outcome else { panic!("{:?}", exec.outcome) };
    assert!(why.contains("invalid type"), "{why}");
    assert!(matches!(exec.disposition, Disposition::DeadLetter { .. }));
    assert_eq!(rt.mocks.store.records()["args-1"].error.clone().unwrap().exc_type, "BadArguments");
}

#[tokio::test]
async fn unknown_task_is_a_failed_record() {
    let rt = TestRuntime::new().await.unwrap();
    let envelope = Envelope::new("u-1".into(), "no_such_task", &()).unwrap();
    let exec = rt.run_bytes(&envelope.to_msgpack().unwrap(), 1).await;
    assert_eq!(exec.outcome, Outcome::UnknownTask("no_such_task".into()));
    let record = rt.mocks.store.records()["u-1"].clone();
    assert_eq!((record.status, record.task_name.as_str()), (TaskStatus::Failed, "no_such_task"));
    assert_eq!(record.error.unwrap().exc_type, "UnknownTask");
}

#[tokio::test]
async fn oversized_payload_is_refused_before_decoding() {
    let rt = TestRuntime::new().await.unwrap();
    let mut envelope = Envelope::new("big-1".into(), "flaky", &flaky::Args { fail_until: 0 }).unwrap();
    envelope.labels.insert("padding".into(), rmpv::Value::from("x".repeat(2 << 20)));
    let exec = rt.run_bytes(&envelope.to_msgpack().unwrap(), 1).await;
    let Outcome::BadEnvelope(why) = &exec.outcome else { panic!("{:?}", exec.outcome) };
    assert!(why.contains("exceeds nats.max_payload"), "{why}");
    assert_eq!(rt.mocks.store.records()["big-1"].status, TaskStatus::Failed);
}

#[tokio::test]
async fn positional_args_from_a_python_producer_work() {
    let rt = TestRuntime::new().await.unwrap();
    let mut envelope = Envelope::new("py-1".into(), "flaky", &()).unwrap();
    envelope.args = vec![rmpv::Value::from(0)];
    let exec = rt.run_bytes(&envelope.to_msgpack().unwrap(), 1).await;
    assert_eq!(exec.disposition, Disposition::Ack);
}
