//! The worker loop (ARCHITECTURE.md, "Delivery invariants"): pull each
//! lane's consumer only as many messages as there are free execution slots,
//! save each result before acknowledging, repair a consumer that went away,
//! and stop gracefully.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use di::{Delivery, Disposition, Execution, Lane, Outcome, ProcessError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::campaign::worker::CampaignGate;
use crate::worker::pull::{Pulled, Puller};
pub use crate::worker::runtime::Runtime;
use crate::worker::runtime::STORE_RETRY;

/// How long one pull request waits for messages before it is renewed.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long a pull waits when it holds the last free slot: other lanes
/// wait for that slot meanwhile. With fewer slots than lanes
/// (`worker.concurrency = 1`), 2 s pulls of idle lanes took turns with the
/// only slot, and a task waited up to 6 s for its lane's turn. Now it
/// waits at most a tenth of a second per other lane; an idle worker with
/// one slot sends about ten pulls a second.
const SCARCE_PULL_EXPIRES: Duration = Duration::from_millis(100);
/// The most messages one pull asks for (also bounded by the free slots).
const MAX_BATCH: usize = 256;
/// How long the server has to confirm an ack (async-nats' JetStream default).
const DOUBLE_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// After the shutdown timeout: how long interrupted tasks get to hand their
/// messages back before they are aborted.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);

/// Execution slots shared by the lanes' pull loops: every task takes one
/// from `all`; tasks of lanes other than interactive also take one from
/// `others`, so a few slots always stay free for replies.
#[derive(Debug, Clone)]
struct Slots {
    all: Arc<Semaphore>,
    others: Arc<Semaphore>,
}

/// One task's slot(s), released when its handler ends.
#[derive(Debug)]
struct Slot {
    _all: OwnedSemaphorePermit,
    _other: Option<OwnedSemaphorePermit>,
}

impl Slots {
    /// `concurrency` slots, of which a quarter (at least one, when there
    /// are two or more) only interactive tasks may use.
    fn new(concurrency: usize) -> Self {
        let reserved = if concurrency > 1 { (concurrency / 4).max(1) } else { 0 };
        Self { all: Arc::new(Semaphore::new(concurrency)), others: Arc::new(Semaphore::new(concurrency - reserved)) }
    }

    async fn acquire(&self, lane: Lane) -> Slot {
        let other = match lane {
            Lane::Interactive => None,
            _ => Some(self.others.clone().acquire_owned().await.expect("the semaphore is never closed")),
        };
        let all = self.all.clone().acquire_owned().await.expect("the semaphore is never closed");
        Slot { _all: all, _other: other }
    }

    /// Whether `lane` just took the last slot it may use: other lanes then
    /// wait for this lane's pull to end.
    fn scarce(&self, lane: Lane) -> bool {
        self.all.available_permits() == 0 || (lane != Lane::Interactive && self.others.available_permits() == 0)
    }

    /// Up to `most` more slots that are free right now (never waits).
    fn take_free(&self, lane: Lane, most: usize) -> Vec<Slot> {
        let mut taken = Vec::new();
        while taken.len() < most {
            let other = match lane {
                Lane::Interactive => None,
                _ => match self.others.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
            };
            match self.all.clone().try_acquire_owned() {
                Ok(all) => taken.push(Slot { _all: all, _other: other }),
                Err(_) => break,
            }
        }
        taken
    }
}

/// Serves every lane's consumer until `shutdown` is cancelled, then lets
/// running tasks finish within `grace`, interrupts what is left (their
/// messages go back), and returns.
///
/// Each lane has its own pull loop. A pull asks for exactly as many
/// messages as there are free execution slots, so no message waits in this
/// worker behind a long task while another worker is idle; the bulk lane
/// also asks no faster than the flood-control budget allows.
pub async fn serve(
    pullers: Vec<Puller>,
    runtime: Arc<Runtime>,
    concurrency: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Slots::new(concurrency);
    let hard_stop = CancellationToken::new();
    // Cancelled just before the handlers are aborted: a body that returned
    // keeps trying to save its record until then.
    let abandon = CancellationToken::new();
    let loops = pullers.into_iter().map(|puller| {
        pull_loop(puller, runtime.clone(), slots.clone(), shutdown.clone(), hard_stop.clone(), abandon.clone())
    });
    let mut running = JoinSet::new();
    for mut set in futures_util::future::join_all(loops).await {
        while let Some(done) = set.try_join_next() {
            let _ = done;
        }
        // One set to drain: move the rest under a single waiter per lane.
        running.spawn(async move { while set.join_next().await.is_some() {} });
    }
    let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("shutdown timeout: interrupting the tasks still running");
        hard_stop.cancel();
        let rest = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(HARD_STOP_GRACE, rest).await.is_err() {
            abandon.cancel();
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while running.join_next().await.is_some() {}
            })
            .await;
            running.abort_all();
        }
    }
}

