//! Where a campaign's recipients come from: a CSV file with a `chat_id`
//! column, a SQL query run on the application database, or a list. Each is
//! read in pages of [`PAGE`], never all at once, numbering recipients by
//! their position in the source (so a re-run import adds nothing twice).

use std::path::PathBuf;

use futures_util::TryStreamExt;
use sqlx::{AnyPool, Row};

/// Recipients read and inserted at a time.
pub const PAGE: usize = 500;

/// A recipient source.
#[derive(Debug, Clone)]
pub enum Recipients {
    /// A CSV file with a header row that has a `chat_id` column.
    Csv(PathBuf),
    /// A query on the application database; its `chat_id` column (or its
    /// only column) holds the chat ids.
    Sql(String),
    /// Chat ids given directly.
    List(Vec<i64>),
}

/// Why recipients could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipientError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: csv::Error,
    },
    /// No `chat_id` column in the header.
    #[error("{path}: no chat_id column in the header ({header})")]
    NoColumn {
        /// The file.
        path: String,
        /// The header row as read.
        header: String,
    },
    /// A chat id that is not an integer.
    #[error("{place}: chat_id {value:?} is not an integer")]
    NotAnId {
        /// Where (`file.csv line 7`, `row 7`).
        place: String,
        /// The value.
        value: String,
    },
    /// The query failed or returned no usable column.
    #[error("--sql: {0}")]
    Query(String),
}

/// Reads `source` page by page, calling `page` with `(seq, chat_id)` pairs
/// (seq from 1 in source order) until the source ends or `page` fails.
pub async fn for_each_page<E, F, Fut>(source: &Recipients, pool: Option<&AnyPool>, mut page: F) -> Result<(), E>
where
    E: From<RecipientError>,
    F: FnMut(Vec<(i64, i64)>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut seq = 0_i64;
    let mut batch = Vec::with_capacity(PAGE);
    let mut push = |chat: i64, batch: &mut Vec<(i64, i64)>| {
        seq += 1;
        batch.push((seq, chat));
    };
    match source {
        Recipients::List(chats) => {
            for chunk in chats.chunks(PAGE) {
                for &chat in chunk {
                    push(chat, &mut batch);
                }
                page(std::mem::take(&mut batch)).await?;
            }
        }
        Recipients::Csv(path) => {
            let name = path.display().to_string();
            let file = |source| RecipientError::File { path: name.clone(), source };
            let mut reader =
                csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_path(path).map_err(file)?;
            let header = reader.headers().map_err(file)?.clone();
            let column = header.iter().position(|h| h.eq_ignore_ascii_case("chat_id")).ok_or_else(|| {
                RecipientError::NoColumn { path: name.clone(), header: header.iter().collect::<Vec<_>>().join(",") }
            })?;
            let mut record = csv::StringRecord::new();
            while reader.read_record(&mut record).map_err(file)? {
                let value = record.get(column).unwrap_or_default();
                let line = record.position().map_or(0, csv::Position::line);
                let chat = value.parse().map_err(|_| RecipientError::NotAnId {
                    place: format!("{name} line {line}"),
                    value: value.into(),
                })?;
                push(chat, &mut batch);
                if batch.len() == PAGE {
                    page(std::mem::take(&mut batch)).await?;
                }
            }
        }
        Recipients::Sql(query) => {
            let pool = pool.ok_or_else(|| RecipientError::Query("no database".into()))?;
            // The operator's own query on their own database, by design.
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(query.clone())).fetch(pool);
            let mut row_number = 0;
            while let Some(row) = rows.try_next().await.map_err(|e| RecipientError::Query(e.to_string()))? {
                row_number += 1;
                let column = if row.columns().len() == 1 { 0 } else { column_index(&row)? };
                let chat = match row.try_get::<i64, _>(column) {
                    Ok(chat) => chat,
                    Err(_) => {
                        let value: String = row.try_get(column).unwrap_or_else(|_| "?".into());
                        let parsed = value.trim().parse();
                        parsed.map_err(|_| RecipientError::NotAnId { place: format!("row {row_number}"), value })?
                    }
                };
                push(chat, &mut batch);
                if batch.len() == PAGE {
                    page(std::mem::take(&mut batch)).await?;
                }
            }
        }
    }
    if !batch.is_empty() {
        page(batch).await?;
    }
    Ok(())
}

fn column_index(row: &sqlx::any::AnyRow) -> Result<usize, RecipientError> {
    use sqlx::Column;
    row.columns()
        .iter()
        .position(|c| c.name().eq_ignore_ascii_case("chat_id"))
        .ok_or_else(|| RecipientError::Query("the query returns several columns and none is chat_id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(source: Recipients) -> Result<Vec<(i64, i64)>, RecipientError> {
        let mut all = Vec::new();
        for_each_page(&source, None, |page| {
            all.extend(page);
            async { Ok::<_, RecipientError>(()) }
        })
        .await?;
        Ok(all)
    }

    #[tokio::test]
    async fn a_csv_is_read_by_its_chat_id_column_in_order() {
        let path = std::env::temp_dir().join(format!("courier-recipients-{}.csv", std::process::id()));
        std::fs::write(&path, "name,chat_id\n\"Smith, J\",42\nB, -100123 \n").unwrap();
        assert_eq!(read(Recipients::Csv(path.clone())).await.unwrap(), vec![(1, 42), (2, -100_123)]);
        std::fs::write(&path, "chat_id\n1\nabc\n").unwrap();
        let err = read(Recipients::Csv(path.clone())).await.unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("\"abc\""), "{err}");
        std::fs::write(&path, "id\n1\n").unwrap();
        assert!(matches!(read(Recipients::Csv(path.clone())).await, Err(RecipientError::NoColumn { .. })));
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn a_list_is_numbered_from_one() {
        let chats: Vec<i64> = (10..1_210).collect();
        let read = read(Recipients::List(chats)).await.unwrap();
        assert_eq!(read.len(), 1_200);
        assert_eq!((read[0], read[1_199]), ((1, 10), (1_200, 1_209)));
    }
}
