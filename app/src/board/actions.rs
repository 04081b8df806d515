//! The board's actions (POST; the guard checked the session and the CSRF
//! token before any of these runs). Each writes an audit line and sends
//! the browser back to a page with a fixed note.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Board;
use super::auth::{Session, audit, form_field};
use super::pages::encode;
use super::view;

/// The most task ids one audit line of a replay-all names (then a count).
const AUDIT_IDS: usize = 20;

fn back(path: &str, note: &str) -> Response {
    Redirect::to(&format!("{path}?note={note}")).into_response()
}

fn back_n(path: &str, note: &str, n: u64) -> Response {
    Redirect::to(&format!("{path}?note={note}&n={n}")).into_response()
}

/// `POST /tasks/{id}/cancel`.
pub async fn cancel_task(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/tasks/{}", encode(&id));
    match board.producer.cancel(&id).await {
        Ok(Some(status)) if status.is_final() && status != di::TaskStatus::Cancelled => {
            audit(&session.who(), "cancel task", &id, "already finished");
            back(&path, "not-cancelled")
        }
        Ok(_) => {
            audit(&session.who(), "cancel task", &id, "ok");
            back(&path, "cancelled")
        }
        Err(err) => {
            audit(&session.who(), "cancel task", &id, &format!("failed: {err}"));
            back(&path, "failed")
        }
    }
}

/// `POST /tasks/{id}/retry`: enqueues the indexed arguments again as a new
/// task (`<id>.retry.<window>`, the window being Unix seconds / 10: a
/// second retry in the same ten seconds is the same task id, a duplicate),
/// refused for tasks with secret arguments.
pub async fn retry_task(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let who = session.who();
    let Ok(Some(row)) = crate::index::get(&board.pool, &id).await else {
        audit(&who, "retry task", &id, "not in the index");
        return view::not_found("That task is not in the task index: its arguments are unknown.");
    };
    let secret = board.registry.get(&row.task_name).is_some_and(|d| !d.options.secret_fields.is_empty());
    if secret || row.arguments.ends_with('…') || row.arguments == "{}" {
        audit(&who, "retry task", &id, "refused: secret, cut or unreadable arguments");
        return (
            StatusCode::CONFLICT,
            "The index holds this task's arguments masked, cut or not at all: retry it from code.",
        )
            .into_response();
    }
    // The labels it was sent with (its lane, its campaign), not the
    // framework's own (the digest is computed again).
    let labels: Vec<(String, String)> = serde_json::from_str::<BTreeMap<String, String>>(&row.labels)
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| !key.starts_with("courier_"))
        .collect();
    let lane = labels.iter().find(|(key, _)| key == "lane").and_then(|(_, lane)| di::Lane::parse(lane));
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(&row.arguments);
    let envelope = parsed.ok().and_then(|all| {
        let kwargs = all.get("kwargs").cloned().unwrap_or_else(|| serde_json::json!({}));
        // One retry per task and ten seconds: a double click is a duplicate.
        let window = (di::unix_now() / 10.0) as i64;
        let new_id = format!("{}.retry.{window}", id.chars().take(150).collect::<String>());
        let mut envelope = crate::cli::envelope_from_json(new_id, &row.task_name, &kwargs.to_string(), &labels).ok()?;
        if let Some(args) = all.get("args").and_then(|a| a.as_array()) {
            envelope.args = args.iter().filter_map(|a| rmpv::ext::to_value(a).ok()).collect();
        }
        Some(envelope)
    });
    let Some(envelope) = envelope else {
        audit(&who, "retry task", &id, "failed: arguments unreadable");
        return back(&format!("/tasks/{}", encode(&id)), "failed");
    };
    let new_id = envelope.task_id.clone();
    match board.producer.enqueue_envelope(&envelope, lane).await {
        Ok(_) => {
            audit(&who, "retry task", &id, &format!("ok: enqueued as {new_id}"));
            back(&format!("/tasks/{}", encode(&new_id)), "retried")
        }
        Err(err) => {
            audit(&who, "retry task", &id, &format!("failed: {err}"));
            back(&format!("/tasks/{}", encode(&id)), "failed")
        }
    }
}

