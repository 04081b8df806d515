//! The task contract: how a task fails, its options and retry policy, the
//! typed handle producers enqueue it with, and the registration macros.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::BotError;
use crate::envelope::{CodecError, Envelope};

/// How a task failed, which decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Worth another attempt (network, rate limit, lock timeout).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// Wait at least this long (Telegram's `retry_after`, say).
        retry_after: Option<Duration>,
    },
    /// Will fail again the same way (bad arguments, user blocked the bot).
    #[error("{message}")]
    Fatal {
        /// What went wrong.
        message: String,
    },
    /// Telegram's limits need a pause (the flood-control governor, or a
    /// 429): the task runs again after `retry_after` and the attempt is not
    /// spent.
    #[error("{message}")]
    Throttled {
        /// Why.
        message: String,
        /// How long to wait.
        retry_after: Duration,
    },
}

impl Failure {
    /// A failure worth retrying.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self::Retryable { message: message.to_string(), retry_after: None }
    }

    /// A failure worth retrying, not before `after`.
    pub fn retry_after(message: impl fmt::Display, after: Duration) -> Self {
        Self::Retryable { message: message.to_string(), retry_after: Some(after) }
    }

    /// A failure that retrying will not fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::Fatal { message: message.to_string() }
    }

    /// The task stops because a producer cancelled it (after
    /// `ctx.cancelled()`): it ends `cancelled`, its session rolled back.
    pub fn cancelled() -> Self {
        Self::Fatal { message: "stopped: cancelled".to_owned() }
    }

    /// A pause for Telegram's limits that spends no attempt.
    pub fn throttled(message: impl fmt::Display, retry_after: Duration) -> Self {
        Self::Throttled { message: message.to_string(), retry_after }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. } | Self::Throttled { .. })
    }
}

/// What a task returns.
pub type TaskResult<T> = Result<T, Failure>;

/// Classify any error at the line that fails: `.retryable()?` or `.fatal()?`.
pub trait ResultExt<T> {
    /// Turns the error into [`Failure::Retryable`].
    fn retryable(self) -> TaskResult<T>;
    /// Turns the error into [`Failure::Fatal`].
    fn fatal(self) -> TaskResult<T>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> TaskResult<T> {
        self.map_err(Failure::retryable)
    }

    fn fatal(self) -> TaskResult<T> {
        self.map_err(Failure::fatal)
    }
}

impl From<BotError> for Failure {
    fn from(err: BotError) -> Self {
        match err {
            BotError::RateLimited { retry_after } | BotError::Throttled { retry_after } => {
                Self::throttled(&err, retry_after)
            }
            BotError::Unavailable(_) => Self::retryable(err),
            BotError::Rejected(_) | BotError::ChatGone { .. } => Self::fatal(err),
        }
    }
}

impl From<sqlx::Error> for Failure {
    /// Connection trouble, deadlocks and lock timeouts are retryable;
    /// constraint violations and decoding errors are not.
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let message = format!("database: {err}");
        match &err {
            E::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() || db.is_check_violation() => {
                Self::fatal(message)
            }
            E::Database(_)
            | E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => Self::retryable(message),
            _ => Self::fatal(message),
        }
    }
}

impl From<crate::envelope::CodecError> for Failure {
    fn from(err: CodecError) -> Self {
        Self::fatal(err)
    }
}

/// When to try a failed task again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// The delay before the second attempt.
    pub initial_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// 5 attempts, 1 s then doubling, at most 1 min apart.
    pub const DEFAULT: Self =
        Self { max_attempts: 5, initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(60) };

    /// Never retry.
    pub const NONE: Self = Self { max_attempts: 1, ..Self::DEFAULT };

    /// The delay after failed attempt `attempt` (from 1): exponential, capped,
    /// with "equal jitter" (between half and all of it) so retries of many
    /// tasks that failed together do not arrive together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial_delay.saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A task's options, built in `const` context by the registration macro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// The registered name; `None` means the file (module) name.
    pub name: Option<&'static str>,
    /// When to retry.
    pub retry: RetryPolicy,
    /// The longest one attempt may run; it then counts as a retryable failure.
    pub timeout: Duration,
    /// The lane it travels in (its subject and consumer, and its share of
    /// the Telegram budget), unless an enqueue says otherwise (label `lane`).
    pub lane: crate::Lane,
    /// A cron schedule: the fleet enqueues the task, with its default
    /// arguments, once at each tick (see [`TaskOptions::cron`]).
    pub cron: Option<CronSpec>,
    /// Argument fields (top-level names) that hold secrets: the task index
    /// and the board never store or show their values.
    pub secret_fields: &'static [&'static str],
}

/// A cron schedule declared in a task's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronSpec {
    /// Five fields (minute, hour, day of month, month, day of week), or six
    /// with seconds first: `"0 9 * * *"`, `"*/10 * * * * *"`.
    pub expression: &'static str,
    /// The IANA time zone the fields are read in (`"Europe/Moscow"`).
    pub tz: &'static str,
}

