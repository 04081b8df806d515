//! Publishing: task envelopes (deduplicated by task id, confirmed by the
//! server), follow-up tasks from inside tasks, and dead-letter copies.

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use di::{EnqueueError, Enqueuer, Envelope, Lane};
use settings::{NatsMode, NatsSettings};

use crate::broker;

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "Courier-Reason";
/// Header carrying the dead letter's task id (when one could be read).
pub const TASK_ID_HEADER: &str = "Courier-Task-Id";
/// Header carrying the dead letter's last attempt.
pub const ATTEMPT_HEADER: &str = "Courier-Attempt";
/// Header carrying the subject the dead letter was first published to.
pub const SUBJECT_HEADER: &str = "Courier-Subject";
/// Header carrying the dead letter's task name (when one could be read).
pub const TASK_NAME_HEADER: &str = "Courier-Task-Name";

/// The longest label value also sent as a NATS header.
const MAX_LABEL_HEADER: usize = 256;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The envelope could not be encoded.
    #[error("cannot encode the task: {0}")]
    Encode(String),
    /// The message id cannot travel as the `Nats-Msg-Id` header (a line
    /// break in it, say); nothing was sent.
    #[error("the message id {0:?} cannot be sent as a NATS header")]
    InvalidMessageId(String),
    /// The server did not accept or confirm the message.
    #[error("nats did not accept the message on {subject}: {source}")]
    Rejected {
        /// Where it was sent.
        subject: String,
        /// The client's error (or a timeout's description).
        #[source]
        source: async_nats::Error,
    },
    /// A delayed task on core NATS, which keeps nothing until its due time.
    #[error("delayed tasks need nats.mode = \"jetstream\" (core NATS keeps nothing)")]
    NeedsJetstream,
}

/// What a publish achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored by the stream (JetStream) or flushed to the server (core).
    Stored,
    /// The stream already had this task id within its duplicate window.
    Duplicate,
}

/// Publishes to the task subjects and the dead-letter subject.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
}

impl Publisher {
    /// A publisher over an open connection.
    pub fn new(client: async_nats::Client, settings: NatsSettings) -> Self {
        Self { js: jetstream::new(client.clone()), client, settings }
    }

    /// The NATS settings it publishes by.
    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes one envelope with `Nats-Msg-Id` = task id to its lane's
    /// subject (the envelope's `lane` label, else `lane`, else
    /// transactional) and waits for the stream's ack (JetStream) or the
    /// server's flush (core NATS). A `lane` given for an envelope without
    /// the label is written into it, so the worker runs the task in that
    /// lane and not in the task's default.
    pub async fn publish(&self, envelope: &Envelope, lane: Option<Lane>) -> Result<Published, PublishError> {
        let (subject, headers, bytes) = self.prepare(envelope, lane)?;
        self.send(subject, &envelope.task_id, headers, bytes).await
    }

    /// Publishes one envelope to the delayed stream (JetStream only): it is
    /// moved to its lane's subject once `due` (Unix milliseconds) has come
    /// (see `crate::schedule`). Deduplicated by task id like
    /// [`Publisher::publish`].
    pub async fn publish_delayed(
        &self,
        envelope: &Envelope,
        lane: Option<Lane>,
        due_ms: u64,
    ) -> Result<Published, PublishError> {
        if self.settings.mode != NatsMode::Jetstream {
            return Err(PublishError::NeedsJetstream);
        }
        let (target, mut headers, bytes) = self.prepare(envelope, lane)?;
        try_insert(&mut headers, crate::schedule::DUE_HEADER, &due_ms.to_string());
        try_insert(&mut headers, crate::schedule::TARGET_HEADER, &target);
        try_insert(&mut headers, TASK_ID_HEADER, &envelope.task_id);
        self.send(crate::schedule::delayed_subject(&self.settings), &envelope.task_id, headers, bytes).await
    }

