//! One test's private corner of the shared NATS and Redis: unique stream,
//! subjects, durable, dead-letter stream and key prefix, removed on drop;
//! and a worker (in-process or as a child process) using them.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use courier::Producer;
use futures_util::StreamExt;
use redis::{self, AsyncCommands};
use settings::{SecretUrl, SecretUrls, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{NATS_URL, REDIS_URL, Service, require, test_settings, unique};

/// A test's private names and settings.
#[derive(Debug)]
pub struct Scope {
    /// Settings pointing at this scope's names (`test` profile: SQLite in memory).
    pub settings: Settings,
}

/// A dead letter as stored in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The original bytes.
    pub payload: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The task id, when one could be read.
    pub task_id: Option<String>,
}

impl Scope {
    /// Fresh names; NATS and Redis must be running.
    pub fn new() -> Self {
        require(Service::Nats);
        require(Service::Redis);
        let id = unique("it").to_ascii_lowercase();
        let mut settings = test_settings();
        settings.nats.url = SecretUrls::new(NATS_URL);
        settings.nats.stream = id.to_ascii_uppercase();
        settings.nats.subject = format!("{id}.tasks");
        settings.nats.dead_letter_subject = format!("{id}.dead");
        settings.nats.done_subject = format!("{id}.done");
        settings.nats.durable = id.clone();
        settings.nats.ack_wait = Duration::from_secs(5);
        settings.redis.url = SecretUrl::new(REDIS_URL).into();
        settings.redis.key_prefix = format!("{id}:");
        settings.redis.result_ttl = Duration::from_secs(120);
        settings.worker.concurrency = 8;
        // Off: tests run many workers at once; the metrics test turns it on.
        settings.worker.http_addr = String::new();
        settings.worker.shutdown_timeout = Duration::from_secs(10);
        Self { settings }
    }

    /// The environment variables that give a child process these settings.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        [
            ("COURIER_ENV", "test".to_owned()),
            ("COURIER_NATS__URL", s.nats.url.expose()),
            ("COURIER_NATS__STREAM", s.nats.stream.clone()),
            ("COURIER_NATS__SUBJECT", s.nats.subject.clone()),
            ("COURIER_NATS__DEAD_LETTER_SUBJECT", s.nats.dead_letter_subject.clone()),
            ("COURIER_NATS__DURABLE", s.nats.durable.clone()),
            ("COURIER_NATS__DONE_SUBJECT", s.nats.done_subject.clone()),
            ("COURIER_NATS__ACK_WAIT", format!("{}ms", s.nats.ack_wait.as_millis())),
            ("COURIER_REDIS__URL", s.redis.url.expose().to_owned()),
            ("COURIER_REDIS__CLUSTER", s.redis.cluster.to_string()),
            ("COURIER_REDIS__KEY_PREFIX", s.redis.key_prefix.clone()),
            ("COURIER_REDIS__RESULT_TTL", format!("{}s", s.redis.result_ttl.as_secs())),
            ("COURIER_DATABASE__URL", s.database.url.expose().to_owned()),
            ("COURIER_WORKER__CONCURRENCY", s.worker.concurrency.to_string()),
            ("COURIER_WORKER__HTTP_ADDR", s.worker.http_addr.clone()),
            ("COURIER_WORKER__SHUTDOWN_TIMEOUT", format!("{}s", s.worker.shutdown_timeout.as_secs())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// [`Scope::env`] plus a database schema and a fake Telegram: what a
    /// worker or bot process needs for the end-to-end tests.
    pub fn env_with(
        &self,
        schema: &crate::PgSchema,
        telegram: &crate::fake_telegram::FakeTelegram,
    ) -> Vec<(String, String)> {
        let mut env = self.env();
        env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
        env.push(("COURIER_TELEGRAM__TOKEN".into(), "123456:TEST-TOKEN".into()));
        env.push(("COURIER_TELEGRAM__API_URL".into(), telegram.url.clone()));
        env
    }

    /// A producer for this scope.
    pub async fn producer(&self) -> Producer {
        Producer::connect(&self.settings).await.expect("producer connects")
    }

    /// Starts `run_worker` in this process; it serves until stopped.
    pub async fn start_worker(&self) -> InProcessWorker {
        let (stop, stopped) = oneshot::channel::<()>();
        let settings = self.settings.clone();
        let task = tokio::spawn(courier::run_worker(settings, async move {
            let _ = stopped.await;
        }));
        // Ready when the consumer exists (the worker creates it after the streams).
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Every lane's consumer (the worker creates them one after another).
            if let Ok(stream) = js.get_stream(&self.settings.nats.stream).await {
                let mut all = true;
                for lane in di::Lane::ALL {
                    all &=
                        stream.consumer_info(&courier::broker::lane_durable(&self.settings.nats, lane)).await.is_ok();
                }
                if all {
                    break;
                }
            }
            assert!(!task.is_finished(), "the worker stopped during start-up: {:?}", task.await);
            assert!(tokio::time::Instant::now() < deadline, "the worker did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The consumer is created before the container: give the container a moment.
        InProcessWorker { stop: Some(stop), task }
    }

    /// Starts `run_worker` in core NATS mode; ready once its queue-group
    /// subscriptions exist (it has no consumer to wait for).
    pub async fn start_worker_core(&self) -> InProcessWorker {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(courier::run_worker(self.settings.clone(), async move {
            let _ = stopped.await;
        }));
        // Core NATS drops what is published before anyone subscribes:
        // wait until a probe on the task subject is answered by the worker
        // (a no-responders error means nobody listens yet).
        let client = courier::broker::connect(&self.settings.nats, "test").await.expect("connect to NATS");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let probe = client.request(self.settings.nats.subject.clone(), "".into());
            match tokio::time::timeout(Duration::from_millis(200), probe).await {
                Ok(Err(e)) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {}
                _ => break,
            }
            assert!(tokio::time::Instant::now() < deadline, "the core worker did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        InProcessWorker { stop: Some(stop), task }
    }

    /// A JetStream context on this scope's server.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(courier::broker::connect(&self.settings.nats, "test").await.expect("connect to NATS"))
    }

    /// Every dead letter stored so far.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let js = self.jetstream().await;
        let name = courier::broker::dead_letter_stream(&self.settings.nats);
        let Ok(mut stream) = js.get_stream(&name).await else { return Vec::new() };
        // One look at the state: a letter that lands meanwhile is not counted.
        let (count, last) = stream.info().await.map(|i| (i.state.messages, i.state.last_sequence)).unwrap_or((0, 0));
        let mut letters = Vec::new();
        for seq in 1..=last {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                let header = |name: &str| raw.headers.get(name).map(|v| v.to_string());
                letters.push(DeadLetter {
                    payload: raw.payload.to_vec(),
                    reason: header(courier::broker::publish::REASON_HEADER).unwrap_or_default(),
                    task_id: header(courier::broker::publish::TASK_ID_HEADER),
                });
            }
        }
        assert_eq!(letters.len() as u64, count);
        letters
    }

