//! Cron schedules: every worker keeps the clock and each tick still runs
//! once fleet-wide, through a SIGKILL; pause and resume; missed ticks;
//! a wrong schedule stops the worker before it starts.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use it::PgSchema;
use it::process::{ChildProcess, command};
use it::scope::Scope;
use settings::{MissedTicks, ScheduleSettings};

fn unix_secs() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Sleeps until Unix second `at` (plus `extra_ms`).
async fn sleep_until_second(at: i64, extra_ms: u64) {
    let target = UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap()) + Duration::from_millis(extra_ms);
    if let Ok(wait) = target.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

/// The acceptance test: three worker processes keep a schedule that ticks
/// every second; one is killed with SIGKILL halfway. Over 20 seconds there
/// are 20 runs (the edges may differ by one), one per second with no gap,
/// and the task stream stored exactly one message per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_ticks_once_fleet_wide_through_a_sigkill() {
    let schema = PgSchema::create().await;
    let scope = Scope::new();
    let mut env = scope.env();
    for (key, value) in [
        ("COURIER_DATABASE__URL", schema.url.as_str()),
        ("COURIER_DATABASE__MAX_CONNECTIONS", "8"),
        ("COURIER_SCHEDULES__EVERY_SECOND__TASK", "heartbeat"),
        ("COURIER_SCHEDULES__EVERY_SECOND__CRON", "* * * * * *"),
        ("COURIER_SCHEDULES__EVERY_SECOND__ARGS__NOTE", "tick"),
    ] {
        env.push((key.to_owned(), value.to_owned()));
    }
    let mut workers = it::flood::workers(3, &env).await;
    let start = unix_secs() + 1;
    sleep_until_second(start + 10, 300).await;
    workers[0].signal("KILL");
    let killed = workers.remove(0);
    let end = start + 20;
    // The window's last tick, then time for it to run.
    sleep_until_second(end, 1_500).await;
    let remaining = tokio::task::spawn_blocking(move || {
        for worker in &mut workers {
            worker.terminate(Duration::from_secs(20));
        }
        workers
    })
    .await
    .unwrap();

    let pg = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT task_id, runs FROM heartbeats WHERE task_id LIKE 'cron:every_second:%'")
            .fetch_all(&pg)
            .await
            .unwrap();
    let ticks: BTreeMap<i64, i64> =
        rows.iter().map(|(id, runs)| (id.rsplit(':').next().unwrap().parse::<i64>().unwrap(), *runs)).collect();
    let in_window: Vec<i64> = ticks.keys().copied().filter(|t| (start..end).contains(t)).collect();
    let logs = || {
        let mut all = vec![killed.log()];
        all.extend(remaining.iter().map(ChildProcess::log));
        all.join("\n----\n").lines().filter(|l| !l.contains("task{")).collect::<Vec<_>>().join("\n")
    };
    assert!(
        (19..=21).contains(&in_window.len()),
        "{} runs in the 20 s window {start}..{end}: {in_window:?}\n{}",
        in_window.len(),
        logs()
    );
    let gaps: Vec<(i64, i64)> = in_window.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (w[0], w[1])).collect();
    assert!(gaps.is_empty(), "ticks missed between {gaps:?}");
    // No tick ran twice. The kill lands 300 ms after a tick, when its run
    // (a few milliseconds) is over: only a run killed between its commit
    // and its record could run again (at-least-once), and that is not what
    // this tests. A tick published twice would show here, and in the
    // stream's count below.
    let twice: Vec<(&i64, &i64)> = ticks.iter().filter(|(_, runs)| **runs > 1).collect();
    assert!(twice.is_empty(), "ticks run more than once: {twice:?}");
    let js = scope.jetstream().await;
    let mut stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(
        state.last_sequence,
        ticks.len() as u64 + state.messages,
        "every message the stream stored is a distinct tick that ran (or still waits)"
    );
    eprintln!(
        "{} ticks in 20 s from 3 workers (one killed at 10 s); {} stored by the stream",
        in_window.len(),
        state.last_sequence
    );
}

fn pulse(missed: MissedTicks, cron: &str) -> ScheduleSettings {
    ScheduleSettings {
        task: "noop".into(),
        cron: cron.into(),
        tz: "UTC".into(),
        args: Default::default(),
        lane: None,
        missed,
    }
}

