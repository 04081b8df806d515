//! Unfinished tasks (queued, scheduled, running, retrying) are not in the
//! task index, which is written when a task finishes. The board finds them
//! by walking their Redis records page by page (as `producer cancel --task`
//! does), bounded: at most [`MAX_SCANNED`] records, [`MAX_CALLS`] pages and
//! [`BUDGET`] per search, and the page says when the walk stopped short. A
//! record holds the task's name, status, attempt, labels and times, not its
//! arguments: unfinished tasks are found by task name and label, never by an
//! argument's value.

use std::time::{Duration, Instant};

use di::ResultRecord;
use di::components::result_store::ScanCursor;

use crate::{Producer, ProducerError};

/// The statuses a search of unfinished tasks offers.
pub const STATUSES: [&str; 4] = ["queued", "scheduled", "running", "retrying"];
/// The most records one search reads.
pub const MAX_SCANNED: usize = 10_000;
/// The most pages (SCAN calls) one search asks for: a Redis holding many
/// other keys answers pages with few records.
pub const MAX_CALLS: usize = 200;
/// The longest one search walks.
pub const BUDGET: Duration = Duration::from_secs(2);

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One of [`STATUSES`].
    pub status: String,
    /// The registered task name.
    pub task_name: Option<String>,
    /// A label the task was sent with (`campaign`, `c1`).
    pub label: Option<(String, String)>,
    /// Unix ms: records written at or after.
    pub since: Option<i64>,
    /// Unix ms: records written before.
    pub until: Option<i64>,
}

impl Filter {
    fn matches(&self, record: &ResultRecord) -> bool {
        let written = (record.updated_at * 1000.0) as i64;
        record.status.name() == self.status
            && self.task_name.as_ref().is_none_or(|name| *name == record.task_name)
            && self.label.as_ref().is_none_or(|(key, wanted)| {
                record.labels.get(key).is_some_and(|value| match value.as_str() {
                    Some(text) => text == wanted,
                    None => value.to_string() == *wanted,
                })
            })
            && self.since.is_none_or(|since| written >= since)
            && self.until.is_none_or(|until| written < until)
    }
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching tasks (id, record), the most recently written first.
    pub rows: Vec<(String, ResultRecord)>,
    /// Records read.
    pub scanned: usize,
    /// Whether every record was read (false: a bound stopped the walk, or
    /// `limit` matches were found first).
    pub complete: bool,
}

/// Walks the unfinished records until `limit` match or a bound is reached.
pub async fn search(producer: &Producer, filter: &Filter, limit: usize) -> Result<Found, ProducerError> {
    let started = Instant::now();
    let mut found = Found::default();
    let mut cursor = ScanCursor::default();
    let mut calls = 0;
    loop {
        let (next, page) = producer.unfinished_page(cursor).await?;
        calls += 1;
        found.scanned += page.len();
        found.rows.extend(page.into_iter().filter(|(_, record)| filter.matches(record)));
        let Some(next) = next else {
            found.complete = true;
            break;
        };
        if found.scanned >= MAX_SCANNED
            || calls >= MAX_CALLS
            || started.elapsed() >= BUDGET
            || found.rows.len() >= limit
        {
            break;
        }
        cursor = next;
    }
    found.rows.sort_by(|a, b| b.1.updated_at.total_cmp(&a.1.updated_at).then_with(|| a.0.cmp(&b.0)));
    found.rows.truncate(limit);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_status_name_label_and_time() {
        let mut record = ResultRecord::new("sleep", di::TaskStatus::Queued, 0);
        record.updated_at = 100.0;
        record.labels.insert("campaign".into(), "c1".into());
        record.labels.insert("n".into(), rmpv::Value::from(7));
        let filter = |f: Filter| f.matches(&record);
        let queued = || Filter { status: "queued".into(), ..Default::default() };
        assert!(filter(queued()));
        assert!(!filter(Filter { status: "running".into(), ..Default::default() }));
        assert!(filter(Filter { task_name: Some("sleep".into()), ..queued() }));
        assert!(!filter(Filter { task_name: Some("noop".into()), ..queued() }));
        assert!(filter(Filter { label: Some(("campaign".into(), "c1".into())), ..queued() }));
        assert!(filter(Filter { label: Some(("n".into(), "7".into())), ..queued() }));
        assert!(!filter(Filter { label: Some(("campaign".into(), "c2".into())), ..queued() }));
        assert!(filter(Filter { since: Some(100_000), until: Some(100_001), ..queued() }));
        assert!(!filter(Filter { since: Some(100_001), ..queued() }));
    }
}