    /// Puts a message already in the task stream back into the delayed
    /// stream, due at `due_ms`, to be moved to `subject` again (a retry
    /// whose wait is too long for a nak: a nak with delay holds one of the
    /// consumer's ack-pending slots all that time). Both copies go out with
    /// the message id `<task_id>:r<due_ms>`, so neither the delayed stream
    /// nor, at the move, the task stream mistakes it for the first publish.
    pub async fn postpone(
        &self,
        subject: &str,
        task_id: &str,
        original: Option<&HeaderMap>,
        payload: Bytes,
        due_ms: u64,
    ) -> Result<Published, PublishError> {
        let mut headers = original.map(crate::schedule::delayed::carried_headers).unwrap_or_default();
        // What the gates that read the original message id (campaigns) see
        // after the move, where the message id is the move's.
        // (A message postponed twice keeps the first one.)
        let first = original.and_then(|h| h.get(crate::schedule::ORIGIN_ID_HEADER).or_else(|| h.get("Nats-Msg-Id")));
        if let Some(first) = first.map(|v| v.as_str().to_owned()) {
            try_insert(&mut headers, crate::schedule::ORIGIN_ID_HEADER, &first);
        }
        let move_id = format!("{task_id}:r{due_ms}");
        try_insert(&mut headers, crate::schedule::DUE_HEADER, &due_ms.to_string());
        try_insert(&mut headers, crate::schedule::TARGET_HEADER, subject);
        try_insert(&mut headers, TASK_ID_HEADER, task_id);
        try_insert(&mut headers, crate::schedule::MOVE_ID_HEADER, &move_id);
        self.send(crate::schedule::delayed_subject(&self.settings), &move_id, headers, payload).await
    }

    /// The subject, headers and bytes of an envelope: labelled with `lane`
    /// if it has no lane label, its short labels as headers.
    fn prepare(&self, envelope: &Envelope, lane: Option<Lane>) -> Result<(String, HeaderMap, Bytes), PublishError> {
        let labelled;
        let envelope = match (envelope.lane(), lane) {
            (None, Some(lane)) => {
                let mut copy = envelope.clone();
                copy.labels.insert("lane".to_owned(), lane.name().into());
                labelled = copy;
                &labelled
            }
            _ => envelope,
        };
        let bytes = envelope.to_msgpack().map_err(|e| PublishError::Encode(e.0))?;
        let lane = envelope.lane().unwrap_or_default();
        let subject = broker::lane_subject(&self.settings, lane);
        let mut headers = HeaderMap::new();
        // Labels travel as headers too, as taskiq-nats sends them; only short
        // ones (NATS refuses headers over 64 KiB, and the envelope has them all).
        for (key, value) in &envelope.labels {
            if let Some(text) = value.as_str().filter(|t| t.len() <= MAX_LABEL_HEADER)
                && !reserved_header(key)
            {
                try_insert(&mut headers, key, text);
            }
        }
        Ok((subject, headers, Bytes::from(bytes)))
    }

    /// Publishes raw bytes (a replay, a test's hostile payload). A message
    /// id that cannot be a header is an error, never a panic.
    pub async fn send(
        &self,
        subject: String,
        message_id: &str,
        mut headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, PublishError> {
        let rejected = |source: async_nats::Error| PublishError::Rejected { subject: subject.clone(), source };
        match self.settings.mode {
            NatsMode::Jetstream => {
                if !try_insert(&mut headers, "Nats-Msg-Id", message_id) {
                    return Err(PublishError::InvalidMessageId(message_id.to_owned()));
                }
                let message = PublishMessage::build().payload(payload).headers(headers);
                let ack = self
                    .js
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| rejected(e.into()))?
                    .await
                    .map_err(|e| rejected(e.into()))?;
                Ok(if ack.duplicate { Published::Duplicate } else { Published::Stored })
            }
            NatsMode::Core => {
                self.client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .map_err(|e| rejected(e.into()))?;
                self.client.flush().await.map_err(|e| rejected(e.into()))?;
                Ok(Published::Stored)
            }
        }
    }

    /// Copies a message that will never succeed to the dead-letter subject,
    /// with the reason and what is known of the task in headers; the task
    /// name is read from the payload (see [`Publisher::dead_letter_named`]).
    pub async fn dead_letter(
        &self,
        payload: Bytes,
        reason: &str,
        task_id: Option<&str>,
        attempt: u32,
        dedup_key: &str,
        subject: &str,
    ) -> Result<Published, PublishError> {
        let task_name = Envelope::salvage_task_name(&payload);
        self.dead_letter_named(payload, reason, task_id, task_name.as_deref(), attempt, dedup_key, subject).await
    }

