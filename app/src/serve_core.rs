//! Core NATS mode (`nats.mode = "core"`): a queue group, at-most-once.
//! Nothing is acknowledged; a task in flight when a worker dies, or
//! published while no worker listens, is lost. Retries happen inside the
//! worker that received the task. For deployments that accept that.

use std::sync::Arc;
use std::time::Duration;

use di::Disposition;
use futures_util::StreamExt;
use settings::NatsSettings;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::serve::Runtime;

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
        let runtime = runtime.clone();
        running.spawn(async move {
            let _permit = permit;
            let mut attempt = 1;
            loop {
                let execution = match runtime.execute(&message.payload, attempt).await {
                    Ok(execution) => execution,
                    Err(err) => {
                        tracing::warn!(%err, "result not saved; retrying in memory");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                runtime.finished(&execution).await;
                match execution.disposition {
                    Disposition::Ack => break,
                    Disposition::Retry { delay } => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    Disposition::DeadLetter { reason } => {
                        let key = di::new_task_id();
                        let id = execution.task_id.as_deref();
                        let subject = message.subject.as_str();
                        let stored =
                            runtime.publisher.dead_letter(message.payload.clone(), &reason, id, attempt, &key, subject);
                        if let Err(err) = stored.await {
                            tracing::warn!(%err, "dead letter lost (core NATS mode)");
                        }
                        break;
                    }
                }
            }
        });
        while running.try_join_next().is_some() {}
    }
    if tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(remaining_tasks = running.len(), "shutdown timeout: abandoning running tasks (core NATS mode)");
        running.abort_all();
    }
    Ok(())
}