    /// Messages still in the task stream and the consumer's pending counts
    /// (not yet delivered, delivered but unacked).
    pub async fn backlog(&self) -> (u64, u64, usize) {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(&self.settings.nats.stream).await.expect("task stream");
        let messages = stream.info().await.expect("stream info").state.messages;
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(&self.settings.nats.durable).await.expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        (messages, info.num_pending, info.num_ack_pending)
    }

    /// Messages in the task stream (before any consumer exists).
    pub async fn backlog_stream_only(&self) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(&self.settings.nats.stream).await.expect("task stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// How many deliveries the consumer has made (its delivered sequence).
    pub async fn deliveries(&self) -> u64 {
        let js = self.jetstream().await;
        let stream = js.get_stream(&self.settings.nats.stream).await.expect("task stream");
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(&self.settings.nats.durable).await.expect("consumer");
        consumer.info().await.expect("consumer info").delivered.consumer_sequence
    }

    /// Every Redis key under this scope's prefix ([`scan_keys`]).
    pub async fn redis_keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.settings.redis.url.expose()).expect("Redis URL");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to Redis");
        scan_keys(&mut conn, &self.settings.redis.key_prefix).await.expect("SCAN")
    }

    /// Polls `check` every 20 ms until it returns `Some`, or panics with
    /// `what` after `timeout`.
    pub async fn eventually<T, F, Fut>(&self, timeout: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every key that starts with `prefix`, found with `SCAN`, cursor by cursor
/// (never `KEYS`, which blocks Redis while it walks the whole keyspace),
/// 1,000 slots a call: the shared Redis may hold a million keys of other
/// runs (a benchmark's records wait out their TTL), and SCAN's default of 10
/// made that 100,000 round trips per test.
/// The prefix is taken literally: it must hold no glob characters.
pub async fn scan_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(page);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

impl Default for Scope {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let nats = self.settings.nats.clone();
        let prefix = self.settings.redis.key_prefix.clone();
        let redis_url = self.settings.redis.url.expose().to_owned();
        // Drop may run inside a runtime: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let mut quick = nats.clone();
                quick.connect_timeout = Duration::from_secs(2);
                if let Ok(client) = courier::broker::connect(&quick, "test-cleanup").await {
                    let js = jetstream::new(client);
                    let _ = js.delete_stream(&nats.stream).await;
                    let _ = js.delete_stream(courier::broker::dead_letter_stream(&nats)).await;
                    let _ = js.delete_stream(courier::broker::advisory_stream(&nats)).await;
                    let _ = js.delete_stream(courier::schedule::delayed_stream(&nats)).await;
                }
                if let Ok(client) = redis::Client::open(redis_url.as_str())
                    && let Ok(Ok(mut conn)) =
                        tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection()).await
                {
                    let keys = scan_keys(&mut conn, &prefix).await.unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> = conn.del(keys).await;
                    }
                }
            });
        })
        .join();
    }
}

/// A worker running inside the test process.
#[derive(Debug)]
pub struct InProcessWorker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), courier::WorkerError>>,
}

impl InProcessWorker {
    /// Signals shutdown and waits for `run_worker` to return.
    pub async fn stop(mut self) -> Result<(), courier::WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the worker task panicked")
    }
}

/// Counts how often each key was seen, across tasks of one test binary.
#[derive(Debug, Default)]
pub struct Counter(std::sync::Mutex<HashMap<String, u32>>);

impl Counter {
    /// Adds one for `key` and returns the new count.
    pub fn bump(&self, key: &str) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// The count for `key`.
    pub fn get(&self, key: &str) -> u32 {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }
}

/// Helper for `futures_util::StreamExt` users in tests.
pub async fn next_with_timeout<S: futures_util::Stream + Unpin>(stream: &mut S, timeout: Duration) -> Option<S::Item> {
    tokio::time::timeout(timeout, stream.next()).await.ok().flatten()
}

/// The ticks of cron schedule `schedule` whose record exists in the
/// scope's Redis (task ids `cron:<schedule>:<Unix second>`), in order.
pub async fn ticks_recorded(scope: &Scope, schedule: &str) -> Vec<i64> {
    let client = redis::Client::open(scope.settings.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("{}cron:{schedule}:", scope.settings.redis.key_prefix);
    let mut ticks: Vec<i64> = scan_keys(&mut conn, &prefix)
        .await
        .unwrap()
        .iter()
        .filter_map(|key| key.strip_prefix(&prefix)?.parse().ok())
        .collect();
    ticks.sort_unstable();
    ticks
}
