//! The consumer a worker pulls from, kept alive: a pull that fails (the
//! durable was deleted, the server lost its streams) repairs the topology
//! from settings with backoff, a reconnect re-checks the consumer's
//! configuration, and `/readyz` says why while pulling is impossible.
//!
//! Pull requests are answered on one inbox per lane, subscribed once: a
//! pull costs one publish, where a fresh inbox per pull (async-nats'
//! `batch()`) also cost a subscribe, an unsubscribe and a timer, and the
//! worker pulls about as often as tasks finish.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use di::Lane;
use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::broker::Topology;
use crate::worker::jetstream::{PULL_EXPIRES, sleep_or_shutdown};

/// The first pause after a failed pull; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between repairs.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a pull request's expiry its end may still come (the
/// server says so); after that it is taken as lost (a server restarted
/// under it) and a new one is sent. async-nats waits 5 s; a second is
/// plenty on a working server and keeps a restart from stalling the lane.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// At shutdown, how long to wait for more messages of the pull request in
/// flight (to hand them straight back) before giving up on it.
const SHUTDOWN_DRAIN_IDLE: Duration = Duration::from_millis(200);

/// What the lane's inbox brought.
// A message is moved straight into its handler: boxing it would add an
// allocation per message to save stack space in one loop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Pulled {
    /// A message of the pull request in flight.
    Message(jetstream::Message),
    /// The request ended before it brought every message it asked for (it
    /// expired, or was never answered); it brought `delivered`.
    Ended {
        /// How many messages it brought.
        delivered: usize,
        /// Whether the server answered it (a 408 at its expiry); a request
        /// nobody answers means the consumer has no leader (a broker
        /// failover) or does not exist.
        answered: bool,
    },
    /// Pulling failed, and the request is over: why.
    Failed(String),
}

/// The pull request in flight: how many messages it asked for, and how
/// many it may still bring.
#[derive(Debug, Clone, Copy)]
struct Request {
    wanted: usize,
    remaining: usize,
}

impl Request {
    fn delivered(self) -> usize {
        self.wanted - self.remaining
    }
}

/// Whether the worker can pull from each lane's consumer, for `/readyz`.
#[derive(Debug, Default)]
pub struct PullHealth(Mutex<BTreeMap<&'static str, String>>);

impl PullHealth {
    /// Why pulling is impossible now, if it is (every lane that cannot).
    pub fn problem(&self) -> Option<String> {
        let problems = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!problems.is_empty())
            .then(|| problems.iter().map(|(lane, why)| format!("{lane} lane: {why}")).collect::<Vec<_>>().join("; "))
    }

    fn get(&self, lane: Lane) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(lane.name()).cloned()
    }

    fn set(&self, lane: Lane, problem: Option<String>) {
        let mut problems = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match problem {
            Some(why) => problems.insert(lane.name(), why),
            None => problems.remove(lane.name()),
        };
    }
}

/// One lane's consumer in use and what it takes to build it again.
#[derive(Debug)]
pub struct Puller {
    topology: Topology,
    lane: Lane,
    consumer: PullConsumer,
    client: async_nats::Client,
    /// The client's connect count when the consumer was last checked.
    connects: u64,
    /// Failed pulls in a row, for the backoff.
    failures: u32,
    health: Arc<PullHealth>,
    /// For the messages' acks.
    js: jetstream::Context,
    /// The inbox pull requests are answered on, and its subscription
    /// (subscribed at the first request, dropped when pulling fails).
    inbox: Option<(String, async_nats::Subscriber)>,
    /// The request in flight, at most one.
    request: Option<Request>,
    /// When the request in flight is taken as lost.
    deadline: Pin<Box<Sleep>>,
    /// When the consumer was last found to exist (empty pulls check it at
    /// most once per `PULL_EXPIRES`, however short the pulls).
    verified: Option<Instant>,
    /// The expiry of the last request (what "unanswered" waited for).
    expires: Duration,
}

impl Puller {
    /// Pulls `lane` from `consumer`, repairing it through `topology` when needed.
    pub fn new(
        topology: Topology,
        lane: Lane,
        consumer: PullConsumer,
        client: async_nats::Client,
        health: Arc<PullHealth>,
    ) -> Self {
        let connects = client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
        let js = topology.jetstream().clone();
        let deadline = Box::pin(tokio::time::sleep(Duration::ZERO));
        Self {
            topology,
            lane,
            consumer,
            client,
            connects,
            failures: 0,
            health,
            js,
            inbox: None,
            request: None,
            deadline,
            verified: None,
            expires: PULL_EXPIRES,
        }
    }

    /// Asks the consumer for `wanted` messages, answered on this lane's
    /// inbox. Only one request is in flight at a time: call it again once
    /// [`Puller::next`] has brought every message asked for, or said the
    /// request ended. The server ends it after `expires` if fewer came.
    pub async fn request(&mut self, wanted: usize, expires: Duration) -> Result<(), String> {
        debug_assert!(self.request.is_none(), "one pull request at a time");
        let inbox = match &self.inbox {
            Some((inbox, _)) => inbox.clone(),
            None => {
                let inbox = self.client.new_inbox();
                let subscriber = self
                    .client
                    .subscribe(inbox.clone())
                    .await
                    .map_err(|err| format!("cannot subscribe to the pull inbox: {err}"))?;
                self.inbox = Some((inbox.clone(), subscriber));
                inbox
            }
        };
        let config = BatchConfig { batch: wanted, expires: Some(expires), ..Default::default() };
        self.consumer.request_batch(config, inbox.into()).await.map_err(|err| format!("pull request failed: {err}"))?;
        self.request = Some(Request { wanted, remaining: wanted });
        self.deadline.as_mut().reset(Instant::now() + expires + ANSWER_MARGIN);
        self.expires = expires;
        Ok(())
    }

