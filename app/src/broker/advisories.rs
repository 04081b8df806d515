//! Messages that reached the consumer's `max_deliver`. JetStream stops
//! delivering such a message but keeps it in the work-queue stream for
//! ever, and says so only in a `MAX_DELIVERIES` advisory. The advisories
//! are captured in the stream `<stream>_ADVISORIES` (so none is missed while
//! no worker runs), and whichever worker pulls one fetches the message by
//! sequence, gives its task a final `failed` record, dead-letters it and
//! deletes it from the task stream. Every step is idempotent, so an
//! advisory handled twice does no harm.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{AckKind, consumer};
use di::Disposition;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Topology};
use crate::worker::jetstream::{Runtime, sleep_or_shutdown};

/// How long a failed advisory waits before it is handled again.
const RETRY: Duration = Duration::from_secs(2);

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` that matter.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    stream_seq: u64,
    deliveries: u64,
}

/// Handles advisories until `shutdown`; pulling problems are retried.
pub async fn watch(topology: Topology, runtime: Arc<Runtime>, shutdown: CancellationToken) {
    let settings = topology.settings().clone();
    let durable = format!("{}_advisories", settings.durable);
    loop {
        let consumer = async {
            let stream = topology.jetstream().get_stream(broker::advisory_stream(&settings)).await?;
            let config = consumer::pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            };
            let consumer: consumer::PullConsumer = stream.get_or_create_consumer(&durable, config).await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        };
        let mut messages = match consumer.await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(%err, "cannot read the max-deliveries advisories; retrying");
                if sleep_or_shutdown(RETRY, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(message)) => {
                    let ack = match handle(&topology, &runtime, &message.payload).await {
                        Ok(()) => AckKind::Ack,
                        Err(err) => {
                            tracing::warn!(%err, "max-deliveries advisory not handled yet; it comes back");
                            AckKind::Nak(Some(RETRY))
                        }
                    };
                    let _ = message.ack_with(ack).await;
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "reading the max-deliveries advisories failed");
                    break;
                }
                None => break,
            }
        }
        if sleep_or_shutdown(RETRY, &shutdown).await {
            return;
        }
    }
}

/// Fails, dead-letters and removes the message one advisory names.
async fn handle(topology: &Topology, runtime: &Runtime, payload: &[u8]) -> Result<(), async_nats::Error> {
    let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(payload) else {
        tracing::warn!("ignoring an advisory that is not a max_deliver advisory");
        return Ok(());
    };
    if advisory.stream != topology.settings().stream {
        return Ok(());
    }
    let stream: Stream = topology.jetstream().get_stream(&advisory.stream).await?;
    let message = match stream.get_raw_message(advisory.stream_seq).await {
        Ok(message) => message,
        // Already removed: acked late, or handled by another worker.
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let execution = runtime.executor.fail_undeliverable(&message.payload, advisory.deliveries).await?;
    tracing::warn!(
        task.id = execution.task_id.as_deref().unwrap_or("?"),
        stream_seq = advisory.stream_seq,
        deliveries = advisory.deliveries,
        "message reached max_deliver; failing and dead-lettering it"
    );
    // Before the message is removed: an error leaves the advisory to retry.
    // A dead chat is its campaign's outcome, not a dead letter.
    let campaign_outcome = match &runtime.campaigns {
        Some(gate) => gate.record(&execution).await?,
        None => false,
    };
    if let Disposition::DeadLetter { reason } = &execution.disposition
        && !campaign_outcome
    {
        // The same dead-letter id as the worker loop's copy: one copy at most.
        let dedup = advisory.stream_seq.to_string();
        runtime.dead_letter(&message.payload, &message.subject, &execution, reason, &dedup).await?;
    }
    match stream.delete_message(advisory.stream_seq).await {
        Ok(_) => {}
        // Gone meanwhile (another worker handled the advisory): fine.
        Err(err) if matches!(err.kind(), DeleteMessageErrorKind::JetStream(e) if e.error_code() == ErrorCode::NO_MESSAGE_FOUND) =>
            {}
        Err(err) => return Err(err.into()),
    }
    runtime.finished(&message.payload, execution).await;
    Ok(())
}