/// `producer schedules list/pause/resume`: the listing shows the next
/// tick; a paused schedule publishes nothing until resumed; an unknown
/// name is exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_paused_and_resumed() {
    let schema = PgSchema::create().await;
    let mut scope = Scope::new();
    scope.settings.database.url = settings::SecretUrl::new(schema.url.clone());
    scope.settings.schedules.insert("pulse".into(), pulse(MissedTicks::Skip, "* * * * * *"));
    let mut env = scope.env();
    env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
    env.push(("COURIER_SCHEDULES__PULSE__TASK".into(), "noop".into()));
    env.push(("COURIER_SCHEDULES__PULSE__CRON".into(), "* * * * * *".into()));
    let producer = |args: &[&str]| {
        let out =
            command("producer").args(args).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let worker = scope.start_worker().await;
    scope
        .eventually(Duration::from_secs(10), "a first tick", || async {
            (!it::scope::ticks_recorded(&scope, "pulse").await.is_empty()).then_some(())
        })
        .await;

    let (code, out, err) = producer(&["schedules", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pulse = listed.as_array().unwrap().iter().find(|s| s["name"] == "pulse").expect("pulse is listed");
    assert_eq!(pulse["paused"], false);
    assert_eq!(pulse["task"], "noop");
    assert!(pulse["next"].as_str().is_some_and(|n| n.ends_with('Z')), "{pulse}");

    let (code, _, err) = producer(&["schedules", "pause", "pulse"]);
    assert_eq!(code, Some(0), "{err}");
    let paused_at = unix_secs();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let during: Vec<i64> =
        it::scope::ticks_recorded(&scope, "pulse").await.into_iter().filter(|t| *t > paused_at + 1).collect();
    assert!(during.is_empty(), "ticks published while paused: {during:?}");
    let (_, out, _) = producer(&["schedules", "list"]);
    assert!(out.contains("pulse  paused"), "{out}");

    let (code, _, err) = producer(&["schedules", "resume", "pulse"]);
    assert_eq!(code, Some(0), "{err}");
    let resumed_at = unix_secs();
    scope
        .eventually(Duration::from_secs(10), "a tick after the resume", || async {
            it::scope::ticks_recorded(&scope, "pulse").await.into_iter().any(|t| t > resumed_at).then_some(())
        })
        .await;
    let (code, _, err) = producer(&["schedules", "pause", "nope"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("pulse"), "the known schedules are named: {err}");
    worker.stop().await.unwrap();
}

/// `missed = "once"`: a worker that starts after ticks were missed runs
/// the latest of them once; `skip` runs none.
#[tokio::test]
async fn the_latest_missed_tick_runs_once_when_asked() {
    let schema = PgSchema::create().await;
    let mut scope = Scope::new();
    scope.settings.database.url = settings::SecretUrl::new(schema.url.clone());
    // Every minute at second 0; the last run was three minutes ago.
    scope.settings.schedules.insert("minutely_once".into(), pulse(MissedTicks::Once, "0 * * * * *"));
    scope.settings.schedules.insert("minutely_skip".into(), pulse(MissedTicks::Skip, "0 * * * * *"));
    // Not within seconds of a new minute: its tick would be the latest.
    if unix_secs() % 60 > 50 {
        sleep_until_second(unix_secs() - unix_secs() % 60 + 61, 0).await;
    }
    let now = unix_secs();
    let latest = now - now % 60;
    di::sqlx::any::install_default_drivers();
    let pool = di::sqlx::AnyPool::connect(&schema.url).await.unwrap();
    courier::campaign::migrator().run(&pool).await.unwrap();
    for name in ["minutely_once", "minutely_skip"] {
        courier::schedule::state::record_tick(&pool, name, latest - 180).await.unwrap();
    }
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let record = producer.wait(&format!("cron:minutely_once:{latest}"), Duration::from_secs(20)).await.unwrap();
    assert_eq!(record.status, di::TaskStatus::Success);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let older = it::scope::ticks_recorded(&scope, "minutely_once").await;
    assert!(older.iter().all(|t| *t >= latest), "only the latest missed tick runs: {older:?}");
    let skipped = it::scope::ticks_recorded(&scope, "minutely_skip").await;
    assert!(skipped.iter().all(|t| *t > now), "skip runs no missed tick: {skipped:?}");
    worker.stop().await.unwrap();
}

/// A schedule that cannot work stops the worker at start-up (exit 2),
/// naming it; `worker --check` says the same.
#[test]
fn a_wrong_schedule_is_refused_at_start_up() {
    for (key, value, says) in [
        ("CRON", "61 * * * *", "does not parse"),
        ("TZ", "Mars/Olympus", "unknown time zone"),
        ("TASK", "no_such_task", "no task"),
    ] {
        let mut cmd = command("worker");
        cmd.arg("--check")
            .env("COURIER_ENV", "test")
            .env("COURIER_SCHEDULES__BROKEN__TASK", "noop")
            .env("COURIER_SCHEDULES__BROKEN__CRON", "* * * * *")
            .env(format!("COURIER_SCHEDULES__BROKEN__{key}"), value);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stdout}");
        let line = stdout.lines().find(|l| l.contains("schedules")).unwrap_or_default();
        assert!(line.starts_with("FAIL") && line.contains("broken") && line.contains(says), "{key}={value}: {stdout}");
    }
    let out = command("worker")
        .env("COURIER_ENV", "test")
        .env("COURIER_SCHEDULES__BROKEN__TASK", "send_message")
        .env("COURIER_SCHEDULES__BROKEN__CRON", "* * * * *")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broken") && stderr.contains("chat_id"), "the missing argument is named: {stderr}");
}
