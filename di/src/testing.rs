//! Test doubles for users' tests: swap them in with shaku's
//! `with_component_override`, or take the whole set from [`mock_container`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::components::bot::{BotApi, BotError, SentMessage};
use crate::components::db::{Db, SqlxDb};
use crate::components::result_store::{ResultStore, StoreError};
use crate::container::AppModule;
use crate::record::ResultRecord;

/// A message the [`RecordingBot`] was asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedMessage {
    /// The chat.
    pub chat_id: i64,
    /// The text.
    pub text: String,
}

#[derive(Debug, Default)]
struct BotLog {
    sent: Vec<RecordedMessage>,
    /// Errors to return, one per call, before sending works again.
    failures: VecDeque<BotError>,
}

/// A [`BotApi`] that keeps every message instead of sending it.
///
/// Clones share one log, so keep a clone to inspect after boxing one into
/// the container.
#[derive(Debug, Clone, Default)]
pub struct RecordingBot {
    log: Arc<Mutex<BotLog>>,
}

impl RecordingBot {
    /// A bot with an empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far, in order.
    pub fn sent(&self) -> Vec<RecordedMessage> {
        self.lock().sent.clone()
    }

    /// Makes the next call fail with `error` (queued; one error per call).
    pub fn fail_next(&self, error: BotError) {
        self.lock().failures.push_back(error);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BotLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl BotApi for RecordingBot {
    async fn send_message(&self, chat_id: i64, text: &str) -> Result<SentMessage, BotError> {
        let mut log = self.lock();
        if let Some(err) = log.failures.pop_front() {
            return Err(err);
        }
        log.sent.push(RecordedMessage { chat_id, text: text.to_owned() });
        let message_id = i32::try_from(log.sent.len()).unwrap_or(i32::MAX);
        Ok(SentMessage { chat_id, message_id })
    }

    async fn check(&self) -> Result<String, BotError> {
        Ok("recording bot".to_owned())
    }
}

/// A [`ResultStore`] in memory. TTLs are remembered but never expire.
#[derive(Debug, Clone)]
pub struct InMemoryResultStore {
    records: Arc<Mutex<HashMap<String, ResultRecord>>>,
    /// Every write in order, to check the sequence of statuses.
    history: Arc<Mutex<Vec<(String, crate::TaskStatus)>>>,
    ttl: Duration,
}

impl Default for InMemoryResultStore {
    fn default() -> Self {
        Self { records: Arc::default(), history: Arc::default(), ttl: Duration::from_secs(3600) }
    }
}

impl InMemoryResultStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The statuses written for `task_id`, in order.
    pub fn history(&self, task_id: &str) -> Vec<crate::TaskStatus> {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.iter().filter(|(id, _)| id == task_id).map(|(_, status)| *status).collect()
    }

    /// Every record, by task id.
    pub fn records(&self) -> HashMap<String, ResultRecord> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl ResultStore for InMemoryResultStore {
    async fn put(&self, task_id: &str, record: &ResultRecord) -> Result<(), StoreError> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner).push((task_id.to_owned(), record.status));
        self.records.lock().unwrap_or_else(PoisonError::into_inner).insert(task_id.to_owned(), record.clone());
        Ok(())
    }

    async fn put_if_absent(&self, task_id: &str, record: &ResultRecord) -> Result<bool, StoreError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.contains_key(task_id) {
            return Ok(false);
        }
        self.history.lock().unwrap_or_else(PoisonError::into_inner).push((task_id.to_owned(), record.status));
        records.insert(task_id.to_owned(), record.clone());
        Ok(true)
    }

    async fn delete(&self, task_id: &str) -> Result<(), StoreError> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).remove(task_id);
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultRecord>, StoreError> {
        Ok(self.records.lock().unwrap_or_else(PoisonError::into_inner).get(task_id).cloned())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Handles to the doubles inside a [`mock_container`].
#[derive(Debug, Clone)]
pub struct Mocks {
    /// The in-memory SQLite database (a real database).
    pub db: SqlxDb,
    /// The bot that records messages.
    pub bot: RecordingBot,
    /// The in-memory result store.
    pub store: InMemoryResultStore,
}

/// A container of test doubles, built through shaku overrides: SQLite in
/// memory, a recording bot and an in-memory result store. No server needed.
pub async fn mock_container() -> Result<(Arc<AppModule>, Mocks), crate::DbError> {
    let mocks =
        Mocks { db: SqlxDb::sqlite_in_memory().await?, bot: RecordingBot::new(), store: InMemoryResultStore::new() };
    let module = AppModule::builder()
        .with_component_override::<dyn Db>(Box::new(mocks.db.clone()))
        .with_component_override::<dyn BotApi>(Box::new(mocks.bot.clone()))
        .with_component_override::<dyn ResultStore>(Box::new(mocks.store.clone()))
        .build();
    Ok((Arc::new(module), mocks))
}

/// The real executor over a [`mock_container`], for testing tasks end to
/// end without a broker: `runtime.run(tasks::x::TASK, &args).await`.
#[derive(Debug)]
pub struct TestRuntime {
    /// The executor, as the worker uses it.
    pub executor: crate::Executor,
    /// The doubles inside its container.
    pub mocks: Mocks,
    /// Where follow-up tasks go.
    pub enqueuer: crate::InMemoryEnqueuer,
    /// The container.
    pub module: Arc<AppModule>,
}

impl TestRuntime {
    /// Doubles plus every task registered in this binary.
    ///
    /// # Panics
    /// If two registered tasks share a name.
    pub async fn new() -> Result<Self, crate::DbError> {
        let (module, mocks) = mock_container().await?;
        let registry = crate::Registry::from_inventory().unwrap_or_else(|e| panic!("{e}"));
        let enqueuer = crate::InMemoryEnqueuer::new();
        let executor = crate::Executor::new(
            Arc::new(registry),
            module.clone(),
            Arc::new(enqueuer.clone()),
            crate::DecodeLimits::DEFAULT,
        );
        Ok(Self { executor, mocks, enqueuer, module })
    }

    /// Runs `task` once (attempt 1) with a fresh task id.
    pub async fn run<A: serde::Serialize, O: serde::de::DeserializeOwned>(
        &self,
        task: crate::TaskRef<A, O>,
        args: &A,
    ) -> crate::Execution {
        self.run_with_id(task, &crate::new_task_id(), args, 1).await
    }

    /// Runs `task` as attempt `attempt` under `task_id` (to test idempotency).
    ///
    /// # Panics
    /// If the arguments cannot be encoded (a bug in the test).
    pub async fn run_with_id<A: serde::Serialize, O: serde::de::DeserializeOwned>(
        &self,
        task: crate::TaskRef<A, O>,
        task_id: &str,
        args: &A,
        attempt: u32,
    ) -> crate::Execution {
        let bytes = task.envelope_with_id(task_id.to_owned(), args).and_then(|e| e.to_msgpack()).expect("encodable");
        self.run_bytes(&bytes, attempt).await
    }

    /// Runs raw envelope bytes (to test bad input).
    ///
    /// # Panics
    /// Never in practice: the in-memory store does not fail.
    pub async fn run_bytes(&self, bytes: &[u8], attempt: u32) -> crate::Execution {
        self.executor.process_attempt(bytes, attempt).await.expect("the in-memory store does not fail")
    }
}
