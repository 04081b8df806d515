//! Lanes on JetStream: each lane (interactive, transactional, bulk) has its
//! own subject and durable consumer, so a bulk backlog never sits in front
//! of a reply; a task's lane comes from its registration or the `lane`
//! label of one enqueue; a consumer from before lanes is replaced.

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream::consumer;
use di::{Envelope, Lane, TaskStatus};
use it::scope::{Counter, Scope};
use tasks as _;

static RUNS: LazyLock<Counter> = LazyLock::new(Counter::default);

const WAIT: Duration = Duration::from_secs(30);

/// Sleeps, counting its runs.
mod paced {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub sleep_ms: u64,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<String> {
        super::RUNS.bump("all");
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        Ok(ctx.lane().name().to_owned())
    }

    register_task!(run: Args => String, TaskOptions::new().lane(Lane::Bulk));
}

fn in_lane(lane: Option<Lane>, sleep_ms: u64) -> Envelope {
    let mut envelope = paced::TASK.envelope(&paced::Args { sleep_ms }).unwrap();
    if let Some(lane) = lane {
        envelope.labels.insert("lane".into(), lane.name().into());
    }
    envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interactive_task_is_not_queued_behind_a_bulk_backlog() {
    let mut scope = Scope::new();
    scope.settings.worker.concurrency = 4;
    let producer = scope.producer().await;
    let backlog: Vec<Envelope> = (0..300).map(|_| in_lane(None, 50)).collect();
    for envelope in &backlog {
        producer.enqueue_envelope(envelope, Some(Lane::Bulk)).await.unwrap();
    }
    let worker = scope.start_worker().await;
    scope.eventually(WAIT, "the backlog draining", || async { (RUNS.get("all") >= 10).then_some(()) }).await;
    let reply = in_lane(Some(Lane::Interactive), 0);
    producer.enqueue_envelope(&reply, None).await.unwrap();
    let record = producer.wait(&reply.task_id, WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    assert_eq!(record.return_value.as_str(), Some("interactive"), "ran in the lane its label names");
    let mut undone = 0;
    for envelope in &backlog {
        if !producer.result(&envelope.task_id).await.unwrap().is_some_and(|r| r.status.is_final()) {
            undone += 1;
        }
    }
    assert!(undone > 100, "the reply waited for the bulk backlog: only {undone} of 300 were left");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_travels_on_its_lanes_subject_and_consumer() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let worker = scope.start_worker().await;
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    for lane in Lane::ALL {
        let durable = courier::broker::lane_durable(&scope.settings.nats, lane);
        let info = stream.consumer_info(&durable).await.unwrap_or_else(|e| panic!("consumer {durable}: {e}"));
        assert_eq!(info.config.filter_subject, courier::broker::lane_subject(&scope.settings.nats, lane));
    }
    // The registration says bulk; one enqueue says transactional.
    let default = in_lane(None, 0);
    let overridden = in_lane(Some(Lane::Transactional), 0);
    producer.enqueue(paced::TASK, &paced::Args { sleep_ms: 0 }).await.unwrap();
    producer.enqueue_envelope(&default, Some(Lane::Bulk)).await.unwrap();
    producer.enqueue_envelope(&overridden, Some(Lane::Bulk)).await.unwrap();
    let lane_of = |envelope: &Envelope| {
        let producer = producer.clone();
        let id = envelope.task_id.clone();
        async move { producer.wait(&id, WAIT).await.unwrap().return_value.as_str().map(str::to_owned) }
    };
    assert_eq!(lane_of(&default).await.as_deref(), Some("bulk"));
    assert_eq!(lane_of(&overridden).await.as_deref(), Some("transactional"));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_consumer_from_before_lanes_is_replaced_and_its_messages_delivered() {
    let scope = Scope::new();
    let producer = scope.producer().await;
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    // An unfiltered durable, as an older Courier or a taskiq producer made it.
    let old = consumer::pull::Config {
        durable_name: Some(scope.settings.nats.durable.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let _: consumer::PullConsumer = stream.create_consumer(old).await.unwrap();
    let waiting = in_lane(Some(Lane::Transactional), 0);
    producer.enqueue_envelope(&waiting, None).await.unwrap();

    let worker = scope.start_worker().await;
    assert_eq!(producer.wait(&waiting.task_id, WAIT).await.unwrap().status, TaskStatus::Success);
    let info = stream.consumer_info(&scope.settings.nats.durable).await.unwrap();
    assert_eq!(info.config.filter_subject, scope.settings.nats.subject);
    worker.stop().await.unwrap();
}