impl TaskOptions {
    /// The defaults: file name, [`RetryPolicy::DEFAULT`], 5 min timeout.
    pub const fn new() -> Self {
        Self {
            name: None,
            retry: RetryPolicy::DEFAULT,
            timeout: Duration::from_secs(300),
            lane: crate::Lane::Transactional,
            cron: None,
            secret_fields: &[],
        }
    }

    /// Names argument fields that hold secrets (tokens, phone numbers):
    /// the task index stores them masked, so the board never shows them.
    ///
    /// ```
    /// use di::TaskOptions;
    /// const OPTIONS: TaskOptions = TaskOptions::new().secret(&["token"]);
    /// assert_eq!(OPTIONS.secret_fields, &["token"]);
    /// ```
    pub const fn secret(mut self, fields: &'static [&'static str]) -> Self {
        self.secret_fields = fields;
        self
    }

    /// Registers the task under `name` instead of the file name.
    pub const fn name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// Replaces the retry policy.
    pub const fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the number of attempts, keeping the policy's delays.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry.max_attempts = attempts;
        self
    }

    /// Sets the timeout of one attempt.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The lane of the task's Telegram messages (default: transactional).
    pub const fn lane(mut self, lane: crate::Lane) -> Self {
        self.lane = lane;
        self
    }

    /// Runs the task on a cron schedule, in UTC unless [`TaskOptions::tz`]
    /// says otherwise: every worker keeps the clock, and each tick is
    /// enqueued once fleet-wide (task id `cron:<task name>:<tick>`). The
    /// task's `Args` must decode from `{}` (every field has a default); the
    /// worker refuses to start otherwise, as it does for an expression it
    /// cannot parse.
    ///
    /// ```
    /// use di::TaskOptions;
    /// const OPTIONS: TaskOptions = TaskOptions::new().cron("0 9 * * *").tz("Europe/Moscow");
    /// assert_eq!(OPTIONS.cron.unwrap().tz, "Europe/Moscow");
    /// ```
    pub const fn cron(mut self, expression: &'static str) -> Self {
        self.cron = Some(CronSpec { expression, tz: "UTC" });
        self
    }

    /// The time zone of the cron schedule (an IANA name). Call it after
    /// [`TaskOptions::cron`]; before it, the registration does not compile.
    pub const fn tz(mut self, tz: &'static str) -> Self {
        match self.cron {
            Some(spec) => self.cron = Some(CronSpec { expression: spec.expression, tz }),
            None => panic!("TaskOptions::tz needs a schedule: call .cron(...) first"),
        }
        self
    }
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// The last segment of a module path: a task's default name is its file's.
pub fn name_from_module_path(module_path: &'static str) -> &'static str {
    // What follows the last `::`, found by a byte scan: this runs several
    // times per task, and a `"::"` pattern builds a substring searcher each time.
    let bytes = module_path.as_bytes();
    (1..bytes.len())
        .rev()
        .find(|&i| bytes[i - 1] == b':' && bytes[i] == b':')
        .map_or(module_path, |i| &module_path[i + 1..])
}

/// A typed handle to one task: its name plus its argument and output types,
/// so enqueueing the wrong arguments does not compile. The registration
/// macro defines one as `TASK` in the task's file.
///
/// ```
/// use di::{TaskOptions, TaskRef};
/// #[derive(serde::Serialize)]
/// struct Args { chat_id: i64 }
/// const TASK: TaskRef<Args, ()> = TaskRef::new("tasks::notify", TaskOptions::new());
/// let envelope = TASK.envelope(&Args { chat_id: 1 }).unwrap();
/// assert_eq!(envelope.task_name, "notify");
/// ```
/// Arguments of another type are a compile error:
/// ```compile_fail
/// use di::{TaskOptions, TaskRef};
/// #[derive(serde::Serialize)]
/// struct Args { chat_id: i64 }
/// #[derive(serde::Serialize)]
/// struct Other { name: String }
/// const TASK: TaskRef<Args, ()> = TaskRef::new("tasks::notify", TaskOptions::new());
/// let envelope = TASK.envelope(&Other { name: "x".into() });
/// ```
pub struct TaskRef<A, O> {
    module_path: &'static str,
    options: TaskOptions,
    _types: PhantomData<fn(A) -> O>,
}

impl<A, O> Clone for TaskRef<A, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, O> Copy for TaskRef<A, O> {}

impl<A, O> fmt::Debug for TaskRef<A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskRef").field(&self.name()).finish()
    }
}

impl<A, O> TaskRef<A, O> {
    /// Used by [`register_task!`](crate::register_task).
    pub const fn new(module_path: &'static str, options: TaskOptions) -> Self {
        Self { module_path, options, _types: PhantomData }
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.options.name.unwrap_or_else(|| name_from_module_path(self.module_path))
    }

    /// The task's options.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }
}

