//! Dead letters: listing them and putting one back in the queue.

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde::Serialize;
use settings::NatsSettings;

use crate::broker::{self, BrokerError};
use crate::producer::{Producer, ProducerError};
use crate::publish::{ATTEMPT_HEADER, REASON_HEADER, SUBJECT_HEADER, TASK_ID_HEADER};

/// One stored dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// When it was dead-lettered, Unix seconds.
    pub time: i64,
    /// The task id, when one could be read.
    pub task_id: Option<String>,
    /// Why.
    pub reason: String,
    /// The last attempt.
    pub attempt: Option<u32>,
    /// Where it was first published.
    pub subject: Option<String>,
    /// Its size in bytes.
    pub bytes: usize,
    /// The original message, for replays.
    #[serde(skip)]
    pub payload: bytes::Bytes,
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The stream could not be read or written.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Re-publishing or resetting the record failed.
    #[error(transparent)]
    Producer(#[from] ProducerError),
    /// No dead letter carries that task id.
    #[error("no dead letter for task {0}")]
    NotFound(String),
}

fn topology(err: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Broker(BrokerError::Topology { what: "dead-letter stream".into(), reason: err.to_string() })
}

/// Every dead letter still kept (the newest `limit`, oldest first).
pub async fn list(
    js: &jetstream::Context,
    settings: &NatsSettings,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut stream = match js.get_stream(broker::dead_letter_stream(settings)).await {
        Ok(stream) => stream,
        Err(_) => return Ok(Vec::new()),
    };
    let state = stream.info().await.map_err(topology)?.state.clone();
    let mut letters = Vec::new();
    let mut sequence = state.last_sequence;
    while sequence >= state.first_sequence.max(1) && letters.len() < limit {
        if let Ok(raw) = stream.get_raw_message(sequence).await {
            let header = |name: &str| raw.headers.get(name).map(|v| v.to_string());
            letters.push(DeadLetter {
                sequence,
                time: raw.time.unix_timestamp(),
                task_id: header(TASK_ID_HEADER),
                reason: header(REASON_HEADER).unwrap_or_default(),
                attempt: header(ATTEMPT_HEADER).and_then(|a| a.parse().ok()),
                subject: header(SUBJECT_HEADER),
                bytes: raw.payload.len(),
                payload: raw.payload,
            });
        }
        sequence -= 1;
    }
    letters.reverse();
    Ok(letters)
}

/// Puts the dead letter of `task_id` back in the queue: its records are
/// reset to `queued`, it is re-published to its subject (under a new
/// message id, since the task id may still be in the duplicate window), and
/// it leaves the dead-letter stream.
pub async fn replay(
    producer: &Producer,
    settings: &NatsSettings,
    task_id: &str,
) -> Result<DeadLetter, DeadLetterError> {
    let js = producer.publisher().jetstream().clone();
    let letter = list(&js, settings, usize::MAX)
        .await?
        .into_iter()
        .rev()
        .find(|l| l.task_id.as_deref() == Some(task_id))
        .ok_or_else(|| DeadLetterError::NotFound(task_id.to_owned()))?;
    producer.reset_to_queued(task_id).await?;
    let subject = letter.subject.clone().unwrap_or_else(|| broker::task_subject(settings, None));
    let message_id = format!("{task_id}:replay:{}", letter.sequence);
    producer
        .publisher()
        .send(subject, &message_id, HeaderMap::new(), letter.payload.clone())
        .await
        .map_err(ProducerError::from)?;
    let stream = js.get_stream(broker::dead_letter_stream(settings)).await.map_err(topology)?;
    stream.delete_message(letter.sequence).await.map_err(topology)?;
    Ok(letter)
}
