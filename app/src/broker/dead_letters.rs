//! Dead letters: listing them (with filters) and putting them back in the
//! queue, reading the dead-letter stream one message at a time so memory
//! stays bounded however many there are.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage, stream::Stream};
use di::Envelope;
use serde::Serialize;
use settings::NatsSettings;

use crate::broker::publish::{ATTEMPT_HEADER, REASON_HEADER, SUBJECT_HEADER, TASK_ID_HEADER, TASK_NAME_HEADER};
use crate::broker::{self, BrokerError};
use crate::producer::{Producer, ProducerError};

/// One stored dead letter (its payload stays in the stream).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// When it was dead-lettered, Unix seconds.
    pub time: i64,
    /// The task id: read from the payload, else from the header (which is
    /// flattened to one line and may differ from the real id).
    pub task_id: Option<String>,
    /// The task name: from the header, else from the payload.
    pub task_name: Option<String>,
    /// Why.
    pub reason: String,
    /// The last attempt.
    pub attempt: Option<u32>,
    /// Where it was first published.
    pub subject: Option<String>,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Which dead letters a listing or a replay is about; every field set
/// must match (an empty filter matches all).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The real task id (or the one in the header).
    pub task_id: Option<String>,
    /// The task name.
    pub task_name: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<SystemTime>,
    /// Dead-lettered at or before this time.
    pub until: Option<SystemTime>,
    /// Text the reason contains (case-sensitive).
    pub reason_contains: Option<String>,
}

