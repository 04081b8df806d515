//! Core NATS mode (`nats.mode = "core"`): a queue group, at-most-once.
//! Nothing is acknowledged; a task in flight when a worker dies, or
//! published while no worker listens, is lost. Retries happen inside the
//! worker that received the task. For deployments that accept that.
//!
//! A task runs at most once per attempt: when only its record cannot be
//! saved, the save is retried, never the task. At shutdown, what cannot
//! finish within `worker.shutdown_timeout` is given up (and logged).

use std::sync::Arc;
use std::time::Duration;

use di::{Delivery, Disposition, ProcessError};
use futures_util::StreamExt;
use settings::NatsSettings;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::worker::jetstream::{Runtime, sleep_or_shutdown};

/// How long a task waits before it is tried again while the store is down.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Serves the task subjects through a queue group until `shutdown`.
pub async fn serve_core(
    client: async_nats::Client,
    settings: &NatsSettings,
    runtime: Arc<Runtime>,
    concurrency: usize,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), async_nats::SubscribeError> {
    let group = settings.durable.clone();
    let plain = client.queue_subscribe(settings.subject.clone(), group.clone()).await?;
    let queues = client.queue_subscribe(format!("{}.>", settings.subject), group).await?;
    let mut messages = futures_util::stream::select(plain, queues);
    let permits = Arc::new(Semaphore::new(concurrency));
    let hard_stop = CancellationToken::new();
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = shutdown.cancelled() => break,
        };
        let message = tokio::select! {
            message = messages.next() => message,
            () = shutdown.cancelled() => break,
        };
        let Some(message) = message else { break };
        let (runtime, shutdown, hard_stop) = (runtime.clone(), shutdown.clone(), hard_stop.clone());
        running.spawn(async move {
            let _permit = permit;
            run_in_process(&runtime, &message, &shutdown, &hard_stop).await;
        });
        while running.try_join_next().is_some() {}
    }
    if tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(
            remaining_tasks = running.len(),
            "shutdown timeout: giving up the running tasks (core NATS mode)"
        );
        hard_stop.cancel();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while running.join_next().await.is_some() {} }).await;
        running.abort_all();
    }
    Ok(())
}

/// Runs one message's attempts in this process.
async fn run_in_process(
    runtime: &Runtime,
    message: &async_nats::Message,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let mut attempt = 1;
    loop {
        let delivery = Delivery { count: attempt, interrupt: hard_stop.clone() };
        let mut execution = match runtime.execute(&message.payload, &delivery).await {
            Ok(execution) => execution,
            Err(ProcessError::NotStarted(err)) => {
                // Nothing ran: waiting is safe, until shutdown.
                tracing::warn!(%err, "result store unreachable; the task waits (core NATS mode)");
                if sleep_or_shutdown(STORE_RETRY, shutdown).await {
                    tracing::warn!("shutdown: a task that never started is dropped (core NATS mode)");
                    return;
                }
                continue;
            }
            Err(ProcessError::NotSaved { execution, error }) => {
                tracing::warn!(%error, "the task ran but its record was not saved; retrying the save only");
                if !runtime.save_until_saved(&execution, hard_stop).await {
                    tracing::warn!("shutdown timeout: the task's record is lost (core NATS mode)");
                    return;
                }
                *execution
            }
        };
        // The arguments go to the task index; the rest stays to settle the message.
        let arguments = execution.arguments.take();
        runtime.finished(&message.payload, di::Execution { arguments, ..execution.clone() }).await;
        match &execution.disposition {
            Disposition::Ack => return,
            Disposition::HandBack => {
                tracing::warn!("interrupted by the shutdown timeout; the task is lost (core NATS mode)");
                return;
            }
            Disposition::Retry { delay } => {
                if sleep_or_shutdown(*delay, shutdown).await {
                    tracing::warn!("shutdown: a task waiting to retry is dropped (core NATS mode)");
                    return;
                }
                attempt += 1;
            }
            Disposition::DeadLetter { reason } => {
                let key = di::new_task_id();
                let copied = runtime.dead_letter(&message.payload, message.subject.as_str(), &execution, reason, &key);
                if let Err(err) = copied.await {
                    tracing::warn!(%err, "dead letter lost (core NATS mode)");
                }
                return;
            }
        }
    }
}
