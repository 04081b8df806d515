//! The NATS side: connecting, checking JetStream, and the topology (task
//! stream, dead-letter stream, durable consumer) built from settings.

pub mod advisories;
pub mod dead_letters;
pub mod publish;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use di::Lane;
use settings::NatsSettings;

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The server could not be reached or refused the credentials.
    #[error("nats at {url} is unreachable: {reason}")]
    Unreachable {
        /// The URL, redacted.
        url: String,
        /// The client's error as text, with the URLs' secrets removed (its
        /// own text can carry a URL with its password, so it is not kept as
        /// a source).
        reason: String,
    },
    /// The server answers but has no JetStream.
    #[error("nats at {url} has no JetStream: {reason}; start nats-server with -js")]
    NoJetStream {
        /// The URL, redacted.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// A stream or consumer could not be created or read.
    #[error("nats {what}: {source}")]
    Topology {
        /// Which object (`stream COURIER`, `consumer courier-worker`).
        what: String,
        /// The client's or the server's error.
        #[source]
        source: async_nats::Error,
    },
    /// An existing stream cannot serve these settings.
    #[error(
        "stream {stream} exists with {found}, but settings ask for {wanted}; delete the stream or change nats.stream"
    )]
    StreamMismatch {
        /// The stream.
        stream: String,
        /// What the server has.
        found: String,
        /// What settings need.
        wanted: String,
    },
}

/// Wraps a client error about the object `what` (a stream, a consumer).
fn topology<E: std::error::Error + Send + Sync + 'static>(what: String) -> impl FnOnce(E) -> BrokerError {
    move |err| BrokerError::Topology { what, source: Box::new(err) }
}

/// Connects to one of the servers in `settings` (`nats.url`: one URL or
/// several; the client tries them in random order and learns the rest of a
/// cluster from the one it reaches), within `connect_timeout`. Credentials
/// in the URLs are used: `nats://user:password@host` or `nats://token@host`
/// (async-nats itself ignores a URL's user part). TLS: a `tls://` URL, or
/// `nats.tls_ca_file` (plus a client certificate for mutual TLS).
pub async fn connect(settings: &NatsSettings, name: &str) -> Result<async_nats::Client, BrokerError> {
    let unreachable = |reason: String| BrokerError::Unreachable { url: settings.url.redacted(), reason };
    let (addresses, mut options) = connect_options(&settings.url).map_err(unreachable)?;
    if let Some(creds) = &settings.credentials_file {
        options = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .map_err(|e| unreachable(format!("nats.credentials_file {creds:?}: {e}")))?;
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.require_tls(true).add_root_certificates(ca.into());
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) {
        options = options.add_client_certificate(cert.into(), key.into());
    }
    let options = options.name(name).connection_timeout(settings.connect_timeout);
    let client = tokio::time::timeout(settings.connect_timeout, options.connect(addresses))
        .await
        .map_err(|_| unreachable(format!("no connection within {:?}", settings.connect_timeout)))?
        .map_err(|err| unreachable(settings::redact_url(&err.to_string())))?;
    Ok(client)
}

/// Splits the credentials out of every server URL into one set of connect
/// options, and gives the URLs without them. One client has one set of
/// credentials: servers may repeat it or carry none, never another.
fn connect_options(urls: &settings::SecretUrls) -> Result<(Vec<String>, async_nats::ConnectOptions), String> {
    let mut addresses = Vec::with_capacity(urls.servers().len());
    let mut credentials: Option<(String, Option<String>)> = None;
    for server in urls.servers() {
        let mut url = url::Url::parse(server.expose()).map_err(|e| format!("invalid URL {server}: {e}"))?;
        let user = settings::percent_decode(url.username());
        if !user.is_empty() {
            let these = (user, url.password().map(settings::percent_decode));
            match &credentials {
                Some(seen) if *seen != these => {
                    return Err("the servers in nats.url carry different credentials".to_owned());
                }
                _ => credentials = Some(these),
            }
        }
        // Cannot fail for a URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        addresses.push(url.to_string());
    }
    if addresses.is_empty() {
        return Err("nats.url names no server".to_owned());
    }
    let options = match credentials {
        None => async_nats::ConnectOptions::new(),
        Some((user, Some(password))) => async_nats::ConnectOptions::with_user_and_password(user, password),
        Some((token, None)) => async_nats::ConnectOptions::with_token(token),
    };
    Ok((addresses, options))
}

