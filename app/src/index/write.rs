//! The task index's writes: a batch of rows in one transaction (on
//! PostgreSQL by `COPY`, on SQLite every value bound), and the hourly
//! deletion of rows past the retention.

use std::time::Duration;

use sqlx::AnyPool;

use super::copy::{Lines, copy_in};
use super::row::ms;

/// Rows deleted per statement when pruning.
const PRUNE_CHUNK: i64 = 10_000;

/// One row of the index, as written.
#[derive(Debug, Clone)]
pub struct Row {
    pub(super) task_id: String,
    pub(super) task_name: String,
    pub(super) status: &'static str,
    pub(super) attempt: i64,
    pub(super) labels: String,
    pub(super) arguments: String,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: i64,
    pub(super) elapsed_ms: i64,
    pub(super) keys: Vec<(String, String)>,
}

/// The columns bound per row.
const COLUMNS: usize = 12;

/// Writes rows in one transaction (rows, then their keys), every value
/// bound: the portable path (SQLite).
pub(super) async fn write_rows(pool: &AnyPool, rows: &[Row], worker: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // SQLite allows 32,766 bound values, PostgreSQL 65,535: chunks stay under both.
    for chunk in rows.chunks(2_000) {
        let mut sql = String::from(
            "INSERT INTO courier_task_index (task_id, task_name, status, attempt, labels, arguments, result, error, \
             started_at, finished_at, elapsed_ms, worker) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..COLUMNS {
                if c > 0 {
                    sql.push(',');
                }
                sql.push('$');
                sql.push_str(&(i * COLUMNS + c + 1).to_string());
            }
            sql.push(')');
        }
        sql.push_str(
            " ON CONFLICT (task_id) DO UPDATE SET task_name = excluded.task_name, status = excluded.status, \
             attempt = excluded.attempt, labels = excluded.labels, arguments = excluded.arguments, \
             result = excluded.result, error = excluded.error, started_at = excluded.started_at, \
             finished_at = excluded.finished_at, elapsed_ms = excluded.elapsed_ms, worker = excluded.worker",
        );
        // Placeholders only: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.task_id.as_str())
                .bind(row.task_name.as_str())
                .bind(row.status)
                .bind(row.attempt)
                .bind(row.labels.as_str())
                .bind(row.arguments.as_str())
                .bind(row.result.as_deref())
                .bind(row.error.as_deref())
                .bind(row.started_at)
                .bind(row.finished_at)
                .bind(row.elapsed_ms)
                .bind(worker);
        }
        query.execute(&mut *tx).await?;
    }
    let keys: Vec<(&Row, &(String, String))> = rows.iter().flat_map(|r| r.keys.iter().map(move |k| (r, k))).collect();
    for chunk in keys.chunks(4_000) {
        let mut sql = String::from("INSERT INTO courier_task_keys (name, value, task_id, finished_at) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            let n = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
        }
        // A task indexed again with the same finish time has these rows
        // already; with another, its old ones stay, and are not found
        // (a search joins a key row to the task row of its finish time).
        sql.push_str(" ON CONFLICT (name, value, finished_at, task_id) DO NOTHING");
        // Placeholders only: every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (row, (name, value)) in chunk {
            query = query.bind(name.as_str()).bind(value.as_str()).bind(row.task_id.as_str()).bind(row.finished_at);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The writer's own PostgreSQL pool (one connection, opened at the first
/// batch) when the database is PostgreSQL; `None` for SQLite or a URL this
/// cannot read (the portable path then writes).
pub fn writer_pool(settings: &settings::DatabaseSettings) -> Option<sqlx::PgPool> {
    let url = settings.url.expose();
    if !url.starts_with("postgres") {
        return None;
    }
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    Some(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.connect_timeout)
            .connect_lazy_with(options.application_name("courier-index")),
    )
}

/// [`write_rows`] on PostgreSQL: the batch as `COPY ... FROM STDIN` text,
/// PostgreSQL's bulk-load path (no statement to plan, no arrays to unpack:
/// about a fifth less of the server's CPU per row than one `INSERT` of a
/// dozen arrays, BENCHMARKS.md).
pub(super) async fn write_rows_pg(pool: &sqlx::PgPool, rows: &[Row], worker: &str) -> Result<(), sqlx::Error> {
    // A task id is indexed once, nearly always: copied in first; a batch
    // holding a task indexed before (a record written again) meets its
    // primary key and is written again as upserts.
    match copy_rows_pg(pool, rows, worker).await {
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => upsert_rows_pg(pool, rows, worker).await,
        done => done,
    }
}