    /// The next message of the request in flight, or how it ended. A
    /// request that brought everything it asked for ends with its last
    /// message (no `Ended` follows).
    pub async fn next(&mut self) -> Pulled {
        loop {
            let (Some(request), Some((_, subscriber))) = (self.request.as_mut(), self.inbox.as_mut()) else {
                return Pulled::Failed("no pull request in flight".to_owned());
            };
            let arrived = tokio::select! {
                biased;
                message = subscriber.next() => Some(message),
                () = &mut self.deadline => None,
            };
            let Some(message) = arrived else {
                // Never answered (a request to a deleted consumer is not):
                // late messages must not count against the next request, so
                // the inbox goes too.
                let delivered = request.delivered();
                self.reset();
                return Pulled::Ended { delivered, answered: false };
            };
            let Some(message) = message else {
                self.reset();
                return Pulled::Failed("the pull inbox was closed".to_owned());
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    request.remaining = request.remaining.saturating_sub(1);
                    if request.remaining == 0 {
                        self.request = None;
                    }
                    return Pulled::Message(jetstream::Message { message, context: self.js.clone() });
                }
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => {
                    let delivered = request.delivered();
                    self.request = None;
                    return Pulled::Ended { delivered, answered: true };
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(status) => {
                    let why = message.description.unwrap_or_default();
                    self.reset();
                    return Pulled::Failed(format!("pull failed: {status} {why}"));
                }
            }
        }
    }

    /// At shutdown: the messages of the request in flight that are still on
    /// their way are handed back; then the inbox goes.
    pub async fn give_back(&mut self) {
        if let (Some(_), Some((_, subscriber))) = (self.request, self.inbox.as_mut()) {
            while let Ok(Some(message)) = tokio::time::timeout(SHUTDOWN_DRAIN_IDLE, subscriber.next()).await {
                if message.status.is_none() || message.status == Some(StatusCode::OK) {
                    let message = jetstream::Message { message, context: self.js.clone() };
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
        self.reset();
    }

    /// Forgets the request in flight and drops the inbox: anything still
    /// sent to it is redelivered after `ack_wait`.
    fn reset(&mut self) {
        self.request = None;
        self.inbox = None;
    }

    /// The lane it pulls.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// A pull worked: pulling is healthy.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!("pulling works again");
        }
        self.failures = 0;
        self.health.set(self.lane, None);
    }

    /// A pull request was never answered although the consumer exists:
    /// the broker is moving its leaders (a node of the cluster died) or is
    /// overloaded. `/readyz` says so until a pull is answered again.
    pub fn unanswered(&mut self) {
        let why = format!(
            "the consumer did not answer a pull within {} (a broker failover?)",
            crate::telemetry::human(self.expires + ANSWER_MARGIN)
        );
        if self.health.get(self.lane).as_deref() != Some(why.as_str()) {
            tracing::warn!(lane = self.lane.name(), "{why}; pulling again");
        }
        self.health.set(self.lane, Some(why));
    }

    /// After the client reconnected, checks the streams and the consumer
    /// again (a restarted server may have lost them, a taskiq producer may
    /// have rewritten the consumer's configuration).
    pub async fn recheck_after_reconnect(&mut self) {
        let connects = self.client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
        if connects == self.connects {
            return;
        }
        self.connects = connects;
        tracing::info!("reconnected to NATS: checking the streams and the consumer");
        match self.topology.ensure_lane(self.lane).await {
            Ok(consumer) => self.consumer = consumer,
            Err(err) => tracing::warn!(%err, lane = self.lane.name(), "cannot check the topology after the reconnect"),
        }
    }

    /// A pull brought nothing: checks that the consumer still exists
    /// (repairing it if not). False if shutdown came.
    pub async fn verify(&mut self, shutdown: &CancellationToken) -> bool {
        if self.verified.is_some_and(|at| at.elapsed() < PULL_EXPIRES) {
            // Checked a moment ago; the pull was answered (or is marked
            // unanswered by the caller).
            self.succeeded();
            return true;
        }
        let mut consumer = self.consumer.clone();
        match consumer.info().await {
            Ok(_) => {
                self.verified = Some(Instant::now());
                self.succeeded();
                true
            }
            Err(err) => self.failed(format!("consumer unavailable: {err}"), shutdown).await,
        }
    }

    /// A pull failed: marks the worker not ready, waits out the backoff and
    /// re-creates the streams and the consumer from settings. False if
    /// shutdown came during the wait.
    pub async fn failed(&mut self, why: String, shutdown: &CancellationToken) -> bool {
        self.reset();
        self.failures = self.failures.saturating_add(1);
        let pause = FIRST_BACKOFF.saturating_mul(1 << self.failures.min(8).saturating_sub(1)).min(MAX_BACKOFF);
        let lane = self.lane;
        tracing::warn!(reason = %why, lane = lane.name(), failures = self.failures, retry_in = %crate::telemetry::human(pause), "cannot pull; repairing the consumer");
        self.health.set(lane, Some(why));
        match self.topology.ensure_lane(lane).await {
            Ok(consumer) => self.consumer = consumer,
            Err(err) => {
                tracing::warn!(%err, lane = lane.name(), "cannot re-create the streams and the consumer");
                self.health.set(lane, Some(err.to_string()));
            }
        }
        !sleep_or_shutdown(pause, shutdown).await
    }
}