/// Asks the server for JetStream's account info (raw, so it works with
/// nats-server 2.9, whose reply async-nats 0.51 cannot parse).
pub async fn check_jetstream(client: &async_nats::Client, settings: &NatsSettings) -> Result<(), BrokerError> {
    let no_js = |reason: String| BrokerError::NoJetStream { url: settings.url.redacted(), reason };
    let reply = tokio::time::timeout(settings.connect_timeout, client.request("$JS.API.INFO", "".into()))
        .await
        .map_err(|_| no_js("no reply to $JS.API.INFO".to_owned()))?
        .map_err(|err| no_js(err.to_string()))?;
    let body = String::from_utf8_lossy(&reply.payload);
    if body.contains("\"error\"") { Err(no_js(body.into_owned())) } else { Ok(()) }
}

/// The subject a task in `lane` is published to: the transactional lane
/// keeps `nats.subject` itself (what taskiq producers publish to), the
/// others are `<subject>.interactive`, `<subject>.bulk` and `<subject>.paid`.
pub fn lane_subject(settings: &NatsSettings, lane: Lane) -> String {
    match lane {
        Lane::Transactional => settings.subject.clone(),
        other => format!("{}.{}", settings.subject, other.name()),
    }
}

/// The durable consumer of `lane`: `nats.durable` for the transactional
/// lane, `<durable>_<lane>` for the others. Each
/// filters its lane's subject, so a bulk backlog never sits in front of a
/// reply (filters that do not overlap may share a work-queue stream).
pub fn lane_durable(settings: &NatsSettings, lane: Lane) -> String {
    match lane {
        Lane::Transactional => settings.durable.clone(),
        other => format!("{}_{}", settings.durable, other.name()),
    }
}

/// The stream that keeps dead letters.
pub fn dead_letter_stream(settings: &NatsSettings) -> String {
    format!("{}_DEAD", settings.stream)
}

/// The stream that captures JetStream's `MAX_DELIVERIES` advisories for
/// the task stream, so one that fires while no worker listens is kept.
pub fn advisory_stream(settings: &NatsSettings) -> String {
    format!("{}_ADVISORIES", settings.stream)
}

/// The subject of the task stream's `MAX_DELIVERIES` advisories (any consumer).
pub fn max_deliveries_subject(settings: &NatsSettings) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", settings.stream)
}

/// Deliveries allowed beyond the largest task attempt limit. A delivery
/// spends no attempt unless it starts the task (naks while the store is
/// down, hand-backs at shutdown, redeliveries of finished tasks), so the
/// server's `max_deliver` is only a backstop well above what tasks allow.
pub const MAX_DELIVER_HEADROOM: i64 = 50;

