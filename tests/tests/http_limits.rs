//! What the worker's HTTP server and metrics hold on to under abuse: task
//! names from outside never become metric labels, and a slowloris of idle
//! connections neither exhausts the worker's file descriptors nor stops
//! tasks or `/healthz`.

use std::time::Duration;

use bytes::Bytes;
use di::{Envelope, TaskStatus};
use it::process::ChildProcess;
use it::scope::Scope;
use it::servers::free_port;
use it::{PgSchema, test_settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

/// A plain HTTP/1.1 GET: (status, body); `None` if no answer within 3 s.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.ok()?;
        let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok())?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange).await.ok().flatten()
}

#[tokio::test]
async fn five_thousand_unknown_task_names_share_the_unknown_label() {
    let mut scope = Scope::new();
    let addr = format!("127.0.0.1:{}", free_port());
    scope.settings.worker.http_addr = addr.clone();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();
    let rogue = it::unique("rogue");
    for n in 0..5_000 {
        let name = format!("{rogue}_{n}");
        let bytes = Envelope::new(format!("{name}-id"), &name, &()).unwrap().to_msgpack().unwrap();
        producer
            .publisher()
            .send(subject.clone(), &format!("{name}-id"), Default::default(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    let series = r#"courier_tasks_dead_lettered_total{task="unknown"}"#;
    let metrics = scope
        .eventually(WAIT, "5,000 dead letters counted as unknown", || async {
            let (_, body) = get(&addr, "/metrics").await?;
            body.lines().any(|l| l == format!("{series} 5000")).then_some(body)
        })
        .await;
    assert!(!metrics.contains(&rogue), "a task name from outside became a label:\n{metrics}");
    let samples = metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    assert!(samples < 100, "{samples} series:\n{metrics}");
    assert!(metrics.len() < 50_000, "/metrics is {} bytes", metrics.len());
    worker.stop().await.unwrap();
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

// Multi-threaded: the idle connections are opened while the worker runs in
// another process, and the test polls both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_of_2000_idle_connections_stops_neither_tasks_nor_healthz() {
    let mut scope = Scope::new();
    let schema = PgSchema::create().await;
    let addr = format!("127.0.0.1:{}", free_port());
    scope.settings.worker.http_addr = addr.clone();
    let mut env = scope.env();
    env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
    let worker = tokio::task::spawn_blocking(move || ChildProcess::start(&env)).await.unwrap();
    // 1024 descriptors: what a service commonly gets (systemd's soft
    // limit); the test process itself has more, so it can open 2,000.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &worker.id().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit failed");
    assert_eq!(get(&addr, "/healthz").await.map(|r| r.0), Some(200), "healthy before");

    // Idle connections that never send a byte, held open by this process.
    let mut idle = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await {
            idle.push(stream);
        }
    }
    let cap = test_settings().worker.http_max_connections;
    let fds = open_fds(worker.id());
    assert!(fds < cap + 200, "the worker holds {fds} descriptors with 2,000 idle clients (cap {cap})");

    // Tasks that need new database connections (the pool holds one).
    let producer = scope.producer().await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(producer.enqueue(tasks::select_one::TASK, &tasks::select_one::Args {}).await.unwrap());
    }
    for handle in handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}\n{}", worker.log());
    }
    scope
        .eventually(Duration::from_secs(20), "/healthz to answer with the idle clients still connected", || async {
            (get(&addr, "/healthz").await?.0 == 200).then_some(())
        })
        .await;
    assert_eq!(idle.len(), 2_000, "every idle client got connected (accepted, or accepted and closed)");
    let fds = open_fds(worker.id());
    assert!(fds < cap + 200, "the worker holds {fds} descriptors (cap {cap})");
    drop(idle);
    let mut worker = worker;
    let exit = tokio::task::spawn_blocking(move || worker.terminate(WAIT)).await.unwrap();
    assert_eq!(exit.code(), Some(0));
}