/// One lane's loop: pulls for free slots and spawns a handler per message;
/// returns the handlers still running when `shutdown` came.
async fn pull_loop(
    mut puller: Puller,
    runtime: Arc<Runtime>,
    slots: Slots,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    abandon: CancellationToken,
) -> JoinSet<()> {
    let lane = puller.lane();
    let mut running = JoinSet::new();
    // The slots of the messages the request in flight may still bring.
    let mut reserved: Vec<Slot> = Vec::new();
    // After a pull that found nothing the lane is idle: its next pull waits
    // with one slot only, not with every free one (an idle lane's long poll
    // would keep the slots from the busy lanes for its whole wait).
    let mut idle = false;
    'pull: loop {
        if reserved.is_empty() {
            match request(&mut puller, &runtime, &slots, idle, &shutdown).await {
                Requested::Slots(taken) => reserved = taken,
                Requested::Again => continue,
                Requested::Shutdown => break 'pull,
            }
        }
        let pulled = tokio::select! {
            biased;
            pulled = puller.next() => pulled,
            () = shutdown.cancelled() => {
                puller.give_back().await;
                break 'pull;
            }
        };
        let healthy = match pulled {
            Pulled::Message(message) => {
                // The server sends at most what was asked for; a slot is there for each.
                let Some(slot) = reserved.pop() else {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    continue;
                };
                running.spawn(handle(runtime.clone(), message, lane, slot, hard_stop.clone(), abandon.clone()));
                while let Some(done) = running.try_join_next() {
                    if let Err(err) = done {
                        tracing::error!(%err, "a message handler died");
                    }
                }
                idle = false;
                if reserved.is_empty() {
                    puller.succeeded();
                }
                true
            }
            // A pull on a deleted consumer is never answered: it ends like
            // an idle one. So an empty pull checks the consumer (one API
            // call per `PULL_EXPIRES` while idle).
            Pulled::Ended { delivered, answered } => {
                reserved.clear();
                idle = delivered == 0;
                if idle {
                    let healthy = puller.verify(&shutdown).await;
                    if healthy && !answered {
                        puller.unanswered();
                    }
                    healthy
                } else if !answered {
                    puller.unanswered();
                    true
                } else {
                    puller.succeeded();
                    true
                }
            }
            Pulled::Failed(why) => {
                reserved.clear();
                puller.failed(why, &shutdown).await
            }
        };
        if !healthy {
            break 'pull;
        }
    }
    while running.try_join_next().is_some() {}
    let in_flight = running.len();
    if in_flight > 0 {
        tracing::info!(lane = lane.name(), in_flight, "waiting for running tasks");
    }
    running
}

/// What asking for messages came to.
enum Requested {
    /// A request is in flight, with a slot for each message it asked for.
    Slots(Vec<Slot>),
    /// Nothing asked (no budget, or the request failed): try again.
    Again,
    /// Shutdown came.
    Shutdown,
}

/// Takes free slots (one when the lane is idle, at least one in any case,
/// waiting for it) and asks the lane's consumer for as many messages. The
/// slots are taken before asking: several lanes share them, and a message
/// must never wait for one (it would wait without progress acks while its
/// ack_wait runs out). Bulk and paid ask for no more than flood control's
/// budget.
async fn request(
    puller: &mut Puller,
    runtime: &Runtime,
    slots: &Slots,
    idle: bool,
    shutdown: &CancellationToken,
) -> Requested {
    let lane = puller.lane();
    let first = tokio::select! {
        slot = slots.acquire(lane) => slot,
        () = shutdown.cancelled() => return Requested::Shutdown,
    };
    if !runtime.store_ok.load(Ordering::Acquire) && !wait_for_store(runtime, shutdown).await {
        return Requested::Shutdown;
    }
    puller.recheck_after_reconnect().await;
    let mut taken = vec![first];
    if !idle {
        taken.extend(slots.take_free(lane, MAX_BATCH - 1));
    }
    if matches!(lane, Lane::Bulk | Lane::Paid)
        && let Some(governor) = &runtime.governor
    {
        let (budget, wait) = governor.budget(lane, taken.len()).await;
        if budget == 0 {
            drop(taken);
            if sleep_or_shutdown(wait.max(Duration::from_millis(5)), shutdown).await {
                return Requested::Shutdown;
            }
            return Requested::Again;
        }
        taken.truncate(budget);
    }
    let expires = if slots.scarce(lane) { SCARCE_PULL_EXPIRES } else { PULL_EXPIRES };
    match puller.request(taken.len(), expires).await {
        Ok(()) => Requested::Slots(taken),
        Err(why) => {
            drop(taken);
            match puller.failed(why, shutdown).await {
                true => Requested::Again,
                false => Requested::Shutdown,
            }
        }
    }
}