    /// [`Publisher::dead_letter`] with the task name already known (it
    /// becomes the `Courier-Task-Name` header that `--task` filters on).
    #[allow(clippy::too_many_arguments)]
    pub async fn dead_letter_named(
        &self,
        payload: Bytes,
        reason: &str,
        task_id: Option<&str>,
        task_name: Option<&str>,
        attempt: u32,
        dedup_key: &str,
        subject: &str,
    ) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        try_insert(&mut headers, SUBJECT_HEADER, &one_line(subject));
        try_insert(&mut headers, REASON_HEADER, &one_line(reason));
        try_insert(&mut headers, ATTEMPT_HEADER, &attempt.to_string());
        if let Some(id) = task_id {
            try_insert(&mut headers, TASK_ID_HEADER, &one_line(id));
        }
        if let Some(name) = task_name {
            try_insert(&mut headers, TASK_NAME_HEADER, &one_line(name));
        }
        // The key (a stream sequence) and a hash of the payload: copies of
        // one message share the id, while a new message under a reused
        // sequence (the stream was deleted and created again within the
        // duplicate window) gets its own and is not dropped as a duplicate.
        let message_id = format!("dead:{}:{:016x}", one_line(dedup_key), di::envelope::fnv1a64(&payload));
        self.send(self.settings.dead_letter_subject.clone(), &message_id, headers, payload).await
    }
}

impl Publisher {
    /// Tells waiting producers that `task_id` has a final record: an empty
    /// core NATS message on `<done_subject>.<task_id>` (best effort; waiters
    /// also poll).
    pub async fn notify_done(&self, task_id: &str) {
        if let Some(subject) = done_subject(&self.settings, task_id) {
            let _ = self.client.publish(subject, Bytes::new()).await;
        }
    }

    /// Subscribes to `task_id`'s completion notice.
    pub async fn subscribe_done(&self, task_id: &str) -> Option<async_nats::Subscriber> {
        let subject = done_subject(&self.settings, task_id)?;
        self.client.subscribe(subject).await.ok()
    }
}

/// The notice subject of `task_id`, if the id can be a subject token
/// (ids from elsewhere may hold spaces or wildcards; those waiters poll).
fn done_subject(settings: &NatsSettings, task_id: &str) -> Option<String> {
    let safe = !task_id.is_empty()
        && task_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && task_id.len() <= 128;
    // Built by hand: once per task, and `format!` costs ten times as much.
    safe.then(|| {
        let mut subject = String::with_capacity(settings.done_subject.len() + 1 + task_id.len());
        subject.push_str(&settings.done_subject);
        subject.push('.');
        subject.push_str(task_id);
        subject
    })
}

/// Header names a label may not set: the server's (`Nats-*`: an
/// expected-stream header would make the stream refuse the message, a
/// message id would change its deduplication) and Courier's own controls
/// (`Courier-*`). Such labels stay in the envelope, just not as headers.
fn reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || lower.starts_with("courier-")
}

/// Header values cannot hold line breaks; reasons are shortened too.
fn one_line(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    flat.chars().take(1000).collect()
}

/// Adds a header if async-nats accepts its name and value, and says
/// whether it did (`HeaderMap::insert` with `&str` panics on a line break
/// in the value, or a space, a colon or a control character in the name).
pub(crate) fn try_insert(headers: &mut HeaderMap, name: &str, value: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    match (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
            true
        }
        _ => false,
    }
}

/// The [`Enqueuer`] tasks get in a worker: publishes through NATS.
#[derive(Debug, Clone)]
pub struct NatsEnqueuer {
    publisher: Publisher,
}

impl NatsEnqueuer {
    /// An enqueuer over `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl Enqueuer for NatsEnqueuer {
    async fn enqueue(&self, envelope: Envelope, lane: Lane) -> Result<(), EnqueueError> {
        match self.publisher.publish(&envelope, Some(lane)).await {
            Ok(_) => Ok(()),
            Err(PublishError::Encode(e)) => Err(EnqueueError::Encode(e)),
            Err(e) => Err(EnqueueError::Broker(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cannot_set_server_or_control_headers() {
        for name in ["Nats-Expected-Stream", "nats-msg-id", "Courier-Move-Id", "COURIER-DUE"] {
            assert!(reserved_header(name), "{name}");
        }
        assert!(!reserved_header("chat_id") && !reserved_header("natsy"));
    }

    #[test]
    fn headers_that_async_nats_would_panic_on_are_skipped() {
        let mut headers = HeaderMap::new();
        assert!(!try_insert(&mut headers, "k", "v\r\nPUB x 0"));
        assert!(!try_insert(&mut headers, "a b", "v"));
        assert!(!try_insert(&mut headers, "a:b", "v"));
        assert!(!try_insert(&mut headers, "", "v"));
        assert!(try_insert(&mut headers, "k", "v"));
        assert_eq!(headers.get("k").map(|v| v.as_str()), Some("v"));
    }
}
