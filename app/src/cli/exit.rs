//! One exit-code table for `worker`, `producer` and `bot`, and which
//! errors map to which code. Scripts branch on these; README.md lists them.

use std::process::ExitCode;

use di::StartupError;

use crate::bot::BotError;
use crate::broker::BrokerError;
use crate::broker::publish::PublishError;
use crate::producer::ProducerError;
use crate::worker::WorkerError;
use crate::worker::lifecycle::LifecycleError;

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// 0: it did what was asked.
    Ok = 0,
    /// 1: the work ran and failed: a task failed, a replay failed, or the
    /// process stopped on an error while running.
    Failed = 1,
    /// 2: usage or configuration: a bad flag or setting, an unknown task,
    /// arguments that do not fit the task, an invalid task id or label,
    /// duplicate task names. Clap's own usage errors are 2 as well.
    Usage = 2,
    /// 3: a component is unavailable: NATS, Redis, the database or Telegram
    /// is unreachable, refused us, or answered unexpectedly.
    Unavailable = 3,
    /// 4: no record (`result`) or no dead letter (`replay`) for that task id.
    NotFound = 4,
    /// 5: `send --wait` saw no final result in time.
    Timeout = 5,
    /// 6: `send --id` reused an id that was sent with other arguments.
    Conflict = 6,
}

/// The table, for `--help` of every binary (README.md has the same).
pub const EXIT_CODES: &str = "Exit codes (the same for worker, producer and bot):
  0  ok
  1  failed: a task failed, a replay failed, or the process stopped on an error
  2  usage or configuration: a bad flag or setting, an unknown task, arguments
     that do not fit the task, an invalid task id or label, duplicate task names
  3  a component is unavailable: NATS, Redis, the database or Telegram is
     unreachable, refused us, or answered unexpectedly
  4  not found: no record (result) or no dead letter (replay) for that task id,
     a task that already ended (cancel), no schedule of that name (schedules)
  5  timed out: send --wait saw no final result in time
  6  conflict: send --id reused an id that was sent with other arguments";

impl Exit {
    /// The number.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

impl From<&StartupError> for Exit {
    fn from(err: &StartupError) -> Self {
        match err {
            StartupError::Misconfigured { .. } => Self::Usage,
            StartupError::Unreachable { .. } | StartupError::Refused { .. } | StartupError::UnexpectedAnswer { .. } => {
                Self::Unavailable
            }
        }
    }
}

impl From<&BrokerError> for Exit {
    fn from(err: &BrokerError) -> Self {
        match err {
            BrokerError::Unreachable { .. } | BrokerError::NoJetStream { .. } => Self::Unavailable,
            // The server's stream disagrees with settings: fix one of them.
            BrokerError::StreamMismatch { .. } => Self::Usage,
            BrokerError::Topology { .. } => Self::Failed,
        }
    }
}

impl From<&WorkerError> for Exit {
    fn from(err: &WorkerError) -> Self {
        match err {
            WorkerError::Broker(err) => err.into(),
            WorkerError::Startup(err) => err.into(),
            WorkerError::Lifecycle(LifecycleError::Registry(_)) => Self::Usage,
            WorkerError::Lifecycle(LifecycleError::Migrations { .. } | LifecycleError::Hook { .. }) => Self::Failed,
            WorkerError::Schedule(_) | WorkerError::Redis(_) => Self::Usage,
            WorkerError::Http { .. } => Self::Failed,
        }
    }
}

impl From<&BotError> for Exit {
    fn from(err: &BotError) -> Self {
        match err {
            BotError::NoToken => Self::Usage,
            BotError::Startup(err) => err.into(),
            BotError::Producer(err) => err.into(),
        }
    }
}

impl From<&ProducerError> for Exit {
    fn from(err: &ProducerError) -> Self {
        match err {
            ProducerError::Broker(err) => err.into(),
            ProducerError::Startup(err) => err.into(),
            // Configuration: core NATS cannot hold a task until a due time.
            ProducerError::Publish(PublishError::NeedsJetstream) => Self::Usage,
            ProducerError::Publish(_) | ProducerError::Store(_) => Self::Unavailable,
            ProducerError::Invalid(_) | ProducerError::Encode(_) => Self::Usage,
            ProducerError::Conflict { .. } => Self::Conflict,
            ProducerError::Timeout { .. } => Self::Timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_code_in_order() {
        let codes =
            [Exit::Ok, Exit::Failed, Exit::Usage, Exit::Unavailable, Exit::NotFound, Exit::Timeout, Exit::Conflict];
        for (n, exit) in codes.into_iter().enumerate() {
            assert_eq!(usize::from(exit.code()), n);
            assert!(EXIT_CODES.contains(&format!("\n  {n}  ")), "{n} missing from the table");
        }
    }

    #[test]
    fn misconfiguration_is_usage_and_the_rest_unavailable() {
        let part = di::Component::Telegram;
        let misconfigured = StartupError::Misconfigured { component: part, reason: String::new() };
        assert_eq!(Exit::from(&misconfigured), Exit::Usage);
        let odd = StartupError::UnexpectedAnswer { component: part, url: String::new(), reason: String::new() };
        assert_eq!(Exit::from(&odd), Exit::Unavailable);
        assert_eq!(Exit::from(&BotError::NoToken), Exit::Usage);
    }
}