/// Probes the store until it answers (true) or shutdown comes (false).
async fn wait_for_store(runtime: &Runtime, shutdown: &CancellationToken) -> bool {
    tracing::warn!("result store unreachable: pulling is paused until it answers");
    loop {
        if runtime.store.ping().await.is_ok() {
            runtime.store_ok.store(true, Ordering::Release);
            tracing::info!("result store reachable again: pulling resumes");
            return true;
        }
        if sleep_or_shutdown(STORE_RETRY, shutdown).await {
            return false;
        }
    }
}

/// Sleeps; true if shutdown came first.
pub(crate) async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Runs one message and settles it with the server, sending progress acks
/// the whole time (execution, saving, dead-lettering). `slot` is the
/// message's execution slot, given back once the record is saved and only
/// an ack or a nak is left (a dead letter keeps it while its copy is made);
/// `hard_stop` interrupts a running body, `abandon` (later) ends the
/// retries of a finished body's save.
async fn handle(
    runtime: Arc<Runtime>,
    message: Message,
    lane: Lane,
    slot: Slot,
    hard_stop: CancellationToken,
    abandon: CancellationToken,
) {
    let (count, sequence) = match message.info() {
        Ok(info) => (u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1), info.stream_sequence),
        Err(_) => (1, 0),
    };
    let span = tracing::info_span!(
        "task",
        task.id = tracing::field::Empty,
        task.name = tracing::field::Empty,
        task.attempt = tracing::field::Empty,
        task.delivery = count,
        task.outcome = tracing::field::Empty
    );
    // Boxed: the executor's state machine is large, and this runs per message.
    let work = Box::pin(async {
        if rerouted(&runtime, &message, lane, sequence).await || !campaign_admits(&runtime, &message).await {
            return;
        }
        let delivery = Delivery { count, interrupt: hard_stop.clone() };
        let execution = match runtime.execute(&message.payload, &delivery).await {
            Ok(execution) => execution,
            Err(ProcessError::NotStarted(err)) => {
                runtime.store_failed();
                tracing::warn!(%err, "task not started: the result store is unreachable; the message comes back");
                let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
                return;
            }
            Err(ProcessError::NotSaved { execution, error }) => {
                runtime.store_failed();
                tracing::warn!(%error, "the task ran but its record was not saved; retrying the save only");
                if !Box::pin(runtime.save_until_saved(&execution, &abandon)).await {
                    tracing::warn!("record still not saved at the shutdown timeout; the task may run again");
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                *execution
            }
        };
        tracing::Span::current().record("task.attempt", execution.attempt);
        let Some(execution) = campaign_recorded(&runtime, &message, execution).await else { return };
        // The task is over and its record saved: the next message may run
        // while the server confirms this one's ack.
        if !matches!(execution.disposition, Disposition::DeadLetter { .. }) {
            drop(slot);
        }
        settle(&runtime, &message, &execution, sequence).await;
        runtime.finished(&message.payload, execution).await;
    });
    // A sleep per period, not an `Interval`: most tasks end before the
    // first, and an interval's immediate first tick re-registers its timer.
    let heartbeat = async {
        loop {
            tokio::time::sleep(runtime.progress_every).await;
            if let Err(err) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(%err, "progress ack failed");
            }
        }
    };
    async {
        tokio::select! {
            biased;
            () = work => {}
            () = heartbeat => unreachable!("the heartbeat never ends"),
        }
    }
    .instrument(span)
    .await;
}

/// A message on the transactional subject whose `lane` header names
/// another lane (a producer that publishes every lane to `nats.subject`, as
/// taskiq does) is republished to its lane's subject and acknowledged, so it
/// waits in its lane (a bulk backlog never in front of the transactional
/// one). True if it was; if the republish fails it runs where it is.
async fn rerouted(runtime: &Runtime, message: &Message, lane: Lane, sequence: u64) -> bool {
    if lane != Lane::Transactional {
        return false;
    }
    let wanted = message.headers.as_ref().and_then(|h| h.get("lane")).and_then(|v| Lane::parse(v.as_str()));
    let Some(wanted) = wanted.filter(|l| *l != Lane::Transactional) else { return false };
    // Boxed, as every rare path here: the state of a publish would make every
    // message's future larger, and that future is moved into place per message.
    Box::pin(reroute(runtime, message, wanted, sequence)).await
}

