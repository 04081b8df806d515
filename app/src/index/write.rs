//! The task index's writes: a batch of rows in one transaction (on
//! PostgreSQL each column bound as one array, on SQLite every value), and
//! the hourly deletion of rows past the retention.

use std::time::Duration;

use sqlx::AnyPool;

use super::ms;

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
        sql.push_str(" ON CONFLICT (name, value, task_id) DO UPDATE SET finished_at = excluded.finished_at");
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

/// [`write_rows`] on PostgreSQL: each column bound as one array, so the
/// statement is the same for every batch (prepared once, planned once) and
/// costs a dozen bound values, not a dozen per row.
pub(super) async fn write_rows_pg(pool: &sqlx::PgPool, rows: &[Row], worker: &str) -> Result<(), sqlx::Error> {
    // A task id is indexed once, nearly always: a plain insert first (the
    // upsert's conflict check cost the server about 15 % more CPU per row,
    // BENCHMARKS.md); a batch holding a task indexed before (a record
    // written again) is written again as upserts.
    match write_rows_pg_as(pool, rows, worker, false).await {
        Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
            write_rows_pg_as(pool, rows, worker, true).await
        }
        done => done,
    }
}

async fn write_rows_pg_as(pool: &sqlx::PgPool, rows: &[Row], worker: &str, upsert: bool) -> Result<(), sqlx::Error> {
    fn column<'a, T>(rows: &'a [Row], value: impl Fn(&'a Row) -> T) -> Vec<T> {
        rows.iter().map(value).collect()
    }
    const INSERT_ROWS: &str = "INSERT INTO courier_task_index (task_id, task_name, status, attempt, labels, \
         arguments, result, error, started_at, finished_at, elapsed_ms, worker) \
         SELECT t.*, $12 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[]) AS t";
    const UPSERT_ROWS: &str = " ON CONFLICT (task_id) DO UPDATE SET task_name = excluded.task_name, \
         status = excluded.status, attempt = excluded.attempt, labels = excluded.labels, \
         arguments = excluded.arguments, result = excluded.result, error = excluded.error, \
         started_at = excluded.started_at, finished_at = excluded.finished_at, elapsed_ms = excluded.elapsed_ms, \
         worker = excluded.worker";
    const INSERT_KEYS: &str = "INSERT INTO courier_task_keys (name, value, task_id, finished_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])";
    const UPSERT_KEYS: &str = " ON CONFLICT (name, value, task_id) DO UPDATE SET finished_at = excluded.finished_at";
    let mut tx = pool.begin().await?;
    // History, not the source of truth: see `write_rows`.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let sql = if upsert { [INSERT_ROWS, UPSERT_ROWS].concat() } else { INSERT_ROWS.to_owned() };
    // Constant text: every value is bound.
    sqlx::query(sqlx::AssertSqlSafe(sql))
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
        let sql = if upsert { [INSERT_KEYS, UPSERT_KEYS].concat() } else { INSERT_KEYS.to_owned() };
        sqlx::query(sqlx::AssertSqlSafe(sql))
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
pub(super) async fn prune(pool: &AnyPool, retention: Duration) {
    let before = ms(di::unix_now()) - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
    for table in ["courier_task_keys", "courier_task_index"] {
        loop {
            let key = if table == "courier_task_keys" { "name, value, task_id" } else { "task_id" };
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
