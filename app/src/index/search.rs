//! Reading the task index: the board's search, one task's row, and the
//! last hour's counts.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AnyPool, Row as _};

/// What a search asks for; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// One task id.
    pub task_id: Option<String>,
    /// The task name.
    pub task_name: Option<String>,
    /// success, failed, cancelled.
    pub status: Option<String>,
    /// An argument or label value: `chat_id=42`, `label.campaign=c1`.
    pub key: Option<(String, String)>,
    /// Finished at or after (Unix ms).
    pub since: Option<i64>,
    /// Finished before (Unix ms).
    pub before: Option<i64>,
    /// The last row of the previous page (finished at, task id): the next
    /// page starts after it.
    pub after: Option<(i64, String)>,
    /// Rows per page.
    pub limit: i64,
}

/// A row as the board shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The task id.
    pub task_id: String,
    /// Its name.
    pub task_name: String,
    /// Its final status.
    pub status: String,
    /// The attempt that ended it.
    pub attempt: i64,
    /// Labels, JSON.
    pub labels: String,
    /// Arguments, JSON (secrets masked).
    pub arguments: String,
    /// Result, JSON.
    pub result: Option<String>,
    /// Error text.
    pub error: Option<String>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: i64,
    /// How long the last attempt ran.
    pub elapsed_ms: i64,
    /// The worker that wrote the row.
    pub worker: String,
}

const SELECT: &str = "SELECT i.task_id, i.task_name, i.status, i.attempt, i.labels, i.arguments, i.result, i.error, \
                      i.started_at, i.finished_at, i.elapsed_ms, i.worker FROM ";

/// Newest first, at most `query.limit` rows.
pub async fn search(pool: &AnyPool, query: &Query) -> Result<Vec<Found>, sqlx::Error> {
    let mut sql = String::from(SELECT);
    let mut binds: Vec<Bind> = Vec::new();
    let mut clauses: Vec<String> = Vec::new();
    let (time, id) = if let Some((name, value)) = &query.key {
        // A key row left by an earlier indexing of the task (another finish
        // time) is not its task's row now: not joined.
        sql.push_str(
            "courier_task_keys k JOIN courier_task_index i ON i.task_id = k.task_id AND i.finished_at = k.finished_at",
        );
        binds.push(Bind::Text(name.clone()));
        clauses.push(format!("k.name = ${}", binds.len()));
        binds.push(Bind::Text(value.clone()));
        clauses.push(format!("k.value = ${}", binds.len()));
        ("k.finished_at", "k.task_id")
    } else {
        sql.push_str("courier_task_index i");
        ("i.finished_at", "i.task_id")
    };
    for (column, value) in
        [("i.task_id", &query.task_id), ("i.task_name", &query.task_name), ("i.status", &query.status)]
    {
        if let Some(value) = value {
            binds.push(Bind::Text(value.clone()));
            clauses.push(format!("{column} = ${}", binds.len()));
        }
    }
    if let Some(since) = query.since {
        binds.push(Bind::Int(since));
        clauses.push(format!("{time} >= ${}", binds.len()));
    }
    if let Some(before) = query.before {
        binds.push(Bind::Int(before));
        clauses.push(format!("{time} < ${}", binds.len()));
    }
    if let Some((at, after_id)) = &query.after {
        binds.push(Bind::Int(*at));
        let n = binds.len();
        binds.push(Bind::Text(after_id.clone()));
        clauses.push(format!("({time} < ${n} OR ({time} = ${n} AND {id} < ${}))", n + 1));
    }
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY {time} DESC, {id} DESC LIMIT {}", query.limit.clamp(1, 500)));
    // Column names are constants; every value is bound.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        q = match bind {
            Bind::Text(text) => q.bind(text),
            Bind::Int(n) => q.bind(n),
        };
    }
    let rows = q.fetch_all(pool).await?;
    rows.iter().map(found).collect()
}

/// One task's row.
pub async fn get(pool: &AnyPool, task_id: &str) -> Result<Option<Found>, sqlx::Error> {
    let sql = format!("{SELECT}courier_task_index i WHERE i.task_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(task_id).fetch_optional(pool).await?;
    row.as_ref().map(found).transpose()
}

/// Tasks finished since `since` (Unix ms), by status.
pub async fn counts_since(pool: &AnyPool, since: i64) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT status, COUNT(*) AS n FROM courier_task_index WHERE finished_at >= $1 GROUP BY status")
            .bind(since)
            .fetch_all(pool)
            .await?;
    rows.iter().map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?))).collect()
}

enum Bind {
    Text(String),
    Int(i64),
}

fn found(row: &sqlx::any::AnyRow) -> Result<Found, sqlx::Error> {
    Ok(Found {
        task_id: row.try_get(0)?,
        task_name: row.try_get(1)?,
        status: row.try_get(2)?,
        attempt: row.try_get(3)?,
        labels: row.try_get(4)?,
        arguments: row.try_get(5)?,
        result: row.try_get(6)?,
        error: row.try_get(7)?,
        started_at: row.try_get(8)?,
        finished_at: row.try_get(9)?,
        elapsed_ms: row.try_get(10)?,
        worker: row.try_get(11)?,
    })
}
