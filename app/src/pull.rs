//! The consumer a worker pulls from, kept alive: a pull that fails (the
//! durable was deleted, the server lost its streams) repairs the topology
//! from settings with backoff, a reconnect re-checks the consumer's
//! configuration, and `/readyz` says why while pulling is impossible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use di::Lane;
use tokio_util::sync::CancellationToken;

use crate::broker::Topology;
use crate::serve::sleep_or_shutdown;

/// The first pause after a failed pull; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between repairs.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
        Self { topology, lane, consumer, client, connects, failures: 0, health }
    }

    /// The consumer to pull from.
    pub fn consumer(&self) -> &PullConsumer {
        &self.consumer
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
        let mut consumer = self.consumer.clone();
        match consumer.info().await {
            Ok(_) => {
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
