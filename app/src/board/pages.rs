//! The board's pages (GET): overview, tasks, one task, dead letters,
//! campaigns, schedules, flood control.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::Board;
use super::auth::Session;
use super::view::{self, bar, page, post_button, time_ms, time_s, unavailable};
use crate::index;

/// Slow sources do not hold a page: each gets this long.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn within<T, E: std::fmt::Display>(
    what: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(SOURCE_TIMEOUT, what).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer in {} s", SOURCE_TIMEOUT.as_secs())),
    }
}

/// The one-line notice an action leaves (`?note=`); fixed texts only, so a
/// link cannot put words on the page.
pub(super) fn note(params: &HashMap<String, String>) -> Option<String> {
    let n = params.get("n").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let text = match params.get("note")?.as_str() {
        "cancelled" => "Cancel requested.".to_owned(),
        "not-cancelled" => "That task had already finished: nothing to cancel.".to_owned(),
        "retried" => "Enqueued again as a new task (this page).".to_owned(),
        "replayed" => "Dead letter replayed: the task is queued again.".to_owned(),
        "replayed-all" => format!("Replayed {n} dead letters."),
        "discarded" => "Dead letter discarded.".to_owned(),
        "paused" => "Paused.".to_owned(),
        "resumed" => "Resumed.".to_owned(),
        "campaign-cancelled" => format!("Cancelled; {n} recipients will not be sent to."),
        "failed" => "The action failed; the audit log and the board's log say why.".to_owned(),
        _ => return None,
    };
    Some(text)
}

pub(super) type Params = Query<HashMap<String, String>>;