/// Republishes `message` to `wanted`'s subject and acknowledges it; false
/// if the republish failed.
async fn reroute(runtime: &Runtime, message: &Message, wanted: Lane, sequence: u64) -> bool {
    let subject = crate::broker::lane_subject(runtime.publisher.settings(), wanted);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("lane", wanted.name());
    let id = format!("lane:{sequence}:{:016x}", di::envelope::fnv1a64(&message.payload));
    match runtime.publisher.send(subject, &id, headers, message.payload.clone()).await {
        Ok(_) => {
            let _ = double_ack(message).await;
            tracing::debug!(lane = wanted.name(), "moved to its lane's subject");
            true
        }
        Err(err) => {
            tracing::warn!(%err, lane = wanted.name(), "not moved to its lane; it runs here");
            false
        }
    }
}

/// Whether a message may run: a paused campaign's is parked and a
/// cancelled one's dropped (both acknowledged here). A database error lets
/// it run: a pause is not worth stopping every broadcast for.
async fn campaign_admits(runtime: &Runtime, message: &Message) -> bool {
    use crate::campaign::worker::Verdict;
    let Some(gate) = &runtime.campaigns else { return true };
    let Some((campaign, seq, id)) = CampaignGate::recipient_of(message.headers.as_ref()) else { return true };
    match Box::pin(gate.check(&campaign, seq, &id)).await {
        Ok(Verdict::Run) => true,
        Ok(Verdict::Cancelled { task_id, task_name }) => {
            // Its record says so, as a cancel by id would (a record already
            // final stays); if Redis is down the message comes back for it.
            match cancel_record(runtime, &task_id, task_name).await {
                Ok(()) => {
                    let _ = double_ack(message).await;
                    tracing::info!(campaign, seq, task.id = task_id, "campaign cancelled: its task not run");
                }
                Err(err) => {
                    runtime.store_failed();
                    tracing::warn!(%err, campaign, "cancelled campaign task: record not written; the message comes back");
                    let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
                }
            }
            false
        }
        Ok(verdict) => {
            let _ = double_ack(message).await;
            tracing::info!(campaign, seq, ?verdict, "campaign message not run");
            false
        }
        Err(err) => {
            tracing::warn!(%err, campaign, "campaign state unreadable; the message runs");
            true
        }
    }
}

/// Gives a task of a cancelled campaign a final `cancelled` record, unless
/// it has a final one (a `queued` record in its place is replaced).
async fn cancel_record(runtime: &Runtime, task_id: &str, task_name: String) -> Result<(), di::StoreError> {
    let record = di::ResultRecord::cancelled(task_name, 0);
    if runtime.store.put_if_absent(task_id, &record).await? {
        return Ok(());
    }
    match runtime.store.get(task_id).await? {
        Some(current) if current.status.is_final() => Ok(()),
        _ => runtime.store.put(task_id, &record).await,
    }
}

/// Writes a campaign task's final outcome to its recipient row before the
/// message is settled; a dead chat is the campaign's outcome, not a dead
/// letter. If the row cannot be written the message comes back (its record
/// is final: the redelivery only writes the row).
async fn campaign_recorded(runtime: &Runtime, message: &Message, mut execution: Execution) -> Option<Execution> {
    let Some(gate) = runtime.campaigns.as_ref().filter(|_| CampaignGate::concerns(&execution)) else {
        return Some(execution);
    };
    match Box::pin(gate.record(&execution)).await {
        Ok(true) => {
            if matches!(execution.disposition, Disposition::DeadLetter { .. }) {
                execution.disposition = Disposition::Ack;
            }
            Some(execution)
        }
        Ok(false) => Some(execution),
        Err(err) => {
            tracing::warn!(%err, "campaign outcome not written; the message comes back for it");
            let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
            None
        }
    }
}

