//! The overview page: the queue per lane, the last hour, the workers alive;
//! its live part is also served alone for the in-place refresh.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use maud::{Markup, html};

use super::Board;
use super::auth::Session;
use super::pages::{Params, note, within};
use super::view::{page, time_ms, unavailable};
use crate::index;

/// `GET /`: the overview, refreshed in place every few seconds.
pub async fn overview(
    State(board): State<Arc<Board>>,
    Extension(session): Extension<Session>,
    Query(params): Params,
) -> Markup {
    let live = Box::pin(overview_body(&board)).await;
    page(
        "Overview",
        &session,
        "/",
        note(&params).as_deref(),
        html! { div #live data-refresh="/fragment/overview" data-every="3000" { (live) } },
    )
}

/// `GET /fragment/overview`: the overview's live part alone.
pub async fn overview_fragment(State(board): State<Arc<Board>>) -> Markup {
    Box::pin(overview_body(&board)).await
}

async fn overview_body(board: &Board) -> Markup {
    let nats = &board.settings.nats;
    let js = board.producer.publisher().jetstream().clone();
    let lanes = async {
        let mut rows = Vec::new();
        let mut stream = js.get_stream(&nats.stream).await.map_err(|e| e.to_string())?;
        let depth = stream.info().await.map_err(|e| e.to_string())?.state.messages;
        for lane in di::Lane::ALL {
            let durable = crate::broker::lane_durable(nats, lane);
            let info = match stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable).await {
                Ok(mut consumer) => consumer.info().await.ok().cloned(),
                Err(_) => None,
            };
            rows.push((lane, info));
        }
        Ok::<_, String>((depth, rows))
    };
    let delayed = async {
        let name = crate::schedule::delayed_stream(nats);
        match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).map_err(|e| e.to_string()),
            Err(_) => Ok(0),
        }
    };
    let hour_ago = (di::unix_now() * 1000.0) as i64 - 3_600_000;
    let (lanes, delayed, dead, counts, workers) = tokio::join!(
        within(lanes),
        within(delayed),
        within(crate::broker::dead_letters::count(&js, nats)),
        within(index::counts_since(&board.pool, hour_ago)),
        within(workers_alive(board)),
    );
    let by_lane = workers.as_ref().map(|w| rate_limited_by_lane(w)).unwrap_or_default();
    html! {
        section {
            h2 { "Queue" }
            @match &lanes {
                Ok((depth, rows)) => {
                    p { "Stream " code { (nats.stream) } ": " strong #stream-depth { (depth) } " messages waiting." }
                    table #lanes {
                        tr { th { "Lane" } th { "Waiting" } th { "Running (ack pending)" } th { "Redelivered" } }
                        @for (lane, info) in rows {
                            tr {
                                td { (lane.name()) }
                                @if let Some(info) = info {
                                    td { (info.num_pending) } td { (info.num_ack_pending) } td { (info.num_redelivered) }
                                } @else {
                                    td colspan="3" { "no consumer yet (no worker has started)" }
                                }
                            }
                        }
                    }
                }
                Err(err) => (unavailable("NATS", err)),
            }
            p {
                "Delayed, waiting for their time: "
                @match &delayed { Ok(n) => strong { (n) }, Err(e) => (unavailable("the delayed stream", e)) }
                ". Dead letters: "
                @match &dead { Ok(n) => a #dead-count href="/dead-letters" { strong { (n) } }, Err(e) => (unavailable("dead letters", e)) }
                "."
            }
        }
        section {
            h2 { "Last hour" }
            @match &counts {
                Ok(counts) => {
                    @let total: i64 = counts.values().sum();
                    @let failed = counts.get("failed").copied().unwrap_or(0);
                    p #last-hour {
                        strong { (total) } " tasks finished (" (format!("{:.1}", total as f64 / 60.0)) " a minute): "
                        @for (status, n) in counts { (status) " " (n) "; " }
                        "failure rate "
                        (if total > 0 { format!("{:.1}%", failed as f64 * 100.0 / total as f64) } else { "-".into() })
                    }
                }
                Err(err) => (unavailable("the task index", err)),
            }
        }
        section {
            h2 { "Workers alive" }
            @match &workers {
                Ok(workers) if workers.is_empty() => p { "None: no worker has announced itself in the last 15 s." },
                Ok(workers) => {
                    table #workers {
                        tr { th { "Worker" } th { "Version" } th { "In flight" } th { "429s since start" } th { "Up since" } }
                        @for w in workers {
                            tr {
                                td { (w.name) } td { (w.version) } td { (w.in_flight) " / " (w.concurrency) }
                                td { (w.rate_limited.values().sum::<u64>()) }
                                td { (time_ms(w.started_at.saturating_mul(1000))) }
                            }
                        }
                    }
                    p #rate-limited {
                        "429s answered to these workers: "
                        @if by_lane.is_empty() { "none" }
                        @for (lane, n) in &by_lane { (lane) " " (n) "; " }
                        " (flood control: " a href="/flood" { "frozen chats and rates" } ")"
                    }
                },
                Err(err) => (unavailable("Redis", err)),
            }
        }
    }
}

/// The workers alive now (their presence records in Redis).
pub(super) async fn workers_alive(board: &Board) -> Result<Vec<crate::worker::presence::WorkerInfo>, String> {
    let mut conn = board.redis_conn().await?;
    crate::worker::presence::alive(&mut conn, &board.settings.redis.key_prefix).await.map_err(|e| {
        board.redis_failed(&e);
        e.to_string()
    })
}

/// 429s the workers alive were answered since they started, summed by lane
/// (lanes with none left out).
pub(super) fn rate_limited_by_lane(workers: &[crate::worker::presence::WorkerInfo]) -> BTreeMap<String, u64> {
    let mut by_lane: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        for (lane, n) in &worker.rate_limited {
            *by_lane.entry(lane.clone()).or_default() += n;
        }
    }
    by_lane
}