/// `GET /tasks`: search the index.
pub async fn tasks(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Query(params): Params,
) -> Response {
    let get = |name: &str| params.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(id) = get("id") {
        return Redirect::to(&format!("/tasks/{}", encode(&id))).into_response();
    }
    let mut problems = Vec::new();
    let key = get("key").and_then(|k| match k.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Some((name.trim().to_owned(), value.trim().to_owned())),
        _ => {
            problems.push(format!("{k:?} is not name=value (for example chat_id=42 or label.campaign=c1)"));
            None
        }
    });
    let mut time = |name: &str| {
        get(name).and_then(|v| match parse_time(&v) {
            Some(ms) => Some(ms),
            None => {
                problems.push(format!("{name} {v:?} is not a time (2026-12-07T09:00, UTC)"));
                None
            }
        })
    };
    let (since, until) = (time("since"), time("until"));
    // The next page starts after the previous one's last row: `after=<ms>:<task id>`.
    let after = get("after").and_then(|a| {
        let (at, id) = a.split_once(':')?;
        Some((at.parse::<i64>().ok()?, id.to_owned()))
    });
    // Unfinished tasks are not indexed: their Redis records are walked.
    let unfinished_status = get("status").filter(|s| super::unfinished::STATUSES.contains(&s.as_str()));
    let mut label = None;
    if unfinished_status.is_some()
        && let Some((name, value)) = &key
    {
        match name.strip_prefix("label.") {
            Some(label_name) => label = Some((label_name.to_owned(), value.clone())),
            None => problems.push(format!(
                "{name}: unfinished tasks are found by task and label only (their Redis record holds no \
                 arguments; the index writes them when the task finishes)"
            )),
        }
    }
    let mut found = None;
    let mut found_unfinished = None;
    if let Some(status) = unfinished_status.filter(|_| problems.is_empty()) {
        let filter = super::unfinished::Filter { status, task_name: get("name"), label, since, until };
        found_unfinished = Some(within(super::unfinished::search(&board.producer, &filter, 100)).await);
    } else if problems.is_empty() {
        let query = index::Query {
            task_id: None,
            task_name: get("name"),
            status: get("status"),
            key,
            since,
            before: until,
            after,
            limit: 100,
        };
        found = Some(within(index::search(&board.pool, &query)).await);
    }
    let mut names = board.registry.names();
    names.sort_unstable();
    let field = |name: &str| get(name).unwrap_or_default();
    let body = html! {
        form #search method="get" action="/tasks" {
            label { "Task id " input name="id" placeholder="exact id"; }
            label { "Task " select name="name" {
                option value="" { "any" }
                @for n in &names { option value=(n) selected[field("name") == *n] { (n) } }
            } }
            label { "Status " select name="status" {
                @for s in ["", "success", "failed", "cancelled"] {
                    option value=(s) selected[field("status") == s] { (if s.is_empty() { "any finished" } else { s }) }
                }
                optgroup label="unfinished (Redis records, by task and label)" {
                    @for s in super::unfinished::STATUSES {
                        option value=(s) selected[field("status") == s] { (s) }
                    }
                }
            } }
            label { "Argument or label " input #key name="key" value=(field("key")) placeholder="chat_id=42"; }
            label { "From " input name="since" value=(field("since")) placeholder="2026-12-07T09:00"; }
            label { "To " input name="until" value=(field("until")) placeholder="UTC"; }
            button type="submit" #search-button { "Search" }
        }
        @for problem in &problems { p.error { (problem) } }
        @match &found_unfinished {
            None => {},
            Some(Err(err)) => (unavailable("Redis (the records of unfinished tasks)", err)),
            Some(Ok(unfinished)) => {
                p #scan-note.muted {
                    @if unfinished.complete {
                        "Read all " (unfinished.scanned) " task records in Redis."
                    } @else {
                        "Read " (unfinished.scanned) " task records in Redis and stopped (at most "
                        (super::unfinished::MAX_SCANNED) " records, " (super::unfinished::MAX_CALLS) " pages, "
                        (super::unfinished::BUDGET.as_secs()) " s, or 100 matches): more may match; narrow by task or label."
                    }
                }
                @if unfinished.rows.is_empty() {
                    p #no-results { "No unfinished task matches." }
                } @else {
                    table #results {
                        tr { th { "Record written" } th { "Task" } th { "Status" } th { "Attempt" } th { "Arguments" } th { "Id" } }
                        @for (id, record) in &unfinished.rows {
                            tr {
                                td { (time_s(record.updated_at)) }
                                td { (record.task_name) }
                                td class=(record.status.name()) { (record.status.name()) }
                                td { (record.attempt) }
                                td.args.muted { "known when it finishes" }
                                td { a.task-link href=(format!("/tasks/{}", encode(id))) { (id) } }
                            }
                        }
                    }
                }
            }
        }
        @match &found {
            None => {},
            Some(Err(err)) => (unavailable("the task index", err)),
            Some(Ok(rows)) if rows.is_empty() => p #no-results { "No finished task matches (the index keeps finished tasks for "
                (humantime::format_duration(board.settings.index.retention)) ")." },
            Some(Ok(rows)) => {
                table #results {
                    tr { th { "Finished" } th { "Task" } th { "Status" } th { "Attempt" } th { "Arguments" } th { "Id" } }
                    @for row in rows {
                        tr {
                            td { (time_ms(row.finished_at)) }
                            td { (row.task_name) }
                            td class=(row.status) { (row.status) }
                            td { (row.attempt) }
                            td.args { code { (short(&row.arguments, 120)) } }
                            td { a.task-link href=(format!("/tasks/{}", encode(&row.task_id))) { (row.task_id) } }
                        }
                    }
                }
                @if let Some(last) = rows.last().filter(|_| rows.len() == 100) {
                    p { a #older href=(older_link(&params, last.finished_at, &last.task_id)) { "Older" } }
                }
            }
        }
    };
    page("Tasks", &session, "/tasks", note(&params).as_deref(), body).into_response()
}

/// How often an unfinished task's live part is fetched again (ms).
const TASK_REFRESH_MS: u32 = 2_000;

/// `GET /tasks/{id}`: the live record (Redis) and the indexed history;
/// while the task is unfinished its part refreshes in place (status,
/// attempt, progress, timeline).
pub async fn task(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let (body, final_) = match task_body(&board, &session, &id).await {
        Ok(done) => done,
        Err(response) => return response,
    };
    let live = html! {
        @if final_ {
            div #live { (body) }
        } @else {
            div #live data-refresh=(format!("/fragment/tasks/{}", encode(&id))) data-every=(TASK_REFRESH_MS) { (body) }
        }
    };
    page("Task", &session, "/tasks", note(&params).as_deref(), live).into_response()
}

/// `GET /fragment/tasks/{id}`: a task page's live part alone; once the task
/// has finished it carries `data-final`, and the page stops asking.
pub async fn task_fragment(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match task_body(&board, &session, &id).await {
        Ok((body, final_)) => html! { @if final_ { span data-final hidden {} } (body) }.into_response(),
        Err(response) => response,
    }
}

