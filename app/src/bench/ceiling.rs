//! The ceilings: what async-nats, redis and sqlx alone achieve on the same
//! services, on a stream and keys of their own. The bare primitives are
//! yardsticks; the two raw pipelines are what Courier's end-to-end figures
//! are compared with, and do the same work minus the framework (see
//! [`raw_pipeline`]).

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use di::redis_conn::RedisConn;
use futures_util::{StreamExt, stream::FuturesUnordered};
use settings::Settings;

use super::readback::{Checked, Expected, Readback};
use super::report::Phase;
use super::{BenchError, Show, failed};

/// Messages the primitives keep in flight (publish acks, pulled messages).
const PRIMITIVE_WINDOW: usize = 256;

/// What the raw pipeline's consumer does per message besides storing a
/// result, matching a Courier task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Nothing (Courier's `noop`).
    Nothing,
    /// `BEGIN; SELECT 1; COMMIT` on a pool of `database.max_connections`
    /// (Courier's `select_one` through the injected `Db`).
    SelectOne,
}

/// A stream, a consumer and connections of the ceilings' own, removed by
/// [`Ceiling::close`].
pub struct Ceiling {
    js: jetstream::Context,
    stream_name: String,
    subject: String,
    consumer: consumer::PullConsumer,
    redis: RedisConn,
    db: Option<di::SqlxDb>,
    /// Keys under `<redis.key_prefix>bench:{<pid>}:`, deleted by exact name.
    prefix: String,
    /// The bytes of a Courier `noop` envelope: the raw pipeline's messages
    /// are as large as Courier's.
    payload: Bytes,
    /// Readback for the raw pipelines, as for Courier's tasks.
    readback: Readback,
    batch: u64,
}

impl Ceiling {
    /// Creates the stream (as Courier's task stream: work queue, file
    /// storage, `nats.duplicate_window`) and the consumer (explicit acks,
    /// `nats.ack_wait`, `nats.max_ack_pending`).
    pub async fn open(settings: &Settings, readback: Readback) -> Result<Self, BenchError> {
        let client = crate::broker::connect(&settings.nats, "courier-bench-raw").await.map_err(failed("NATS"))?;
        let js = jetstream::new(client);
        let pid = std::process::id();
        let stream_name = format!("BENCH_RAW_{pid}");
        let subject = format!("bench_raw.{pid}");
        let _ = js.delete_stream(&stream_name).await;
        let stream = js
            .create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: settings.nats.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(failed("create the raw stream"))?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench_raw".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.nats.ack_wait,
                max_ack_pending: settings.nats.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(failed("create the raw consumer"))?;
        let client = di::components::result_store::redis_client(&settings.redis).map_err(failed("Redis"))?;
        let redis = client.connect().await.map_err(failed("Redis"))?;
        let envelope = tasks::noop::TASK.envelope_with_id(di::new_task_id(), &tasks::noop::Args {});
        let payload = envelope
            .and_then(|mut envelope| {
                let digest = envelope.args_digest();
                envelope.labels.insert(di::ARGS_DIGEST_LABEL.to_owned(), digest.into());
                envelope.to_msgpack()
            })
            .map_err(failed("encode a noop envelope"))?;
        Ok(Self {
            js,
            stream_name,
            subject,
            consumer,
            redis,
            db: None,
            // One hash tag: the pipelined SET EX stays in one cluster slot.
            prefix: format!("{}bench:{{{pid}}}:", settings.redis.key_prefix),
            payload: Bytes::from(payload),
            readback,
            batch: 0,
        })
    }

