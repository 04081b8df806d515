//! Sleeps, then returns: for demos, load tests and graceful-shutdown checks.

use di::prelude::*;

/// How long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// Sleeps `ms` milliseconds and returns them.
pub async fn run(_ctx: TaskContext, args: Args) -> TaskResult<u64> {
    tokio::time::sleep(Duration::from_millis(args.ms)).await;
    Ok(args.ms)
}

register_task!(run: Args => u64, TaskOptions::new().timeout(Duration::from_secs(3600)));