/// A task's page body and whether the task has finished; an answer of its
/// own when there is no such task or its sources failed.
async fn task_body(board: &Board, session: &Session, id: &str) -> Result<(Markup, bool), Response> {
    let id = id.to_owned();
    let (record, progress, indexed) = tokio::join!(
        within(board.producer.result(&id)),
        within(board.producer.progress(&id)),
        within(index::get(&board.pool, &id)),
    );
    let failures: Vec<String> = [
        record.as_ref().err().map(|e| format!("Redis: {e}")),
        indexed.as_ref().err().map(|e| format!("the task index: {e}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let record = record.ok().flatten();
    let indexed = indexed.ok().flatten();
    if record.is_none() && indexed.is_none() {
        if !failures.is_empty() {
            let body = html! { @for failure in &failures { (unavailable("The task", failure)) } };
            let page = page("Task", session, "/tasks", None, body);
            return Err((axum::http::StatusCode::SERVICE_UNAVAILABLE, page).into_response());
        }
        return Err(view::not_found(&format!(
            "No task {id:?}: no live record (they last redis.result_ttl) and not in the task index."
        )));
    }
    let progress = progress.ok().flatten();
    let status =
        record.as_ref().map(|r| r.status.name().to_owned()).or_else(|| indexed.as_ref().map(|i| i.status.clone()));
    let final_ = record.as_ref().is_none_or(|r| r.status.is_final());
    let name = record.as_ref().map(|r| r.task_name.clone()).or_else(|| indexed.as_ref().map(|i| i.task_name.clone()));
    let secret =
        name.as_deref().and_then(|n| board.registry.get(n)).is_some_and(|d| !d.options.secret_fields.is_empty());
    let path = format!("/tasks/{}", encode(&id));
    let body = html! {
        @for failure in &failures { (unavailable("Part of this task's page", failure)) }
        dl #task {
            dt { "Id" } dd #task-id { (id) }
            dt { "Task" } dd { (name.clone().unwrap_or_default()) }
            dt { "Status" } dd #task-status class=[status.as_deref()] { (status.clone().unwrap_or_default()) }
            @if let Some(r) = &record {
                dt { "Attempt" } dd { (r.attempt) }
                @if !r.labels.is_empty() {
                    dt { "Labels" } dd { code { (serde_json::to_string(&r.labels).unwrap_or_default()) } }
                }
            }
            @if let Some(i) = &indexed {
                dt { "Arguments" } dd { code #task-args { (i.arguments) } }
                @if let Some(result) = &i.result { dt { "Result" } dd { code { (result) } } }
                @if let Some(error) = &i.error { dt { "Error" } dd.error { (error) } }
            } @else if let Some(r) = &record {
                @if !r.status.is_final() {
                    dt { "Arguments" }
                    dd #task-args.muted { "Not known until it finishes: its live record holds its status, attempt and labels; \
                        the task index writes its arguments when it finishes." }
                }
                @if !r.return_value.is_nil() { dt { "Result" } dd { code { (r.return_value.to_string()) } } }
                @if let Some(e) = &r.error { dt { "Error" } dd.error { (e.exc_type) ": " (e.exc_message.join("; ")) } }
            }
            @if let Some(p) = &progress {
                dt { "Progress" } dd { (bar(p.fraction, &format!("{:.0}% {}", p.fraction * 100.0, p.message))) }
            }
        }
        h2 { "Timeline" }
        ul.timeline {
            @if let Some(r) = &record {
                @if let Some(due) = r.due_at { li { "due " (time_s(due)) } }
                @if let Some(started) = r.started_at { li { "attempt " (r.attempt) " started " (time_s(started)) } }
                @if let Some(finished) = r.finished_at { li { (r.status.name()) " " (time_s(finished)) " (ran " (format!("{:.3}", r.execution_time)) " s)" } }
                li { "record written " (time_s(r.updated_at)) " (it lives redis.result_ttl)" }
            }
            @if let Some(i) = &indexed {
                @if let Some(started) = i.started_at { li { "last attempt started " (time_ms(started)) } }
                li { "indexed as " (i.status) " at " (time_ms(i.finished_at)) " by " (i.worker) " (" (i.elapsed_ms) " ms)" }
            }
        }
        div.actions {
            @if !final_ {
                (post_button(session, &format!("{path}/cancel"), "Cancel", "danger"))
            }
            @if final_ && indexed.is_some() {
                @if secret {
                    p.muted { "Retry is off: this task has secret arguments, which the index does not keep." }
                } @else {
                    (post_button(session, &format!("{path}/retry"), "Retry", "primary"))
                }
            }
        }
    };
    Ok((body, final_))
}

/// `GET /dead-letters`.
pub async fn dead_letters(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Query(params): Params,
) -> Markup {
    let get = |name: &str| params.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = crate::broker::dead_letters::Filter {
        task_name: get("name"),
        reason_contains: get("reason"),
        task_id: get("id"),
        ..Default::default()
    };
    let js = board.producer.publisher().jetstream().clone();
    let listed = within(crate::broker::dead_letters::list(&js, &board.settings.nats, &filter, 200)).await;
    let field = |name: &str| get(name).unwrap_or_default();
    let body = html! {
        form #dl-filter method="get" action="/dead-letters" {
            label { "Task " input name="name" value=(field("name")); }
            label { "Task id " input name="id" value=(field("id")); }
            label { "Reason contains " input name="reason" value=(field("reason")); }
            button type="submit" { "Filter" }
        }
        form.inline method="post" action="/dead-letters/replay" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="name" value=(field("name"));
            input type="hidden" name="id" value=(field("id"));
            input type="hidden" name="reason" value=(field("reason"));
            button.danger type="submit" #replay-all { "Replay all that match" }
        }
        @match &listed {
            Err(err) => (unavailable("the dead-letter stream", err)),
            Ok(letters) if letters.is_empty() => p #no-dead-letters { "No dead letters match." },
            Ok(letters) => table #dead-letters {
                tr { th { "#" } th { "When" } th { "Task" } th { "Id" } th { "Reason" } th { "Attempt" } th { "" } }
                @for l in letters.iter().rev() {
                    tr data-task-id=[l.task_id.as_deref()] {
                        td { (l.sequence) }
                        td { (time_ms(l.time.saturating_mul(1000))) }
                        td { (l.task_name.clone().unwrap_or_default()) }
                        td { @if let Some(id) = &l.task_id { a href=(format!("/tasks/{}", encode(id))) { (id) } } }
                        td { (short(&l.reason, 200)) }
                        td { (l.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                        td {
                            (post_button(&session, &format!("/dead-letters/{}/replay", l.sequence), "Replay", "primary replay"))
                            (post_button(&session, &format!("/dead-letters/{}/discard", l.sequence), "Discard", "danger"))
                        }
                    }
                }
            },
        }
    };
    page("Dead letters", &session, "/dead-letters", note(&params).as_deref(), body)
}

/// `GET /campaigns`: the list, its progress bars refreshed in place.
pub async fn campaigns(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Query(params): Params,
) -> Markup {
    let body = campaigns_body(&board, &session).await;
    let live = html! { div #live data-refresh="/fragment/campaigns" data-every="3000" { (body) } };
    page("Campaigns", &session, "/campaigns", note(&params).as_deref(), live)
}

/// `GET /fragment/campaigns`: the campaigns page's live part alone.
pub async fn campaigns_fragment(State(board): State<Arc<Board>>, Extension(session): Extension<Session>) -> Markup {
    campaigns_body(&board, &session).await
}

async fn campaigns_body(board: &Board, session: &Session) -> Markup {
    let listed = within(async {
        let mut all = Vec::new();
        for id in board.campaigns.recent(50).await? {
            all.push(board.campaigns.status(&id).await?);
        }
        Ok::<_, crate::campaign::CampaignError>(all)
    })
    .await;
    html! {
        @match &listed {
            Err(err) => (unavailable("campaigns", err)),
            Ok(all) if all.is_empty() => p { "No campaigns yet (producer broadcast start)." },
            Ok(all) => table #campaigns {
                tr { th { "Campaign" } th { "Task" } th { "Status" } th { "Progress" } th { "" } }
                @for (campaign, counters) in all {
                    @let finished = counters.total - counters.outstanding();
                    @let share = if counters.total == 0 { 1.0 } else { finished as f64 / counters.total as f64 };
                    @let eta = crate::campaign::cli::eta_seconds(&board.settings, counters, campaign.lane)
                        .filter(|e| *e > 0.0 && campaign.status == crate::campaign::CampaignStatus::Running);
                    @let status = campaign.status.name();
                    @let base = format!("/campaigns/{}", encode(&campaign.id));
                    tr id=(format!("campaign-{}", campaign.id)) {
                        td { (campaign.id) }
                        td { (campaign.task_name) }
                        // One class attribute (maud does not merge `.status` with `class=`).
                        td class=(format!("status {status}")) { (status) }
                        td {
                            (bar(share, &format!(
                                "{finished}/{} done: sent {}, dead {}, failed {}, cancelled {}{}",
                                counters.total, counters.get("sent"), counters.dead(), counters.get("failed"), counters.get("cancelled"),
                                eta.map(|e| format!(" · eta {}", humantime::format_duration(Duration::from_secs(e as u64)))).unwrap_or_default()
                            )))
                        }
                        td {
                            @if status == "running" { (post_button(session, &format!("{base}/pause"), "Pause", "pause")) }
                            @if status == "paused" { (post_button(session, &format!("{base}/resume"), "Resume", "primary resume")) }
                            @if status == "running" || status == "paused" || status == "draft" {
                                (post_button(session, &format!("{base}/cancel"), "Cancel", "danger"))
                            }
                            a href=(format!("{base}/report.csv")) { "Report (CSV)" }
                        }
                    }
                }
            },
        }
    }
}

/// `GET /schedules`.
pub async fn schedules(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Query(params): Params,
) -> Markup {
    let schedules = crate::schedule::cron::load(&board.registry, &board.settings);
    let states = within(crate::schedule::state::all(&board.pool)).await;
    let body = html! {
        @match (&schedules, &states) {
            (Err(err), _) => p.error { (err.to_string()) },
            (_, Err(err)) => (unavailable("the database", err)),
            (Ok(list), _) if list.is_empty() => p { "No cron schedules (TaskOptions::cron or [<profile>.schedules.<name>])." },
            (Ok(list), Ok(states)) => table #schedules {
                tr { th { "Schedule" } th { "Task" } th { "Cron" } th { "Next" } th { "Last" } th { "" } }
                @for s in list {
                    @let listed = crate::schedule::cli::describe(s, states.get(&s.name).copied().unwrap_or_default());
                    @let base = format!("/schedules/{}", encode(&listed.name));
                    tr {
                        td { (listed.name) }
                        td { (listed.task) }
                        td { code { (listed.cron) } " " (listed.tz) }
                        td { @if listed.paused { em { "paused" } } @else { (listed.next.clone().unwrap_or_default()) } }
                        td { (listed.last.clone().unwrap_or_default()) }
                        td {
                            @if listed.paused { (post_button(&session, &format!("{base}/resume"), "Resume", "primary")) }
                            @else { (post_button(&session, &format!("{base}/pause"), "Pause", "")) }
                        }
                    }
                }
            },
        }
    };
    page("Schedules", &session, "/schedules", note(&params).as_deref(), body)
}

/// `GET /flood`: the shared flood-control state.
pub async fn flood(State(board): State<Arc<Board>>, Extension(session): Extension<Session>) -> Markup {
    let (state, workers) = tokio::join!(
        within(crate::producer::flood_status::read(&board.settings)),
        within(super::overview::workers_alive(&board)),
    );
    let body = html! {
        @match &state {
            Ok((bot, status)) => pre #flood { (crate::producer::flood_status::render(*bot, &board.settings.telegram.limits, status)) },
            Err(err) => p #flood { "No flood-control state: " (err) },
        }
        h2 { "429s by lane" }
        @match &workers {
            Ok(workers) => {
                @let by_lane = super::overview::rate_limited_by_lane(workers);
                table #rate-limited-by-lane {
                    tr { th { "Lane" } th { "429s" } }
                    @for lane in di::Lane::ALL {
                        tr data-lane=(lane.name()) {
                            td { (lane.name()) }
                            td.n { (by_lane.get(lane.name()).copied().unwrap_or(0)) }
                        }
                    }
                }
                p.muted { "Telegram's 429 answers to the workers alive (" (workers.len()) "), each since it started \
                    (a restarted worker starts again at 0; the worker's /metrics has courier_telegram_rate_limited_total)." }
            }
            Err(err) => (unavailable("Redis (the workers' presence)", err)),
        }
    };
    page("Flood control", &session, "/flood", None, body)
}

/// `2026-12-07T09:00[:SS]` (UTC) or Unix seconds, as Unix ms.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(1000);
    }
    let text = text.trim_end_matches('Z');
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
        .map(|t| t.and_utc().timestamp_millis())
}

fn older_link(params: &HashMap<String, String>, at: i64, task_id: &str) -> String {
    let mut kept: BTreeMap<&str, &str> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "after" | "note" | "n"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let after = format!("{at}:{task_id}");
    kept.insert("after", &after);
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish();
    format!("/tasks?{query}")
}

/// A path segment, percent-encoded.
pub(crate) fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_utc() {
        assert_eq!(parse_time("1970-01-01T00:01"), Some(60_000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("60"), Some(60_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("9223372036854776"), None, "no overflow");
    }

    #[test]
    fn notes_are_fixed_texts() {
        let params = HashMap::from([("note".to_owned(), "<script>".to_owned())]);
        assert_eq!(note(&params), None);
    }
}