/// Acks, naks or terminates according to the execution.
async fn settle(runtime: &Runtime, message: &Message, execution: &Execution, sequence: u64) {
    let elapsed_ms = execution.elapsed.as_secs_f64() * 1000.0;
    let outcome = match &execution.disposition {
        Disposition::Ack => "success",
        Disposition::Retry { .. } => "retry",
        Disposition::DeadLetter { .. } => "failed",
        Disposition::HandBack => "interrupted",
    };
    tracing::Span::current().record("task.outcome", outcome);
    match &execution.disposition {
        Disposition::Ack => {
            for attempt in 1..=3 {
                match double_ack(message).await {
                    Ok(()) => break,
                    Err(err) if attempt == 3 => tracing::warn!(%err, "ack not confirmed; the task may run again"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            if matches!(execution.outcome, Outcome::AlreadyFinished(_)) {
                tracing::info!("redelivery of a task that already succeeded: acked without running it");
            } else {
                tracing::info!(elapsed_ms, "task succeeded");
            }
        }
        Disposition::Retry { delay } => {
            // A message delivered many times (a task that waited out the
            // flood limits again and again) is republished, not nak'd: its
            // copy starts its delivery count afresh, so waiting never
            // reaches the consumer's max_deliver.
            let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
            let worn = delivered >= crate::broker::MAX_DELIVER_HEADROOM / 2;
            if !postponed(runtime, message, execution, *delay, worn).await {
                let _ = message.ack_with(AckKind::Nak(Some(*delay))).await;
            }
            tracing::info!(elapsed_ms, retry_in = %crate::telemetry::human(*delay), error = %describe(&execution.outcome), "task failed; will retry");
        }
        Disposition::HandBack => {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            tracing::warn!("interrupted by the shutdown timeout; handed back to the queue");
        }
        Disposition::DeadLetter { reason } => {
            let dedup = if sequence > 0 { sequence.to_string() } else { di::new_task_id() };
            match Box::pin(runtime.dead_letter(&message.payload, message.subject.as_str(), execution, reason, &dedup))
                .await
            {
                Ok(()) => {
                    let _ = message.ack_with(AckKind::Term).await;
                    tracing::warn!(elapsed_ms, %reason, "task failed for good; dead-lettered");
                }
                Err(err) => {
                    // The failed record is kept: the redelivery only retries the copy.
                    let _ = message.ack_with(AckKind::Nak(Some(STORE_RETRY))).await;
                    tracing::warn!(%err, "dead letter not stored; the message comes back for the copy alone");
                }
            }
        }
    }
}

/// A retry that waits longer than `nats.postpone_after` (or any retry of a
/// `worn` message) goes back through the delayed stream, and the message is
/// acked, so it holds no ack-pending slot while it waits (a group's 429
/// backlog would otherwise stall its lane). True if it was postponed; on
/// any failure the caller naks with the delay as before.
async fn postponed(runtime: &Runtime, message: &Message, execution: &Execution, delay: Duration, worn: bool) -> bool {
    let Some(task_id) = execution.task_id.as_deref() else { return false };
    if (delay <= runtime.publisher.settings().postpone_after && !worn) || runtime.topology.is_none() {
        return false;
    }
    let due_at = std::time::SystemTime::now() + delay;
    let due = crate::schedule::unix_ms(due_at);
    // The `retrying` record must outlive the wait: it carries the attempt
    // count, and a cancel reads its due time to outlive it too.
    if let Some(record) = &execution.record {
        let mut waiting = record.clone();
        waiting.due_at = Some(due as f64 / 1000.0);
        if let Err(err) = runtime.store.put_for(task_id, &waiting, runtime.store.ttl() + delay).await {
            tracing::debug!(%err, "cannot extend the retrying record; nak with delay instead");
            return false;
        }
    }
    let copy = runtime
        .publisher
        .postpone(message.subject.as_str(), task_id, message.headers.as_ref(), message.payload.clone(), due)
        .await;
    match copy {
        Ok(_) => match double_ack(message).await {
            Ok(()) => true,
            // Not acked: the message also comes back after ack_wait; the
            // record's attempt count and the task id keep that honest.
            Err(err) => {
                tracing::warn!(%err, "postponed retry stored, but the ack failed; the message may come back early");
                true
            }
        },
        Err(err) => {
            tracing::debug!(%err, "cannot postpone the retry; nak with delay instead");
            false
        }
    }
}

/// Acknowledges `message` and waits for the server to confirm it (a double
/// ack), as a request on the client's shared reply inbox: async-nats'
/// `Message::double_ack` subscribes and unsubscribes an inbox of its own
/// for every ack.
async fn double_ack(message: &Message) -> Result<(), String> {
    let Some(reply) = message.reply.clone() else {
        return Err("no reply subject: not a JetStream message".to_owned());
    };
    let ack = async_nats::Request::new().payload(bytes::Bytes::from_static(b"+ACK")).timeout(Some(DOUBLE_ACK_TIMEOUT));
    message.context.client().send_request(reply, ack).await.map(drop).map_err(|err| err.to_string())
}

fn describe(outcome: &Outcome) -> String {
    outcome.error().map(|e| format!("{}: {}", e.exc_type, e.message())).unwrap_or_default()
}
