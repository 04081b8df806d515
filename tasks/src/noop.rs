//! Does nothing: the baseline for measuring the queue's own cost.

use di::prelude::*;

/// No arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {}

/// Returns at once.
pub async fn run(_ctx: TaskContext, _args: Args) -> TaskResult<()> {
    Ok(())
}

register_task!(run: Args => ());
