//! The ceilings: the bare primitives (async-nats and redis alone, no
//! framework) and the raw publish -> pull -> `SET EX` -> double-ack
//! pipeline, on a stream of their own.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bb8_redis::redis;
use futures_util::{StreamExt, stream::FuturesUnordered};
use settings::Settings;

use super::{BenchError, BenchOptions, progress, raw};

/// The bare primitives and the raw pipeline, on a stream of their own.
pub(super) async fn measure(settings: &Settings, options: &BenchOptions) -> Result<Vec<(String, f64)>, BenchError> {
    let client = crate::broker::connect(&settings.nats, "courier-bench").await.map_err(raw)?;
    let js = jetstream::new(client.clone());
    let name = format!("BENCH_{}", std::process::id());
    let subject = format!("bench.{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(raw)?;
    let n = options.n;
    let mut out = Vec::new();

    progress("ceiling: publish with ack");
    let started = Instant::now();
    publish_n(&js, &subject, n, 0).await?;
    out.push(("raw: JetStream publish with ack".to_owned(), n as f64 / started.elapsed().as_secs_f64()));

    progress("ceiling: pull with double ack");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .map_err(raw)?;
    let started = Instant::now();
    consume_n(&consumer, n, 256, |_m| async { Ok(()) }).await?;
    out.push(("raw: pull with double ack".to_owned(), n as f64 / started.elapsed().as_secs_f64()));

    progress("ceiling: Redis SET EX, pipelined");
    let redis_client = redis::Client::open(settings.redis.url.expose()).map_err(raw)?;
    let mut conn = redis_client.get_multiplexed_async_connection().await.map_err(raw)?;
    let prefix = format!("{}bench:{}:", settings.redis.key_prefix, std::process::id());
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set_ex(format!("{prefix}{i}"), b"x".as_slice(), 60).ignore();
        }
        let () = pipe.query_async(&mut conn).await.map_err(raw)?;
    }
    out.push(("raw: Redis SET EX, pipelined by 100".to_owned(), n as f64 / started.elapsed().as_secs_f64()));

    progress("ceiling: raw pipeline");
    let concurrency = settings.worker.concurrency;
    let started = Instant::now();
    let publishing = publish_n(&js, &subject, n, n);
    let consuming = consume_n(&consumer, n, concurrency, |message| {
        let mut conn = conn.clone();
        let key = format!("{prefix}p{}", message.info().map(|i| i.stream_sequence).unwrap_or(0));
        async move {
            let () = redis::cmd("SET")
                .arg(key)
                .arg(b"x".as_slice())
                .arg("EX")
                .arg(60)
                .query_async(&mut conn)
                .await
                .map_err(raw)?;
            Ok(())
        }
    });
    let (published, consumed) = tokio::join!(publishing, consuming);
    published?;
    consumed?;
    out.push((
        "raw pipeline: publish -> pull -> SET EX -> double ack".to_owned(),
        n as f64 / started.elapsed().as_secs_f64(),
    ));

    let _ = js.delete_stream(&name).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.map_err(raw)?;
    for chunk in keys.chunks(1000) {
        let () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.map_err(raw)?;
    }
    Ok(out)
}

/// Publishes `n` small messages with 256 acks in flight.
async fn publish_n(js: &jetstream::Context, subject: &str, n: usize, offset: usize) -> Result<(), BenchError> {
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        let ack = js.publish(subject.to_owned(), format!("m{}", i + offset).into()).await.map_err(raw)?;
        acks.push(ack.into_future());
        while acks.len() >= 256 {
            acks.next().await.transpose().map_err(raw)?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(raw)?;
    }
    Ok(())
}

/// Pulls `n` messages with at most `window` in flight, runs `work` on
/// each, then double-acks it.
async fn consume_n<F, Fut>(
    consumer: &consumer::PullConsumer,
    n: usize,
    window: usize,
    work: F,
) -> Result<(), BenchError>
where
    F: Fn(&jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let (mut started, mut done) = (0, 0);
    let mut running = FuturesUnordered::new();
    while done < n {
        let want = (window - running.len()).min(n - started);
        if want == 0 {
            if let Some(result) = running.next().await {
                result?;
                done += 1;
            }
            continue;
        }
        let mut batch =
            consumer.batch().max_messages(want).expires(Duration::from_millis(500)).messages().await.map_err(raw)?;
        loop {
            tokio::select! {
                message = batch.next() => match message {
                    Some(message) => {
                        let message = message.map_err(raw)?;
                        let job = work(&message);
                        started += 1;
                        running.push(async move {
                            job.await?;
                            message.double_ack().await.map_err(raw)
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
