//! The worker's Prometheus metrics: tasks received, succeeded, failed,
//! retried and dead-lettered by task name, execution time by task name,
//! tasks in flight, the consumer's pending count, and the rows the task
//! index dropped.
//!
//! Label values come only from the task registry: a name the worker does
//! not know (anyone can publish one) is counted as `unknown`, so the number
//! of series is bounded by the registry, not by what arrives.

use std::collections::BTreeSet;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use di::{Disposition, Execution, FloodObserver, Lane};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The `task` label of every name the registry does not know.
pub const UNKNOWN_TASK: &str = "unknown";

fn duration_histogram() -> Histogram {
    // 0.25 ms .. ~8 s, doubling.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The metrics of one worker process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<Labels, Counter>,
    succeeded: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    retried: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Tasks executing now.
    pub in_flight: Gauge,
    /// Messages the consumer has not delivered yet (refreshed per scrape).
    pub pending: Gauge,
    /// The registered task names: the only `task` label values besides
    /// [`UNKNOWN_TASK`].
    known: BTreeSet<&'static str>,
    /// Flood control's counters (handed to the governor as its observer).
    pub flood: FloodMetrics,
    /// Finished tasks the task index dropped (its queue was full), brought
    /// up to the indexer's count at each scrape ([`Metrics::index_dropped`]).
    index_dropped: Counter,
    index_dropped_sync: std::sync::Mutex<()>,
}

/// Flood control's metrics by lane (four values) and 429 scope (two).
#[derive(Debug, Clone, Default)]
pub struct FloodMetrics {
    sends: Family<Labels, Counter>,
    waited: Family<Labels, Counter<f64, AtomicU64>>,
    deferred: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    fallback: Gauge,
    paid: Counter,
    frozen: Gauge,
    stars_today: Gauge<f64, AtomicU64>,
}

/// How often a worker reads the shared flood-control state for the gauges.
const GOVERNOR_POLL: Duration = Duration::from_secs(5);

impl FloodMetrics {
    /// 429s answered to this process since it started, by lane (lanes
    /// without any left out).
    pub fn rate_limited_by_lane(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_lane = std::collections::BTreeMap::new();
        for lane in Lane::ALL {
            let n: u64 = ["chat", "bot"]
                .iter()
                .map(|scope| self.rate_limited.get_or_create(&vec![("lane", lane.name()), ("scope", *scope)]).get())
                .sum();
            if n > 0 {
                by_lane.insert(lane.name().to_owned(), n);
            }
        }
        by_lane
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("telegram_sends", "Messages flood control let through", self.sends.clone());
        registry.register(
            "telegram_wait_seconds",
            "Time messages waited for their slot inside tasks",
            self.waited.clone(),
        );
        registry.register(
            "telegram_deferred",
            "Messages with no budget: their tasks were handed back (no attempt spent)",
            self.deferred.clone(),
        );
        registry.register(
            "telegram_rate_limited",
            "429 answers from Telegram (scope: chat or bot)",
            self.rate_limited.clone(),
        );
        registry.register(
            "telegram_flood_fallback",
            "1 while Redis is unreachable and each process limits itself",
            self.fallback.clone(),
        );
        registry.register(
            "telegram_paid_sends",
            "Paid broadcasts this process admitted (0.1 Telegram Stars each)",
            self.paid.clone(),
        );
        registry.register(
            "telegram_frozen_keys",
            "Chats (and the bot) frozen by a 429 right now, for every worker of the bot",
            self.frozen.clone(),
        );
        registry.register(
            "telegram_paid_stars_today",
            "Telegram Stars the bot's paid lane spent today (UTC), all workers",
            self.stars_today.clone(),
        );
    }