impl Filter {
    /// Whether `letter` (dead-lettered at `at`) matches.
    fn matches(&self, letter: &DeadLetter, header_task_id: Option<&str>, at: SystemTime) -> bool {
        let id_ok = self
            .task_id
            .as_deref()
            .is_none_or(|id| letter.task_id.as_deref() == Some(id) || header_task_id == Some(id));
        id_ok
            && self.task_name.as_deref().is_none_or(|name| letter.task_name.as_deref() == Some(name))
            && self.since.is_none_or(|since| at >= since)
            && self.until.is_none_or(|until| at <= until)
            && self.reason_contains.as_deref().is_none_or(|text| letter.reason.contains(text))
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCounts {
    /// Dead letters that matched the filter.
    pub matched: u64,
    /// Put back in the queue and removed from the dead letters.
    pub replayed: u64,
    /// Matched but could not be replayed (left in the dead letters).
    pub failed: u64,
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

fn topology<E: std::error::Error + Send + Sync + 'static>(err: E) -> DeadLetterError {
    DeadLetterError::Broker(BrokerError::Topology { what: "dead-letter stream".into(), source: Box::new(err) })
}

/// The dead-letter stream and its first and last sequence, if it exists.
async fn open(js: &jetstream::Context, settings: &NatsSettings) -> Result<Option<(Stream, u64, u64)>, DeadLetterError> {
    let Ok(mut stream) = js.get_stream(broker::dead_letter_stream(settings)).await else { return Ok(None) };
    let state = stream.info().await.map_err(topology)?.state.clone();
    if state.messages == 0 {
        return Ok(None);
    }
    Ok(Some((stream, state.first_sequence.max(1), state.last_sequence)))
}

/// Reads what a stored message says about itself; the header's task id
/// is returned apart (it may be a flattened copy of the real one).
fn describe(raw: &StreamMessage) -> (DeadLetter, Option<String>, SystemTime) {
    let header = |name: &str| raw.headers.get(name).map(|v| v.to_string());
    let header_task_id = header(TASK_ID_HEADER);
    let task_name = header(TASK_NAME_HEADER).or_else(|| Envelope::salvage_task_name(&raw.payload));
    let nanos = u64::try_from(raw.time.unix_timestamp_nanos()).unwrap_or(0);
    let letter = DeadLetter {
        sequence: raw.sequence,
        time: raw.time.unix_timestamp(),
        task_id: Envelope::salvage_task_id(&raw.payload).or_else(|| header_task_id.clone()),
        task_name,
        reason: header(REASON_HEADER).unwrap_or_default(),
        attempt: header(ATTEMPT_HEADER).and_then(|a| a.parse().ok()),
        subject: header(SUBJECT_HEADER),
        bytes: raw.payload.len(),
    };
    (letter, header_task_id, UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The newest `limit` dead letters that match `filter`, oldest first.
pub async fn list(
    js: &jetstream::Context,
    settings: &NatsSettings,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let Some((stream, first, last)) = open(js, settings).await? else { return Ok(Vec::new()) };
    let mut letters = Vec::new();
    let mut sequence = last;
    while sequence >= first && letters.len() < limit {
        // A gap (a letter replayed or expired) is skipped.
        if let Ok(raw) = stream.get_raw_message(sequence).await {
            let (letter, header_id, at) = describe(&raw);
            if filter.matches(&letter, header_id.as_deref(), at) {
                letters.push(letter);
            }
        }
        sequence -= 1;
    }
    letters.reverse();
    Ok(letters)
}

/// Puts the newest dead letter of `task_id` back in the queue (see
/// [`replay_newest`]); `NotFound` if there is none.
pub async fn replay(
    producer: &Producer,
    settings: &NatsSettings,
    task_id: &str,
) -> Result<DeadLetter, DeadLetterError> {
    let filter = Filter { task_id: Some(task_id.to_owned()), ..Filter::default() };
    replay_newest(producer, settings, &filter).await?.ok_or_else(|| DeadLetterError::NotFound(task_id.to_owned()))
}

/// Puts the newest dead letter matching `filter` back in the queue (its
/// records reset under the real task id, read from the payload), reading
/// the stream backwards one message at a time; `None` if none matches.
pub async fn replay_newest(
    producer: &Producer,
    settings: &NatsSettings,
    filter: &Filter,
) -> Result<Option<DeadLetter>, DeadLetterError> {
    let js = producer.publisher().jetstream().clone();
    let Some((stream, first, last)) = open(&js, settings).await? else { return Ok(None) };
    for sequence in (first..=last).rev() {
        if let Ok(raw) = stream.get_raw_message(sequence).await {
            let (letter, header_id, at) = describe(&raw);
            if filter.matches(&letter, header_id.as_deref(), at) {
                put_back(producer, settings, &stream, &letter, raw).await?;
                return Ok(Some(letter));
            }
        }
    }
    Ok(None)
}

/// Puts every dead letter matching `filter` back in the queue, oldest
/// first, one at a time; one that fails stays a dead letter and is counted.
pub async fn replay_matching(
    producer: &Producer,
    settings: &NatsSettings,
    filter: &Filter,
) -> Result<ReplayCounts, DeadLetterError> {
    replay_matching_each(producer, settings, filter, |_| {}).await
}

/// [`replay_matching`], calling `replayed` with each letter put back (the
/// board names them in its audit line).
pub async fn replay_matching_each(
    producer: &Producer,
    settings: &NatsSettings,
    filter: &Filter,
    mut replayed: impl FnMut(&DeadLetter),
) -> Result<ReplayCounts, DeadLetterError> {
    let js = producer.publisher().jetstream().clone();
    let mut counts = ReplayCounts::default();
    let Some((stream, first, last)) = open(&js, settings).await? else { return Ok(counts) };
    for sequence in first..=last {
        let Ok(raw) = stream.get_raw_message(sequence).await else { continue };
        let (letter, header_id, at) = describe(&raw);
        if !filter.matches(&letter, header_id.as_deref(), at) {
            continue;
        }
        counts.matched += 1;
        match put_back(producer, settings, &stream, &letter, raw).await {
            Ok(()) => {
                counts.replayed += 1;
                replayed(&letter);
            }
            Err(err) => {
                tracing::warn!(sequence, %err, "dead letter not replayed");
                counts.failed += 1;
            }
        }
    }
    Ok(counts)
}

/// Resets the records of the letter's real task id to `queued`,
/// re-publishes the payload to its subject under a new message id
/// (`<task_id>:replay:<seq>`: the task id may still be in the duplicate
/// window), and deletes the letter.
async fn put_back(
    producer: &Producer,
    settings: &NatsSettings,
    stream: &Stream,
    letter: &DeadLetter,
    raw: StreamMessage,
) -> Result<(), DeadLetterError> {
    if let Some(task_id) = &letter.task_id {
        producer.reset_to_queued(task_id).await?;
    }
    let subject = letter.subject.clone().unwrap_or_else(|| broker::lane_subject(settings, di::Lane::Transactional));
    // An id a header cannot carry (from a foreign producer) gets a neutral one.
    let id = letter.task_id.as_deref().filter(|id| di::validate_task_id(id).is_ok()).unwrap_or("dead");
    let message_id = format!("{id}:replay:{}", letter.sequence);
    producer
        .publisher()
        .send(subject, &message_id, HeaderMap::new(), raw.payload)
        .await
        .map_err(ProducerError::from)?;
    stream.delete_message(letter.sequence).await.map_err(topology)?;
    Ok(())
}

/// Deletes one dead letter for good (the board's "discard"); returns what
/// it was (its task id and name, for the audit line), `None` if it was not
/// there.
pub async fn discard(
    js: &jetstream::Context,
    settings: &NatsSettings,
    sequence: u64,
) -> Result<Option<DeadLetter>, DeadLetterError> {
    let Ok(stream) = js.get_stream(broker::dead_letter_stream(settings)).await else { return Ok(None) };
    let Ok(raw) = stream.get_raw_message(sequence).await else { return Ok(None) };
    let (letter, _, _) = describe(&raw);
    match stream.delete_message(sequence).await {
        Ok(deleted) => Ok(deleted.then_some(letter)),
        Err(err) if matches!(err.kind(), async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(ref e) if e.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND) => {
            Ok(None)
        }
        Err(err) => Err(topology(err)),
    }
}

/// How many dead letters are stored.
pub async fn count(js: &jetstream::Context, settings: &NatsSettings) -> Result<u64, DeadLetterError> {
    let Ok(mut stream) = js.get_stream(broker::dead_letter_stream(settings)).await else { return Ok(0) };
    Ok(stream.info().await.map_err(topology)?.state.messages)
}

/// Puts the dead letter stored at `sequence` back in the queue (the
/// board's "replay" on one row).
pub async fn replay_sequence(
    producer: &Producer,
    settings: &NatsSettings,
    sequence: u64,
) -> Result<DeadLetter, DeadLetterError> {
    let js = producer.publisher().jetstream().clone();
    let missing = || DeadLetterError::NotFound(format!("#{sequence}"));
    let Some((stream, _, _)) = open(&js, settings).await? else { return Err(missing()) };
    let raw = stream.get_raw_message(sequence).await.map_err(|_| missing())?;
    let (letter, _, _) = describe(&raw);
    put_back(producer, settings, &stream, &letter, raw).await?;
    Ok(letter)
}