/// Creates (or reuses) the task stream and the dead-letter stream. An
/// existing task stream with another retention or storage is an error: a
/// work queue cannot be served by a stream that keeps or forgets differently.
pub async fn ensure_streams(js: &jetstream::Context, settings: &NatsSettings) -> Result<stream::Stream, BrokerError> {
    let wanted = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject.clone(), format!("{}.>", settings.subject)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        num_replicas: settings.stream_replicas,
        ..Default::default()
    };
    let mut task_stream =
        js.get_or_create_stream(wanted.clone()).await.map_err(topology(format!("stream {}", settings.stream)))?;
    let found = task_stream.info().await.map_err(topology(format!("stream {}", settings.stream)))?.config.clone();
    if found.retention != wanted.retention || found.storage != wanted.storage {
        return Err(BrokerError::StreamMismatch {
            stream: settings.stream.clone(),
            found: format!("retention {}, storage {}", retention_name(found.retention), storage_name(found.storage)),
            wanted: "retention work queue, storage file".to_owned(),
        });
    }
    if !found.subjects.iter().any(|s| s == &settings.subject) {
        return Err(BrokerError::StreamMismatch {
            stream: settings.stream.clone(),
            found: format!("subjects {}", found.subjects.join(", ")),
            wanted: format!("subject {}", settings.subject),
        });
    }
    if found.duplicate_window != wanted.duplicate_window {
        tracing::warn!(
            stream = %settings.stream,
            found = %humantime::format_duration(found.duplicate_window),
            wanted = %humantime::format_duration(wanted.duplicate_window),
            "the stream's duplicate window differs from nats.duplicate_window; the stream's is in force"
        );
    }
    let dead = stream::Config {
        name: dead_letter_stream(settings),
        subjects: vec![settings.dead_letter_subject.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: settings.dead_letter_max_age,
        num_replicas: settings.stream_replicas,
        ..Default::default()
    };
    js.get_or_create_stream(dead).await.map_err(topology(format!("stream {}", dead_letter_stream(settings))))?;
    let advisories = stream::Config {
        name: advisory_stream(settings),
        subjects: vec![max_deliveries_subject(settings)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: settings.dead_letter_max_age,
        num_replicas: settings.stream_replicas,
        ..Default::default()
    };
    js.get_or_create_stream(advisories).await.map_err(topology(format!("stream {}", advisory_stream(settings))))?;
    crate::schedule::delayed::ensure_stream(js, settings).await?;
    Ok(task_stream)
}

/// The durable consumer of `lane` every worker binds to. `max_deliver` is
/// raised to `most_attempts` + [`MAX_DELIVER_HEADROOM`] if settings give
/// less, so the server never gives up on a message before its task's
/// attempts are spent (deliveries that wait out Telegram's limits spend none).
pub fn consumer_config(settings: &NatsSettings, most_attempts: i64, lane: Lane) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(lane_durable(settings, lane)),
        filter_subject: lane_subject(settings, lane),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver.max(most_attempts.saturating_add(MAX_DELIVER_HEADROOM)),
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}

/// Binds to (or creates) the durable consumer of `lane`. One that filters
/// another subject (an unfiltered one from before lanes, or one a taskiq
/// producer rewrote) cannot live beside the other lanes' consumers: it is
/// deleted and created again (its unacknowledged messages stay in the stream
/// and are delivered again). Other differences are used as they are, with a
/// warning naming each: the worker counts attempts itself.
pub async fn ensure_consumer(
    task_stream: &stream::Stream,
    settings: &NatsSettings,
    most_attempts: i64,
    lane: Lane,
) -> Result<consumer::PullConsumer, BrokerError> {
    let wanted = consumer_config(settings, most_attempts, lane);
    let durable = lane_durable(settings, lane);
    let what = format!("consumer {durable}");
    let mut consumer: consumer::PullConsumer =
        task_stream.get_or_create_consumer(&durable, wanted.clone()).await.map_err(topology(what.clone()))?;
    let mut found = consumer.info().await.map_err(topology(what.clone()))?.config.clone();
    // Looked at again just before deleting: another worker starting at the
    // same moment may have replaced it already.
    if found.filter_subject != wanted.filter_subject
        && task_stream.consumer_info(&durable).await.map_err(topology(what.clone()))?.config.filter_subject
            != wanted.filter_subject
    {
        tracing::warn!(
            consumer = %durable,
            found = %found.filter_subject,
            wanted = %wanted.filter_subject,
            "the consumer filters another subject (created before lanes, or rewritten by a taskiq producer); \
             re-creating it (unacknowledged messages are delivered again)"
        );
        task_stream.delete_consumer(&durable).await.map_err(topology(what.clone()))?;
        consumer = task_stream.create_consumer(wanted.clone()).await.map_err(topology(what.clone()))?;
        found = consumer.info().await.map_err(topology(what.clone()))?.config.clone();
    }
    let differences = consumer_differences(&found, &wanted);
    if !differences.is_empty() {
        tracing::warn!(
            consumer = %durable,
            differences = %differences.join(", "),
            "the durable consumer's configuration differs from settings (was it created by a taskiq producer?); \
             it is used as it is. Delete it while no worker runs to apply the settings"
        );
    }
    Ok(consumer)
}