const ROW_COLUMNS: &str = "task_id, task_name, status, attempt, labels, arguments, result, error, started_at, \
     finished_at, elapsed_ms, worker";
const KEY_COLUMNS: &str = "name, value, task_id, finished_at";

async fn copy_rows_pg(pool: &sqlx::PgPool, rows: &[Row], worker: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // History, not the source of truth: see `write_rows`.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    copy_in(&mut tx, &format!("COPY courier_task_index ({ROW_COLUMNS}) FROM STDIN"), Lines::Rows(rows, worker)).await?;
    if rows.iter().any(|row| !row.keys.is_empty()) {
        copy_in(&mut tx, &format!("COPY courier_task_keys ({KEY_COLUMNS}) FROM STDIN"), Lines::Keys(rows)).await?;
    }
    tx.commit().await
}

/// The batch as upserts: each column bound as one array, so the statement
/// is the same for every batch (prepared once, planned once).
async fn upsert_rows_pg(pool: &sqlx::PgPool, rows: &[Row], worker: &str) -> Result<(), sqlx::Error> {
    fn column<'a, T>(rows: &'a [Row], value: impl Fn(&'a Row) -> T) -> Vec<T> {
        rows.iter().map(value).collect()
    }
    const UPSERT_ROWS: &str = "INSERT INTO courier_task_index (task_id, task_name, status, attempt, labels, \
         arguments, result, error, started_at, finished_at, elapsed_ms, worker) \
         SELECT t.*, $12 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[]) AS t \
         ON CONFLICT (task_id) DO UPDATE SET task_name = excluded.task_name, \
         status = excluded.status, attempt = excluded.attempt, labels = excluded.labels, \
         arguments = excluded.arguments, result = excluded.result, error = excluded.error, \
         started_at = excluded.started_at, finished_at = excluded.finished_at, elapsed_ms = excluded.elapsed_ms, \
         worker = excluded.worker";
    const UPSERT_KEYS: &str = "INSERT INTO courier_task_keys (name, value, task_id, finished_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) \
         ON CONFLICT (name, value, finished_at, task_id) DO NOTHING";
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    sqlx::query(UPSERT_ROWS)
        .bind(column(rows, |r| r.task_id.as_str()))
        .bind(column(rows, |r| r.task_name.as_str()))
        .bind(column(rows, |r| r.status))
        .bind(column(rows, |r| r.attempt))
        .bind(column(rows, |r| r.labels.as_str()))
        .bind(column(rows, |r| r.arguments.as_str()))
        .bind(column(rows, |r| r.result.as_deref()))
        .bind(column(rows, |r| r.error.as_deref()))
        .bind(column(rows, |r| r.started_at))
        .bind(column(rows, |r| r.finished_at))
        .bind(column(rows, |r| r.elapsed_ms))
        .bind(worker)
        .execute(&mut *tx)
        .await?;
    let keys: Vec<(&Row, &(String, String))> = rows.iter().flat_map(|r| r.keys.iter().map(move |k| (r, k))).collect();
    if !keys.is_empty() {
        sqlx::query(UPSERT_KEYS)
            .bind(keys.iter().map(|(_, (name, _))| name.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|(_, (_, value))| value.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|(row, _)| row.task_id.as_str()).collect::<Vec<_>>())
            .bind(keys.iter().map(|(row, _)| row.finished_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Deletes rows past the retention, a chunk at a time.
pub async fn prune(pool: &AnyPool, retention: Duration) {
    let before = ms(di::unix_now()) - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
    for table in ["courier_task_keys", "courier_task_index"] {
        loop {
            // Each table's unique index, so every deletion is found by it.
            let key = if table == "courier_task_keys" { "name, value, finished_at, task_id" } else { "task_id" };
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE finished_at < $1 LIMIT {PRUNE_CHUNK})"
            );
            // The table and column names are constants; the time is bound.
            match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(before).execute(pool).await {
                Ok(done) if done.rows_affected() as i64 >= PRUNE_CHUNK => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(%err, table, "task index: old rows not deleted; trying again in an hour");
                    break;
                }
            }
        }
    }
}
