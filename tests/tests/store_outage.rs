//! Redis unreachable while tasks arrive: the messages are not acked, they
//! come back, and the worker catches up when Redis returns. A private
//! redis-server is stopped and started; the shared one is never touched.

use std::time::Duration;

use di::{Envelope, TaskStatus};
use it::scope::Scope;
use it::servers::PrivateRedis;
use settings::SecretUrl;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn tasks_published_while_redis_is_down_complete_when_it_returns() {
    let mut redis = PrivateRedis::redis();
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let before = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(before.wait(WAIT).await.unwrap().status, TaskStatus::Success);

    let delivered_before = scope.deliveries().await;
    redis.stop();
    // The producer's `queued` write needs Redis; publish the envelopes directly.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let envelope: Envelope = tasks::noop::TASK.envelope(&tasks::noop::Args {}).unwrap();
        producer.publisher().publish(&envelope, None).await.unwrap();
        ids.push(envelope.task_id);
    }
    // They are delivered, fail to record `running`, and are handed back.
    scope
        .eventually(WAIT, "a delivery while Redis is down", || async {
            (scope.deliveries().await > delivered_before).then_some(())
        })
        .await;
    let no_record = producer.result(&ids[0]).await;
    assert!(no_record.is_err(), "Redis is down, so nothing can be read: {no_record:?}");
    redis.restart();

    for id in &ids {
        let record = producer.wait(id, WAIT).await.unwrap_or_else(|e| panic!("task {id} lost: {e}"));
        assert_eq!(record.status, TaskStatus::Success, "task {id}");
    }
    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    worker.stop().await.unwrap();
}
