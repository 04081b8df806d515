//! Sleeps, then returns: for demos, load tests and graceful-shutdown checks.
//! Reports its progress every 100 ms and stops when cancelled.

use di::prelude::*;

/// How long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// Sleeps `ms` milliseconds and returns them.
pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u64> {
    let total = Duration::from_millis(args.ms);
    let started = tokio::time::Instant::now();
    loop {
        let left = total.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(args.ms);
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(Duration::from_millis(100))) => {}
            () = ctx.cancelled() => return Err(Failure::cancelled()),
        }
        let done = started.elapsed().as_secs_f64() / total.as_secs_f64();
        ctx.progress(done, &format!("slept {} ms", started.elapsed().as_millis()));
    }
}

register_task!(run: Args => u64, TaskOptions::new().timeout(Duration::from_secs(3600)));