    /// Keeps the shared gauges (frozen keys, Stars today) current: reads
    /// the governor's state every few seconds, until the process ends.
    pub async fn watch(self, governor: std::sync::Arc<di::Governor>) {
        loop {
            if let Ok(status) = governor.status().await {
                self.frozen.set(i64::try_from(status.frozen_count).unwrap_or(i64::MAX));
                self.stars_today.set(status.stars_today);
            }
            tokio::time::sleep(GOVERNOR_POLL).await;
        }
    }
}

impl FloodObserver for FloodMetrics {
    fn admitted(&self, lane: Lane, waited: Duration) {
        let labels = vec![("lane", lane.name())];
        self.sends.get_or_create(&labels).inc();
        self.waited.get_or_create(&labels).inc_by(waited.as_secs_f64());
    }

    fn deferred(&self, lane: Lane, _wait: Duration) {
        self.deferred.get_or_create(&vec![("lane", lane.name())]).inc();
    }

    fn rate_limited(&self, lane: Lane, bot_wide: bool) {
        let scope = if bot_wide { "bot" } else { "chat" };
        self.rate_limited.get_or_create(&vec![("lane", lane.name()), ("scope", scope)]).inc();
    }

    fn fallback(&self, active: bool) {
        self.fallback.set(i64::from(active));
    }

    fn paid(&self) {
        self.paid.inc();
    }
}

impl Metrics {
    /// Registers every metric under the `courier_` prefix; `task_names`
    /// (the registry's) are the only task labels, any other is `unknown`.
    pub fn new(task_names: &[&'static str]) -> Self {
        let mut registry = Registry::with_prefix("courier");
        let metrics = Self {
            received: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
            pending: Gauge::default(),
            registry: Registry::default(),
            known: task_names.iter().copied().collect(),
            flood: FloodMetrics::default(),
            index_dropped: Counter::default(),
            index_dropped_sync: std::sync::Mutex::new(()),
        };
        metrics.flood.register(&mut registry);
        registry.register("tasks_received", "Task messages received (every delivery)", metrics.received.clone());
        registry.register("tasks_succeeded", "Tasks that succeeded", metrics.succeeded.clone());
        registry.register("tasks_failed", "Tasks that failed for good", metrics.failed.clone());
        registry.register("tasks_retried", "Failed attempts that will be retried", metrics.retried.clone());
        registry.register("tasks_dead_lettered", "Messages copied to the dead letters", metrics.dead_lettered.clone());
        registry.register("task_duration_seconds", "Execution time of one attempt", metrics.duration.clone());
        registry.register("tasks_in_flight", "Tasks executing now", metrics.in_flight.clone());
        registry.register("consumer_pending", "Messages waiting in the queue", metrics.pending.clone());
        registry.register(
            "task_index_dropped",
            "Finished tasks not written to the task index (its queue was full)",
            metrics.index_dropped.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Counts one processed message.
    pub fn observe(&self, execution: &Execution) {
        let labels = vec![("task", self.task_label(execution.task_name.as_deref()))];
        self.received.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(execution.elapsed.as_secs_f64());
        match execution.disposition {
            Disposition::Ack => {
                self.succeeded.get_or_create(&labels).inc();
            }
            Disposition::Retry { .. } | Disposition::HandBack => {
                self.retried.get_or_create(&labels).inc();
            }
            Disposition::DeadLetter { .. } => {
                self.failed.get_or_create(&labels).inc();
                self.dead_lettered.get_or_create(&labels).inc();
            }
        }
    }

    /// Brings `courier_task_index_dropped_total` up to `total`, the
    /// indexer's count of dropped rows (it only grows).
    pub fn index_dropped(&self, total: u64) {
        let _one_at_a_time = self.index_dropped_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let counted = self.index_dropped.get();
        if total > counted {
            self.index_dropped.inc_by(total - counted);
        }
    }

    /// The label for `name`: itself if registered, else [`UNKNOWN_TASK`].
    fn task_label(&self, name: Option<&str>) -> &'static str {
        name.and_then(|name| self.known.get(name).copied()).unwrap_or(UNKNOWN_TASK)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