fn consumer_differences(found: &consumer::Config, wanted: &consumer::pull::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, found: String, wanted: String| {
        if found != wanted {
            out.push(format!("{name} {found} (settings: {wanted})"));
        }
    };
    diff("ack_policy", ack_policy_name(found.ack_policy).to_owned(), ack_policy_name(wanted.ack_policy).to_owned());
    let wait = |d: std::time::Duration| humantime::format_duration(d).to_string();
    diff("ack_wait", wait(found.ack_wait), wait(wanted.ack_wait));
    diff("max_deliver", found.max_deliver.to_string(), wanted.max_deliver.to_string());
    diff("max_ack_pending", found.max_ack_pending.to_string(), wanted.max_ack_pending.to_string());
    diff("filter_subject", found.filter_subject.clone(), wanted.filter_subject.clone());
    out
}

/// Names for messages (async-nats' `Debug` would say `WorkQueue`).
fn retention_name(policy: stream::RetentionPolicy) -> &'static str {
    match policy {
        stream::RetentionPolicy::Limits => "limits",
        stream::RetentionPolicy::Interest => "interest",
        stream::RetentionPolicy::WorkQueue => "work queue",
    }
}

fn storage_name(storage: stream::StorageType) -> &'static str {
    match storage {
        stream::StorageType::File => "file",
        stream::StorageType::Memory => "memory",
    }
}

fn ack_policy_name(policy: consumer::AckPolicy) -> &'static str {
    match policy {
        consumer::AckPolicy::Explicit => "explicit",
        consumer::AckPolicy::None => "none",
        consumer::AckPolicy::All => "all",
    }
}

/// What a worker needs to build its part of the broker again: the task
/// stream, the dead-letter and advisory streams, and the durable consumer.
/// Called at start-up, after every reconnect and whenever pulling fails, so
/// a deleted consumer or a server that lost its streams is repaired.
#[derive(Debug, Clone)]
pub struct Topology {
    js: jetstream::Context,
    settings: NatsSettings,
    most_attempts: i64,
}

impl Topology {
    /// A topology for `settings`; `most_attempts` is the largest attempt
    /// limit of any registered task.
    pub fn new(js: jetstream::Context, settings: NatsSettings, most_attempts: i64) -> Self {
        Self { js, settings, most_attempts }
    }

    /// Creates what is missing and binds every lane's consumer, warning
    /// about a consumer whose configuration differs from settings.
    pub async fn ensure(&self) -> Result<Vec<(Lane, consumer::PullConsumer)>, BrokerError> {
        let stream = ensure_streams(&self.js, &self.settings).await?;
        let mut consumers = Vec::new();
        // The transactional lane first: its durable is the one an older
        // Courier (or a taskiq producer) left unfiltered, which must be
        // replaced before the other lanes' consumers can exist beside it.
        for lane in [Lane::Transactional, Lane::Interactive, Lane::Bulk, Lane::Paid] {
            consumers.push((lane, ensure_consumer(&stream, &self.settings, self.most_attempts, lane).await?));
        }
        Ok(consumers)
    }

    /// Creates what is missing and binds `lane`'s consumer.
    pub async fn ensure_lane(&self, lane: Lane) -> Result<consumer::PullConsumer, BrokerError> {
        let stream = ensure_streams(&self.js, &self.settings).await?;
        ensure_consumer(&stream, &self.settings, self.most_attempts, lane).await
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The NATS settings it was built from.
    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }
}

/// How often a running task tells the server it is still alive: a third
/// of `ack_wait`, so two heartbeats may be lost before a redelivery.
pub fn progress_interval(settings: &NatsSettings) -> Duration {
    (settings.ack_wait / 3).max(Duration::from_millis(100))
}
