//! The `worker` binary as a user runs it: `--check`, start-up, SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use it::process::command;
use it::{PgSchema, Service, require};

#[test]
fn check_reports_every_component_and_exits_zero() {
    require(Service::Nats);
    require(Service::Redis);
    require(Service::Postgres);
    let out = command("worker").arg("--check").env("COURIER_ENV", "development").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for component in ["tasks", "nats", "database", "redis", "telegram"] {
        assert!(stdout.lines().any(|l| l.starts_with("ok") && l.contains(component)), "{component} missing:\n{stdout}");
    }
}

#[test]
fn check_exits_three_naming_unreachable_redis() {
    let out = command("worker").arg("--check").env("COURIER_REDIS__URL", "redis://127.0.0.1:1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("redis")), "{stdout}");
}

#[test]
fn unknown_profile_exits_non_zero_naming_it() {
    let out = command("worker").arg("--check").env("COURIER_ENV", "nonsense").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nonsense\""));
}

#[test]
fn sigterm_stops_the_worker_cleanly() {
    require(Service::Nats);
    require(Service::Redis);
    let schema = tokio::runtime::Runtime::new().unwrap().block_on(PgSchema::create());
    // Its own stream, durable and keys; the shared server keeps nothing.
    let scope = it::scope::Scope::new();
    let mut child = command("worker")
        .envs(scope.env())
        .env("COURIER_ENV", "development")
        .env("COURIER_DATABASE__URL", &schema.url)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read the log on a thread until "worker ready" shows up.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let mut buf = [0_u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.push_str(&String::from_utf8_lossy(&buf[..n]));
            if log.contains("worker ready") {
                let _ = tx.send(());
            }
        }
        log
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the worker logs `worker ready`");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the worker did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = reader.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{log}");
    for line in ["schema up to date", "SIGTERM", "pool closed", "worker stopped"] {
        assert!(log.contains(line), "`{line}` missing from the log:\n{log}");
    }
}

#[test]
fn list_tasks_prints_one_name_per_line() {
    let out = command("worker").arg("--list-tasks").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    for shipped in ["noop", "send_report", "test_di_task"] {
        assert!(names.iter().any(|n| n == shipped), "{shipped} missing: {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, names, "sorted, no duplicates");
}

#[test]
fn sigterm_during_start_up_still_stops_the_worker_cleanly() {
    require(Service::Nats);
    require(Service::Redis);
    let scope = it::scope::Scope::new();
    // The first line of start-up: the signal handlers must already be there.
    let mut worker = it::process::ChildProcess::spawn("worker", &scope.env(), "connected");
    worker.signal("TERM");
    let exit = worker.wait(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0), "killed by the signal instead of stopping: {exit:?}\n{}", worker.log());
}