    /// Publish with ack, pull with double ack (each [`PRIMITIVE_WINDOW`] in
    /// flight) and Redis `SET EX` pipelined by 100, `n` each: (phase, rate).
    pub async fn primitives(&mut self, n: usize, show: &Show<'_>) -> Result<Vec<(Phase, f64)>, BenchError> {
        let mut out = Vec::new();
        show.set("publish with ack");
        let ids = self.ids(n);
        let started = Instant::now();
        self.publish(&ids, PRIMITIVE_WINDOW).await?;
        out.push((Phase::RawPublish, rate(n, started)));

        show.set("pull with double ack");
        let started = Instant::now();
        consume(&self.consumer, n, PRIMITIVE_WINDOW, |_| async { Ok(()) }).await?;
        out.push((Phase::RawPull, rate(n, started)));

        show.set("Redis SET EX, pipelined");
        let keys: Vec<String> = self.ids(n).into_iter().map(|id| format!("{}{id}", self.prefix)).collect();
        let started = Instant::now();
        for chunk in keys.chunks(100) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.set_ex(key, b"x".as_slice(), 600).ignore();
            }
            let () = pipe.query_async(&mut self.redis).await.map_err(failed("Redis SET EX"))?;
        }
        out.push((Phase::RawSet, rate(n, started)));
        self.delete(&keys).await?;
        Ok(out)
    }

    /// The raw pipeline: `n` messages the size of a Courier envelope, each
    /// with its own `Nats-Msg-Id`, published with `in_flight` acks
    /// outstanding (as the bench's enqueues), while a consumer pulls them
    /// and runs `concurrency` at once (as `worker.concurrency`): for each,
    /// the `work`, a `SET EX` of a success record as large as Courier's,
    /// then a double ack. After publishing, every record is read back and
    /// checked exactly as Courier's are. The rate is `n` over the time from
    /// the first publish to the last record read back. Returns the rate and
    /// the checks.
    pub async fn raw_pipeline(
        &mut self,
        settings: &Settings,
        work: Work,
        n: usize,
        in_flight: usize,
        show: &Show<'_>,
    ) -> Result<(f64, Checked), BenchError> {
        if work == Work::SelectOne && self.db.is_none() {
            let db = di::SqlxDb::connect(&settings.database).await.map_err(failed("the database"))?;
            self.db = Some(db);
        }
        let (name, value) = match work {
            Work::Nothing => ("noop", rmpv::Value::Nil),
            Work::SelectOne => ("select_one", rmpv::Value::from(1)),
        };
        let expected = Expected::new(name, &value);
        let record = di::ResultRecord::success(name, 1, value, 0.0).to_msgpack().map_err(failed("encode a record"))?;
        let record = Bytes::from(record);
        let ids = self.ids(n);
        let (prefix, db, redis) = (self.prefix.clone(), self.db.clone(), self.redis.clone());
        let measured = {
            let this = &*self;
            let started = Instant::now();
            let producer = async {
                this.publish(&ids, in_flight).await?;
                show.set("read back");
                let checked = this.readback.read_all(&prefix, &ids, &expected, show).await?;
                Ok::<_, BenchError>((rate(n, started), checked))
            };
            let consumer = consume(&this.consumer, n, settings.worker.concurrency, |message| {
                let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|id| id.to_string());
                let (key, mut redis, db, record) =
                    (id.map(|id| format!("{prefix}{id}")), redis.clone(), db.clone(), record.clone());
                async move {
                    let key = key.ok_or(BenchError::Raw("raw pipeline: a message without Nats-Msg-Id".into()))?;
                    if let Some(db) = db.filter(|_| work == Work::SelectOne) {
                        select_one(&db).await?;
                    }
                    let () = redis::cmd("SET")
                        .arg(key)
                        .arg(record.as_ref())
                        .arg("EX")
                        .arg(600)
                        .query_async(&mut redis)
                        .await
                        .map_err(failed("Redis SET EX"))?;
                    Ok(())
                }
            });
            tokio::pin!(producer, consumer);
            let mut consumed = false;
            let measured = loop {
                tokio::select! {
                    measured = &mut producer => break measured?,
                    result = &mut consumer, if !consumed => {
                        result?;
                        consumed = true;
                    }
                }
            };
            // Every record read back means every message was worked on: the
            // last double acks follow at once. With records missing, some
            // message was not, and the consumer is given up.
            if !consumed && let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(5), consumer).await {
                return Err(err);
            }
            measured
        };
        let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}")).collect();
        self.delete(&keys).await?;
        Ok(measured)
    }

    /// Deletes the stream; the keys are gone already.
    pub async fn close(self) {
        let _ = self.js.delete_stream(&self.stream_name).await;
        if let Some(db) = self.db {
            db.close().await;
        }
    }

    /// `n` message ids of a new batch (never reused: the stream drops a
    /// repeated `Nats-Msg-Id` within its duplicate window).
    fn ids(&mut self, n: usize) -> Vec<String> {
        self.batch += 1;
        (0..n).map(|i| format!("raw-{}-{i}", self.batch)).collect()
    }

    /// Publishes one message per id with `window` acks in flight.
    async fn publish(&self, ids: &[String], window: usize) -> Result<(), BenchError> {
        let mut acks = FuturesUnordered::new();
        for id in ids {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, self.payload.clone())
                .await
                .map_err(failed("publish"))?;
            acks.push(ack.into_future());
            while acks.len() >= window {
                acks.next().await.transpose().map_err(failed("publish ack"))?;
            }
        }
        while let Some(ack) = acks.next().await {
            ack.map_err(failed("publish ack"))?;
        }
        Ok(())
    }

    /// Deletes `keys` by name (never `KEYS`: it blocks Redis while it
    /// walks every key).
    async fn delete(&mut self, keys: &[String]) -> Result<(), BenchError> {
        for chunk in keys.chunks(1000) {
            let () = redis::cmd("DEL").arg(chunk).query_async(&mut self.redis).await.map_err(failed("Redis DEL"))?;
        }
        Ok(())
    }
}

/// One session as Courier's `Db` gives a task: begin, `SELECT 1`, commit.
async fn select_one(db: &di::SqlxDb) -> Result<(), BenchError> {
    use di::Db as _;
    let mut tx = db.pool().begin().await.map_err(failed("BEGIN"))?;
    let one: i64 =
        di::sqlx::query_scalar("SELECT CAST(1 AS BIGINT)").fetch_one(&mut *tx).await.map_err(failed("SELECT 1"))?;
    tx.commit().await.map_err(failed("COMMIT"))?;
    debug_assert_eq!(one, 1);
    Ok(())
}

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

/// Pulls `n` messages with at most `window` being worked on at once, runs
/// `work` on each, then double-acks it.
async fn consume<F, Fut>(consumer: &consumer::PullConsumer, n: usize, window: usize, work: F) -> Result<(), BenchError>
where
    F: Fn(&jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let (mut started, mut done) = (0, 0);
    let mut running = FuturesUnordered::new();
    while done < n {
        let want = window.saturating_sub(running.len()).min(n - started);
        if want == 0 {
            if let Some(result) = running.next().await {
                result?;
                done += 1;
            }
            continue;
        }
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(failed("pull"))?;
        loop {
            tokio::select! {
                message = batch.next() => match message {
                    Some(message) => {
                        let message = message.map_err(failed("pull"))?;
                        let job = work(&message);
                        started += 1;
                        running.push(async move {
                            job.await?;
                            message.double_ack().await.map_err(failed("double ack"))
                        });
                    }
                    None => break,
                },
                Some(result) = running.next(), if !running.is_empty() => {
                    result?;
                    done += 1;
                }
            }
        }
    }
    Ok(())
}
