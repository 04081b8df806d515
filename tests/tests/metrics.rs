//! The worker's `/metrics`, `/healthz` and `/readyz`.

use std::time::Duration;

use di::TaskStatus;
use it::scope::Scope;
use it::servers::{PrivateRedis, free_port};
use settings::SecretUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

const FAST_RETRY: di::RetryPolicy =
    di::RetryPolicy { max_attempts: 3, initial_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) };

/// Fails once (retryably), then succeeds.
mod flaky_once {
    use di::prelude::*;

    pub async fn run(ctx: TaskContext, _args: ()) -> TaskResult<()> {
        if ctx.attempt() == 1 { Err(Failure::retryable("first try fails")) } else { Ok(()) }
    }

    register_task!(run: () => (), TaskOptions::new().retry(super::FAST_RETRY));
}

/// Fails for good.
mod always_fatal {
    use di::prelude::*;

    pub async fn run(_ctx: TaskContext, _args: ()) -> TaskResult<()> {
        Err(Failure::fatal("never works"))
    }

    register_task!(run: () => ());
}

/// A plain HTTP/1.1 GET: (status, body).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the worker's HTTP server");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn metrics_count_tasks_and_readyz_follows_redis() {
    let mut redis = PrivateRedis::redis();
    let mut scope = Scope::new();
    let addr = format!("127.0.0.1:{}", free_port());
    scope.settings.worker.http_addr = addr.clone();
    scope.settings.redis.url = SecretUrl::new(redis.url()).into();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;

    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap().task_id);
    }
    let flaky = producer.enqueue(flaky_once::TASK, &()).await.unwrap();
    let fatal = producer.enqueue(always_fatal::TASK, &()).await.unwrap();
    for id in &handles {
        assert_eq!(producer.wait(id, WAIT).await.unwrap().status, TaskStatus::Success);
    }
    assert_eq!(flaky.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    assert_eq!(fatal.wait(WAIT).await.unwrap().status, TaskStatus::Failed);

    assert_eq!(get(&addr, "/healthz").await.0, 200);
    // The counters and gauges move as each message is settled, after its
    // record is readable: poll until every series has the value asserted.
    let expected = [
        (r#"courier_tasks_succeeded_total{task="noop"}"#, 3.0),
        (r#"courier_tasks_received_total{task="noop"}"#, 3.0),
        (r#"courier_task_duration_seconds_count{task="noop"}"#, 3.0),
        (r#"courier_tasks_retried_total{task="flaky_once"}"#, 1.0),
        (r#"courier_tasks_succeeded_total{task="flaky_once"}"#, 1.0),
        (r#"courier_tasks_received_total{task="flaky_once"}"#, 2.0),
        (r#"courier_task_duration_seconds_count{task="flaky_once"}"#, 2.0),
        (r#"courier_tasks_failed_total{task="always_fatal"}"#, 1.0),
        (r#"courier_tasks_dead_lettered_total{task="always_fatal"}"#, 1.0),
        ("courier_tasks_in_flight", 0.0),
        ("courier_consumer_pending", 0.0),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(&addr, "/metrics").await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, want)| value(&metrics, series) != Some(*want))
            .map(|(series, want)| format!("{series} is {:?}, want {want}", value(&metrics, series)))
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "after {WAIT:?}: {wrong:#?}\nin:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(get(&addr, "/readyz").await.0, 200);
    redis.stop();
    let (status, body) = get(&addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");
    redis.restart();
    scope
        .eventually(WAIT, "/readyz to recover", || async { (get(&addr, "/readyz").await.0 == 200).then_some(()) })
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_taken_http_port_fails_startup_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut scope = Scope::new();
    scope.settings.worker.http_addr = addr.clone();
    let err = courier::run_worker(scope.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("worker.http_addr") && err.contains(&addr), "{err}");
}

/// While the task index cannot write (its tables locked), a queue of one
/// fills and the rows past it are dropped, never the tasks: the worker's
/// `/metrics` counts them (`courier_task_index_dropped_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_task_index_drops_are_counted_in_metrics() {
    let mut scope = Scope::new();
    let schema = it::PgSchema::create().await;
    let addr = format!("127.0.0.1:{}", free_port());
    scope.settings.worker.http_addr = addr.clone();
    scope.settings.database.url = SecretUrl::new(&schema.url);
    scope.settings.index.queue = 1;
    scope.settings.index.batch = 1;
    let worker = scope.start_worker().await;
    // The HTTP server starts after the consumers the worker is ready with.
    let before = scope
        .eventually(WAIT, "the worker's /metrics", || async {
            let (status, body) = it::http_get(&addr, "/metrics").await;
            (status == 200).then_some(body)
        })
        .await;
    assert_eq!(value(&before, "courier_task_index_dropped_total"), Some(0.0), "{before}");

    // Hold the index's tables: the writer blocks on its first row.
    let pool = di::sqlx::PgPool::connect(&schema.url).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    di::sqlx::query("LOCK TABLE courier_task_index, courier_task_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let producer = scope.producer().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap().task_id);
    }
    for id in &ids {
        assert_eq!(
            producer.wait(id, WAIT).await.unwrap().status,
            TaskStatus::Success,
            "tasks never wait for the index"
        );
    }
    // One row is in the writer's hands, one in the queue: the rest are dropped.
    let dropped = scope
        .eventually(WAIT, "4 rows counted as dropped", || async {
            let (_, metrics) = get(&addr, "/metrics").await;
            value(&metrics, "courier_task_index_dropped_total").filter(|n| *n >= 4.0)
        })
        .await;
    assert!(dropped <= 6.0, "{dropped}");
    lock.rollback().await.unwrap();
    worker.stop().await.unwrap();
}
