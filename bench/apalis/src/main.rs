//! The apalis peer of Courier's drain benchmark: N no-op jobs queued in
//! Redis with apalis-redis 1.0 (no worker running), then drained by one
//! apalis 1.0 worker at concurrency 32 (the storage fetching 32 at a time).
//!
//! Every job is checked: the handler marks its index, so a job run twice or
//! never is counted; apalis' own `done` set must hold every job and its
//! `dead` set none (read after the drain). Timed from the first job's start to the last job's end, and
//! by the wall clock from the worker's start. The queue's keys are deleted
//! at the end, also after a failed drain. One line of JSON on stdout.
//!
//! apalis-redis 1.0.0 queues every job in its `scheduled` set and moves
//! all due ones to the active list in one Lua `unpack`, which Redis' Lua
//! refuses beyond about 8,000 values: a pre-filled queue of more than that
//! cannot be drained ("too many results to unpack"). Keep `N` under 8,000.
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379`), `N` (default 7000),
//! `CONCURRENCY` (default 32).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Noop {
    index: u64,
}

/// What the handler sees: how often each index ran, when the first job
/// started and the last one ended, and how many are done.
struct Progress {
    epoch: Instant,
    runs: Vec<AtomicU8>,
    first_start_us: AtomicU64,
    last_end_us: AtomicU64,
    done: AtomicU64,
}

static PROGRESS: OnceLock<Progress> = OnceLock::new();

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn noop(job: Noop, worker: WorkerContext) -> Result<(), BoxDynError> {
    let progress = PROGRESS.get().ok_or("no progress")?;
    let started = progress.epoch.elapsed().as_micros() as u64;
    progress.first_start_us.fetch_min(started, Ordering::Relaxed);
    let slot = progress.runs.get(job.index as usize).ok_or("an index out of range")?;
    slot.fetch_add(1, Ordering::Relaxed);
    progress.last_end_us.fetch_max(progress.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    if progress.done.fetch_add(1, Ordering::AcqRel) + 1 == progress.runs.len() as u64 {
        worker.stop()?;
    }
    Ok(())
}

/// The number of members of `key`, a set or a sorted set (0 if absent).
async fn members(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> redis::RedisResult<u64> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
    match kind.as_str() {
        "zset" => conn.zcard(key).await,
        "set" => conn.scard(key).await,
        "list" => conn.llen(key).await,
        "hash" => conn.hlen(key).await,
        _ => Ok(0),
    }
}

/// Deletes every key of `queue` (apalis names them `<queue>:...`) and its
/// entry in apalis' list of queues.
async fn delete_queue(conn: &mut redis::aio::MultiplexedConnection, queue: &str) -> redis::RedisResult<()> {
    let () = conn.zrem("core:apalis:queues:list", format!("{queue}:workers")).await?;
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{queue}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let () = conn.del(&keys).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let n: u64 = env_or("N", 7_000);
    let concurrency: usize = env_or("CONCURRENCY", 32);
    let queue = format!("courier-bench-apalis-{}", std::process::id());
    let mut check = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let drained = drain(&url, n, concurrency, &queue, &mut check).await;
    // This run's keys go whatever happened (a cleanup error is reported
    // after the drain's own).
    let cleaned = delete_queue(&mut check, &queue).await;
    println!("{}", drained?);
    cleaned?;
    Ok(())
}

/// Queues `n` jobs, drains them, checks every one; the JSON line.
async fn drain(
    url: &str,
    n: u64,
    concurrency: usize,
    queue: &str,
    check: &mut redis::aio::MultiplexedConnection,
) -> Result<String, Box<dyn std::error::Error>> {
    let conn = apalis_redis::connect(url).await?;
    let config = Config::default().queue(queue).batch_size(concurrency);
    let mut storage = RedisStorage::new(conn).with_config(config.clone());
    let queued = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        storage.push_bulk(chunk.iter().map(|&index| Noop { index }).collect()).await?;
    }
    eprintln!("queued {n} in {:.2} s", queued.elapsed().as_secs_f64());

    let epoch = Instant::now();
    let progress = Progress {
        epoch,
        runs: (0..n).map(|_| AtomicU8::new(0)).collect(),
        first_start_us: AtomicU64::new(u64::MAX),
        last_end_us: AtomicU64::new(0),
        done: AtomicU64::new(0),
    };
    PROGRESS.set(progress).map_err(|_| "set twice")?;
    let worker = WorkerBuilder::new(format!("{queue}-worker")).backend(storage).concurrency(concurrency).build(noop);
    tokio::time::timeout(Duration::from_secs(600), worker.run()).await.map_err(|_| "no end within 600 s")??;
    let wall = epoch.elapsed();
    let progress = PROGRESS.get().ok_or("no progress")?;
    let (mut never, mut twice) = (0_u64, 0_u64);
    for runs in &progress.runs {
        match runs.load(Ordering::Relaxed) {
            0 => never += 1,
            1 => {}
            _ => twice += 1,
        }
    }
    // apalis' own record: every job acked as done, none dead (a job that
    // fails is retried through `scheduled`, then dead).
    let done = members(check, &config.done_jobs_set()).await?;
    let dead = members(check, &config.dead_jobs_set()).await?;
    if never > 0 || twice > 0 || done != n || dead > 0 {
        return Err(format!("{never} jobs never ran, {twice} ran twice, {done} of {n} done, {dead} dead").into());
    }
    let first = Duration::from_micros(progress.first_start_us.load(Ordering::Relaxed));
    let last = Duration::from_micros(progress.last_end_us.load(Ordering::Relaxed));
    let span = last.saturating_sub(first).as_secs_f64();
    Ok(format!(
        "{{\"peer\":\"apalis 1.0.0 + apalis-redis 1.0.0\",\"n\":{n},\"concurrency\":{concurrency},\
         \"per_second\":{:.0},\"wall_per_second\":{:.0},\"never\":{never},\"twice\":{twice},\
         \"done_set\":{done},\"dead_set\":{dead}}}",
        n as f64 / span.max(1e-9),
        n as f64 / wall.as_secs_f64(),
    ))
}