/// `POST /dead-letters/{sequence}/replay`.
pub async fn replay_one(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(sequence): Path<u64>,
) -> Response {
    let target = format!("dead letter #{sequence}");
    match crate::broker::dead_letters::replay_sequence(&board.producer, &board.settings.nats, sequence).await {
        Ok(letter) => {
            let id = letter.task_id.unwrap_or_default();
            audit(&session.who(), "replay dead letter", &format!("{target} (task {id})"), "ok");
            back("/dead-letters", "replayed")
        }
        Err(err) => {
            audit(&session.who(), "replay dead letter", &target, &format!("failed: {err}"));
            back("/dead-letters", "failed")
        }
    }
}

/// `POST /dead-letters/replay`: every dead letter that matches the form's
/// filter (`name`, `id`, `reason`).
pub async fn replay_matching(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Response {
    let field = |name: &str| form_field(&body, name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = crate::broker::dead_letters::Filter {
        task_name: field("name"),
        task_id: field("id"),
        reason_contains: field("reason"),
        ..Default::default()
    };
    let target = format!("dead letters matching {filter:?}");
    // The audit line names the replayed tasks: the first few, then a count.
    let mut named: Vec<String> = Vec::new();
    let replayed =
        crate::broker::dead_letters::replay_matching_each(&board.producer, &board.settings.nats, &filter, |letter| {
            if named.len() < AUDIT_IDS {
                named.push(letter.task_id.clone().unwrap_or_else(|| format!("#{} (no task id)", letter.sequence)));
            }
        })
        .await;
    match replayed {
        Ok(counts) => {
            let more = counts.replayed.saturating_sub(named.len() as u64);
            let tasks = if more > 0 { format!("{} and {more} more", named.join(", ")) } else { named.join(", ") };
            let outcome = format!(
                "ok: matched {}, replayed {}, failed {}; tasks: {}",
                counts.matched,
                counts.replayed,
                counts.failed,
                if tasks.is_empty() { "none" } else { &tasks }
            );
            audit(&session.who(), "replay dead letters", &target, &outcome);
            back_n("/dead-letters", "replayed-all", counts.replayed)
        }
        Err(err) => {
            audit(&session.who(), "replay dead letters", &target, &format!("failed: {err}"));
            back("/dead-letters", "failed")
        }
    }
}

/// `POST /dead-letters/{sequence}/discard`.
pub async fn discard(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(sequence): Path<u64>,
) -> Response {
    let js = board.producer.publisher().jetstream().clone();
    let target = format!("dead letter #{sequence}");
    match crate::broker::dead_letters::discard(&js, &board.settings.nats, sequence).await {
        Ok(Some(letter)) => {
            let task = match (&letter.task_id, &letter.task_name) {
                (Some(id), Some(name)) => format!("task {id} ({name})"),
                (Some(id), None) => format!("task {id}"),
                (None, _) => "no task id".to_owned(),
            };
            audit(&session.who(), "discard dead letter", &format!("{target} ({task})"), "ok");
            back("/dead-letters", "discarded")
        }
        Ok(None) => {
            audit(&session.who(), "discard dead letter", &target, "not there");
            back("/dead-letters", "discarded")
        }
        Err(err) => {
            audit(&session.who(), "discard dead letter", &target, &format!("failed: {err}"));
            back("/dead-letters", "failed")
        }
    }
}

/// A cancelled campaign's walk of the records while it runs: taken out of
/// [`Board::walking`] when dropped (the walk ended, or panicked).
struct Walking {
    board: Arc<Board>,
    id: String,
}

impl Walking {
    /// `None` when a walk for the same campaign still runs.
    fn start(board: &Arc<Board>, id: &str) -> Option<Self> {
        let fresh = board.walking.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned());
        fresh.then(|| Self { board: board.clone(), id: id.to_owned() })
    }
}

impl Drop for Walking {
    fn drop(&mut self) {
        self.board.walking.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

/// `POST /campaigns/{id}/{pause|resume|cancel}`.
pub async fn campaign_action(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let who = session.who();
    let target = format!("campaign {id}");
    let done = match action.as_str() {
        "pause" => board.campaigns.pause(&id).await.map(|()| ("paused", 0)),
        "cancel" => {
            let cancelled = board.campaigns.cancel(&id).await;
            // Its tasks already running are told to stop, as `producer
            // cancel --campaign` does (a walk of the records: it runs on,
            // one at a time per campaign in this board process; a worker
            // checks the campaign before each of its tasks and runs none
            // once it is cancelled, so a second walk would find little the
            // first does not).
            if cancelled.is_ok()
                && let Some(guard) = Walking::start(&board, &id)
            {
                let board = board.clone();
                let (who, target, id) = (who.clone(), target.clone(), id.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let filter = crate::producer::CancelFilter { campaign: Some(id), ..Default::default() };
                    match board.producer.cancel_matching(&filter).await {
                        Ok(n) => {
                            audit(&who, "cancel campaign: running tasks", &target, &format!("ok: {n} told to stop"))
                        }
                        Err(err) => audit(&who, "cancel campaign: running tasks", &target, &format!("failed: {err}")),
                    }
                });
            } else if cancelled.is_ok() {
                audit(&who, "cancel campaign: running tasks", &target, "skipped: a walk of its records is under way");
            }
            cancelled.map(|n| ("campaign-cancelled", n))
        }
        "resume" => {
            // The republish of what is left may take a while: it runs on,
            // and the page shows its progress. A second resume supersedes
            // the first one's walk (the campaign's generation).
            audit(&who, "resume campaign", &target, "started: republishing what is left");
            let board = board.clone();
            let (id, who, target) = (id.clone(), who.clone(), target.clone());
            tokio::spawn(async move {
                match board.campaigns.resume(&id, |_| {}).await {
                    Ok(fan_out) => audit(&who, "resume campaign: republished", &target, &format!("ok: {fan_out:?}")),
                    Err(err) => audit(&who, "resume campaign: republished", &target, &format!("failed: {err}")),
                }
            });
            Ok(("resumed", 0))
        }
        _ => {
            audit(&who, &format!("{action} campaign"), &target, "refused: unknown action");
            return view::not_found("campaign actions are pause, resume and cancel");
        }
    };
    match done {
        Ok((note, n)) => {
            if action != "resume" {
                audit(&who, &format!("{action} campaign"), &target, "ok");
            }
            back_n("/campaigns", note, n)
        }
        Err(err) => {
            audit(&who, &format!("{action} campaign"), &target, &format!("failed: {err}"));
            back("/campaigns", "failed")
        }
    }
}

/// `GET /campaigns/{id}/report.csv`: one line per recipient.
pub async fn campaign_report(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let mut csv = String::from(crate::campaign::ReportRow::CSV_HEADER);
    csv.push('\n');
    let read = board
        .campaigns
        .report(&id, false, |row| {
            csv.push_str(&row.csv());
            csv.push('\n');
        })
        .await;
    if let Err(err) = read {
        return view::not_found(&format!("campaign {id}: {err}"));
    }
    audit(&session.who(), "download campaign report", &format!("campaign {id}"), "ok");
    let filename = format!("attachment; filename=\"campaign-{}.csv\"", id.replace(['"', '\\'], ""));
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, filename)], csv)
        .into_response()
}

/// `POST /schedules/{name}/{pause|resume}`.
pub async fn schedule_action(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            audit(&session.who(), &format!("{action} schedule"), &name, "refused: unknown action");
            return view::not_found("schedule actions are pause and resume");
        }
    };
    let known = crate::schedule::cron::load(&board.registry, &board.settings)
        .is_ok_and(|all| all.iter().any(|s| s.name == name));
    if !known {
        audit(&session.who(), &format!("{action} schedule"), &name, "refused: no such schedule");
        return view::not_found(&format!("no schedule {name:?}"));
    }
    let target = format!("schedule {name}");
    match crate::schedule::state::set_paused(&board.pool, &name, paused).await {
        Ok(()) => {
            audit(&session.who(), &format!("{action} schedule"), &target, "ok");
            back("/schedules", if paused { "paused" } else { "resumed" })
        }
        Err(err) => {
            audit(&session.who(), &format!("{action} schedule"), &target, &format!("failed: {err}"));
            back("/schedules", "failed")
        }
    }
}
