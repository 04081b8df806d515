//! Runs `SELECT 1` through the injected database: the dependency-injection
//! workload of the benchmarks (Taskiq's `di_select`).

use di::prelude::*;

/// No arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {}

/// Returns what the database answered.
pub async fn run(ctx: TaskContext, _args: Args) -> TaskResult<i64> {
    let mut db = ctx.db().await?;
    Ok(di::sqlx::query_scalar("SELECT CAST(1 AS BIGINT)").fetch_one(&mut *db).await?)
}

register_task!(run: Args => i64);