impl<A: Serialize, O: DeserializeOwned> TaskRef<A, O> {
    /// A new envelope for these arguments, with a fresh task id.
    pub fn envelope(&self, args: &A) -> Result<Envelope, CodecError> {
        self.envelope_with_id(crate::ids::new_task_id(), args)
    }

    /// An envelope with a task id of the caller's choosing (an idempotency
    /// key from the caller's domain, say).
    pub fn envelope_with_id(&self, task_id: String, args: &A) -> Result<Envelope, CodecError> {
        Envelope::new(task_id, self.name(), args)
    }

    /// Decodes this task's output from a result record's `return_value`.
    pub fn decode_output(&self, value: rmpv::Value) -> Result<O, CodecError> {
        crate::envelope::decode_value(value)
    }
}

/// Registers a task; the last line of a task file.
///
/// ```ignore
/// register_task!(run: Args => Output);
/// register_task!(run: Args => Output, TaskOptions::new().max_attempts(3));
/// ```
/// It also defines `pub const TASK: TaskRef<Args, Output>`, the typed
/// handle producers and other tasks enqueue this task with. `Args` is
/// `Serialize` and `Deserialize`: `producer tasks` reads its fields, types
/// and defaults from the two.
#[macro_export]
macro_rules! register_task {
    ($run:path : $args:ty => $out:ty $(,)?) => {
        $crate::register_task!($run: $args => $out, $crate::TaskOptions::new());
    };
    ($run:path : $args:ty => $out:ty, $options:expr $(,)?) => {
        /// The typed handle to enqueue this task with.
        pub const TASK: $crate::TaskRef<$args, $out> = $crate::TaskRef::new(module_path!(), $options);

        $crate::inventory::submit! {
            $crate::registry::TaskDef::new(module_path!(), file!(), line!(), $options, {
                fn erased(ctx: $crate::TaskContext, envelope: &$crate::Envelope) -> $crate::registry::TaskFuture {
                    $crate::registry::erase::<$args, $out, _>(ctx, envelope, $run)
                }
                erased
            }, $crate::registry::check::<$args>)
            .with_schema($crate::schema::of::<$args>)
        }
    };
}

/// Registers a function to run once at worker start-up (after the container
/// is built, before the first task) or at shutdown (after the last task).
///
/// ```ignore
/// register_hook!(startup: warm_cache);
/// register_hook!(shutdown: flush_metrics);
/// ```
#[macro_export]
macro_rules! register_hook {
    (startup : $hook:path) => {
        $crate::register_hook!(@ $crate::registry::HookKind::Startup, $hook);
    };
    (shutdown : $hook:path) => {
        $crate::register_hook!(@ $crate::registry::HookKind::Shutdown, $hook);
    };
    (@ $kind:expr, $hook:path) => {
        $crate::inventory::submit! {
            $crate::registry::HookDef::new($kind, concat!(module_path!(), "::", stringify!($hook)), file!(), line!(), {
                fn erased(ctx: $crate::registry::HookContext) -> $crate::registry::HookFuture {
                    ::std::boxed::Box::pin($hook(ctx))
                }
                erased
            })
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_named_after_the_last_segment_of_its_module_path() {
        for path in ["tasks::notify", "a::b::send_report", "plain", "a::", "::x", "a:b::c", ""] {
            assert_eq!(name_from_module_path(path), path.rsplit("::").next().unwrap(), "{path}");
        }
    }

    #[test]
    fn delays_grow_capped_and_jittered() {
        let policy =
            RetryPolicy { max_attempts: 10, initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(8) };
        for _ in 0..100 {
            let d1 = policy.delay(1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1), "{d1:?}");
            let d3 = policy.delay(3);
            assert!(d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4), "{d3:?}");
            assert!(policy.delay(30) <= Duration::from_secs(8));
        }
    }

    #[test]
    fn bot_errors_map_to_failures() {
        // Telegram's limits are not the task's failure: no attempt is spent.
        let f: Failure = BotError::RateLimited { retry_after: Duration::from_secs(3) }.into();
        assert_eq!(f, Failure::Throttled { message: f.to_string(), retry_after: Duration::from_secs(3) });
        let f: Failure = BotError::Throttled { retry_after: Duration::from_millis(400) }.into();
        assert!(matches!(f, Failure::Throttled { .. }) && f.is_retryable());
        assert!(!Failure::from(BotError::Rejected("bad request".into())).is_retryable());
        let gone = BotError::ChatGone { reason: crate::ChatGone::Blocked, detail: "blocked".into() };
        assert!(!Failure::from(gone).is_retryable());
        assert!(Failure::from(BotError::Unavailable("down".into())).is_retryable());
    }

    #[test]
    fn default_name_is_the_module_name() {
        assert_eq!(name_from_module_path("tasks::send_report"), "send_report");
        let task: TaskRef<(), ()> = TaskRef::new("tasks::noop", TaskOptions::new());
        assert_eq!(task.name(), "noop");
        let named: TaskRef<(), ()> = TaskRef::new("tasks::noop", TaskOptions::new().name("other"));
        assert_eq!(named.name(), "other");
    }
}
