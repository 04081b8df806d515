//! The campaign tables, in portable SQL (PostgreSQL and SQLite through
//! sqlx's `Any` driver). Every function is one short statement or
//! transaction: no connection is held while anything else happens.

use sqlx::{AnyPool, Row};

use super::{Campaign, CampaignError, CampaignStatus, Counters};

pub(super) fn now() -> i64 {
    i64::try_from(di::unix_now() as u64).unwrap_or(i64::MAX)
}

/// Inserts a draft campaign unless one with the id exists; returns the stored one.
pub(super) async fn create(pool: &AnyPool, c: &Campaign) -> Result<Campaign, CampaignError> {
    sqlx::query(
        "INSERT INTO courier_campaigns (id, task_name, kwargs, lane, status, follow_up, created_at) \
         VALUES ($1, $2, $3, $4, 'draft', $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&c.id)
    .bind(&c.task_name)
    .bind(serde_json::Value::Object(c.kwargs.clone()).to_string())
    .bind(c.lane.name())
    .bind(c.follow_up.clone())
    .bind(c.created_at)
    .execute(pool)
    .await?;
    load(pool, &c.id).await
}

/// The campaign `id`.
pub(super) async fn load(pool: &AnyPool, id: &str) -> Result<Campaign, CampaignError> {
    let row = sqlx::query(
        "SELECT id, task_name, kwargs, lane, status, follow_up, imported, generation, created_at, started_at, \
         finished_at FROM courier_campaigns WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| CampaignError::NotFound(id.to_owned()))?;
    let kwargs: String = row.try_get("kwargs")?;
    let lane: String = row.try_get("lane")?;
    let status: String = row.try_get("status")?;
    let broken = |what: &str| CampaignError::Invalid(format!("campaign {id:?}: stored {what} unreadable"));
    Ok(Campaign {
        id: row.try_get("id")?,
        task_name: row.try_get("task_name")?,
        kwargs: serde_json::from_str(&kwargs).map_err(|_| broken("kwargs"))?,
        lane: di::Lane::parse(&lane).ok_or_else(|| broken("lane"))?,
        status: CampaignStatus::parse(&status).ok_or_else(|| broken("status"))?,
        follow_up: row.try_get("follow_up")?,
        imported: row.try_get::<i64, _>("imported")? != 0,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Adds recipients `(seq, chat_id)`; ones already there (by position or by
/// chat) are skipped. Returns how many were new.
pub(super) async fn add_recipients(pool: &AnyPool, id: &str, batch: &[(i64, i64)]) -> Result<u64, CampaignError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut sql =
        String::from("INSERT INTO courier_campaign_recipients (campaign_id, seq, chat_id, status, updated_at) VALUES ");
    for i in 0..batch.len() {
        let n = i * 2;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("($1, ${}, ${}, 'pending', $2)", n + 3, n + 4));
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    // Placeholders only: the values are bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(now());
    for (seq, chat) in batch {
        query = query.bind(*seq).bind(*chat);
    }
    Ok(query.execute(pool).await?.rows_affected())
}

/// Adds the recipients a query on the same database lists (its `chat_id`
/// column), in one statement inside the database: nothing streams through
/// this process, no read holds a lock while writes wait (SQLite), and
/// recipients are numbered by chat id, so a re-run numbers them the same
/// whatever order the query returns. Returns how many were new.
pub(super) async fn import_query(pool: &AnyPool, id: &str, query: &str) -> Result<u64, CampaignError> {
    let query = query.trim().trim_end_matches(';');
    let sql = format!(
        "INSERT INTO courier_campaign_recipients (campaign_id, seq, chat_id, status, updated_at) \
         SELECT $1, ROW_NUMBER() OVER (ORDER BY chat_id), chat_id, 'pending', $2 \
         FROM (SELECT DISTINCT CAST(chat_id AS BIGINT) AS chat_id FROM ({query}) AS source) AS chats \
         WHERE chat_id IS NOT NULL ON CONFLICT DO NOTHING"
    );
    // The operator's own query on their own database, by design.
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(now()).execute(pool).await;
    done.map(|d| d.rows_affected()).map_err(|e| {
        CampaignError::Recipients(super::recipients::RecipientError::Query(format!(
            "{e} (the query must return a chat_id column)"
        )))
    })
}

/// Marks the import complete and the campaign running.
pub(super) async fn start(pool: &AnyPool, id: &str) -> Result<(), CampaignError> {
    sqlx::query(
        "UPDATE courier_campaigns SET imported = 1, status = 'running', started_at = $2 \
         WHERE id = $1 AND status = 'draft'",
    )
    .bind(id)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes up to `limit` recipients after `after` (by seq) that need a
/// message (`pending`, `parked`) and marks them `queued` in `generation`,
/// in one transaction, before anything is published: a worker that parks
/// one of them later moves it from `queued`, never the other way round.
/// Returns `(seq, chat_id)` of those it took.
pub(super) async fn take_page(
    pool: &AnyPool,
    id: &str,
    after: i64,
    limit: i64,
    generation: i64,
) -> Result<Vec<(i64, i64)>, CampaignError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT seq, chat_id FROM courier_campaign_recipients \
         WHERE campaign_id = $1 AND status IN ('pending', 'parked') AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let page: Vec<(i64, i64)> =
        rows.iter().map(|r| Ok((r.try_get("seq")?, r.try_get("chat_id")?))).collect::<Result<_, sqlx::Error>>()?;
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        sqlx::query(
            "UPDATE courier_campaign_recipients SET status = 'queued', generation = $4, updated_at = $5 \
             WHERE campaign_id = $1 AND seq >= $2 AND seq <= $3 AND status IN ('pending', 'parked')",
        )
        .bind(id)
        .bind(first.0)
        .bind(last.0)
        .bind(generation)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE courier_campaigns SET publishing_first = $2, publishing_last = $3 WHERE id = $1")
            .bind(id)
            .bind(first.0)
            .bind(last.0)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(page)
}

/// The queued rows of the page a fan-out was publishing when it stopped
/// (a crash): `(seq, chat_id, generation)`, and the page's range.
pub(super) async fn interrupted_page(
    pool: &AnyPool,
    id: &str,
) -> Result<(Vec<(i64, i64, i64)>, (i64, i64)), CampaignError> {
    let row = sqlx::query("SELECT publishing_first, publishing_last FROM courier_campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok((Vec::new(), (0, 0))) };
    let (first, last): (i64, i64) = (row.try_get("publishing_first")?, row.try_get("publishing_last")?);
    if last == 0 {
        return Ok((Vec::new(), (0, 0)));
    }
    let rows = sqlx::query(
        "SELECT seq, chat_id, generation FROM courier_campaign_recipients \
         WHERE campaign_id = $1 AND status = 'queued' AND seq >= $2 AND seq <= $3 ORDER BY seq",
    )
    .bind(id)
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await?;
    let rows = rows
        .iter()
        .map(|r| Ok((r.try_get("seq")?, r.try_get("chat_id")?, r.try_get("generation")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok((rows, (first, last)))
}

/// The page `first..=last` is in the stream.
pub(super) async fn page_published(pool: &AnyPool, id: &str, first: i64, last: i64) -> Result<(), CampaignError> {
    sqlx::query(
        "UPDATE courier_campaigns SET publishing_first = 0, publishing_last = 0 \
         WHERE id = $1 AND publishing_first = $2 AND publishing_last = $3",
    )
    .bind(id)
    .bind(first)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves the campaign from one of `from` to `to`; false if it was in none.
pub(super) async fn transition(
    pool: &AnyPool,
    id: &str,
    from: &[CampaignStatus],
    to: CampaignStatus,
) -> Result<bool, CampaignError> {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.name())).collect();
    let finished = matches!(to, CampaignStatus::Cancelled | CampaignStatus::Done);
    let bump = if to == CampaignStatus::Running { ", generation = generation + 1" } else { "" };
    let sql = format!(
        "UPDATE courier_campaigns SET status = $2{bump}{} WHERE id = $1 AND status IN ({})",
        if finished { ", finished_at = $3" } else { "" },
        from.join(", ")
    );
    // Built from status names of this module, never from input.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(to.name());
    if finished {
        query = query.bind(now());
    }
    Ok(query.execute(pool).await?.rows_affected() == 1)
}

/// Cancels every recipient not yet reached.
pub(super) async fn cancel_outstanding(pool: &AnyPool, id: &str) -> Result<u64, CampaignError> {
    Ok(sqlx::query(
        "UPDATE courier_campaign_recipients SET status = 'cancelled', updated_at = $2 \
         WHERE campaign_id = $1 AND status IN ('pending', 'queued', 'parked')",
    )
    .bind(id)
    .bind(now())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Counts the recipients by status.
pub(super) async fn counters(pool: &AnyPool, id: &str) -> Result<Counters, CampaignError> {
    let rows = sqlx::query(
        "SELECT status, COUNT(*) AS n FROM courier_campaign_recipients WHERE campaign_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut counters = Counters::default();
    for status in super::RECIPIENT_STATUSES {
        counters.by_status.insert(status.to_owned(), 0);
    }
    for row in rows {
        let status: String = row.try_get("status")?;
        let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
        counters.total += n;
        counters.by_status.insert(status, n);
    }
    Ok(counters)
}

/// Marks a running, fully imported campaign done when no recipient is
/// outstanding; true if it did.
pub(super) async fn finish_if_complete(pool: &AnyPool, id: &str) -> Result<bool, CampaignError> {
    Ok(sqlx::query(
        "UPDATE courier_campaigns SET status = 'done', finished_at = $2 \
         WHERE id = $1 AND status = 'running' AND imported = 1 AND NOT EXISTS (\
           SELECT 1 FROM courier_campaign_recipients \
           WHERE campaign_id = $1 AND status IN ('pending', 'queued', 'parked'))",
    )
    .bind(id)
    .bind(now())
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// One recipient in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    /// Position in the source.
    pub seq: i64,
    /// The chat.
    pub chat_id: i64,
    /// Its outcome (or `pending`/`queued` while running).
    pub status: String,
    /// Telegram's message id, when sent.
    pub message_id: Option<i64>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

impl ReportRow {
    /// The report's CSV header.
    pub const CSV_HEADER: &'static str = "seq,chat_id,status,message_id,reason";

    /// The row as a CSV line (no line end).
    pub fn csv(&self) -> String {
        let reason = self.reason.as_deref().unwrap_or_default();
        let reason = if reason.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", reason.replace('"', "\"\""))
        } else {
            reason.to_owned()
        };
        let message = self.message_id.map(|m| m.to_string()).unwrap_or_default();
        format!("{},{},{},{message},{reason}", self.seq, self.chat_id, self.status)
    }
}

/// Up to `limit` recipients after `after` (by seq); only dead chats with `dead_only`.
pub(super) async fn report_page(
    pool: &AnyPool,
    id: &str,
    after: i64,
    limit: i64,
    dead_only: bool,
) -> Result<Vec<ReportRow>, CampaignError> {
    let filter = if dead_only { " AND status IN ('blocked', 'deactivated', 'kicked', 'not_found')" } else { "" };
    let sql = format!(
        "SELECT seq, chat_id, status, message_id, reason FROM courier_campaign_recipients \
         WHERE campaign_id = $1 AND seq > $2{filter} ORDER BY seq LIMIT $3"
    );
    // A constant filter; the values are bound.
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(after).bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(ReportRow {
                seq: r.try_get("seq")?,
                chat_id: r.try_get("chat_id")?,
                status: r.try_get("status")?,
                message_id: r.try_get("message_id")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect()
}
