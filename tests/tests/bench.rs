//! The `bench` binary is honest: it reads every result back and checks it,
//! counts a failed, wrong or missing result apart and exits 1, and compares
//! a Courier figure only with the raw pipeline doing the same work.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use di::{Envelope, ResultRecord, ResultStore, TaskError, TaskStatus};
use futures_util::StreamExt;
use it::process::command;
use it::scope::Scope;
use serde_json::Value;
use tasks as _;

/// Runs `bench` with the scope's settings: exit code, the JSON report, stderr.
async fn bench(scope: &Scope, args: &[&str]) -> (i32, Value, String) {
    let env = scope.env();
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.push("--json".into());
    tokio::task::spawn_blocking(move || {
        let out = command("bench").envs(env).args(&args).output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "progress went into a pipe: {stderr:?}");
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        (out.status.code().unwrap_or(-1), report, stderr)
    })
    .await
    .unwrap()
}

fn figure<'a>(report: &'a Value, phase: &str) -> &'a Value {
    let figures = report["figures"].as_array().unwrap();
    figures.iter().find(|f| f["phase"] == phase).unwrap_or_else(|| panic!("no {phase:?} in {report:#}"))
}

fn checks<'a>(report: &'a Value, phase: &str) -> &'a Value {
    let checks = report["checks"].as_array().unwrap();
    &checks.iter().find(|c| c["phase"] == phase).unwrap_or_else(|| panic!("no {phase:?} in {report:#}"))["checked"]
}

#[tokio::test]
async fn every_result_is_read_back_and_each_figure_has_its_own_raw_pipeline() {
    let scope = Scope::new();
    let worker = scope.start_worker().await;
    let args = ["--n", "200", "--round-trips", "20", "--warmup", "50", "--runs", "2", "--ceiling"];
    let (code, report, err) = bench(&scope, &args).await;
    assert_eq!(code, 0, "{err}\n{report:#}");
    // Per run: 200 noop, 200 SELECT 1, 20 round trips, 200 + 200 raw; and
    // 50 of each of the four before timing.
    let total = &report["total"];
    assert_eq!(total["ok"], 2 * (200 + 200 + 20 + 200 + 200) + 4 * 50, "{report:#}");
    assert_eq!((&total["failed"], &total["wrong"], &total["missing"]), (&0.into(), &0.into(), &0.into()));
    assert_eq!(checks(&report, "warm-up, noop")["ok"], 50);
    assert!(report["stopped"].is_null());
    assert_eq!(report["runs_completed"], 2);

    for (phase, raw) in [
        ("end to end, noop", "raw pipeline, noop's work"),
        ("end to end, DI SELECT 1", "raw pipeline, SELECT 1's work"),
    ] {
        let courier = figure(&report, phase);
        assert_eq!(courier["compared_with"], raw, "{courier:#}");
        assert!(courier["of_raw_pipeline"].as_f64().is_some_and(|p| p > 0.0), "{courier:#}");
        assert_eq!(courier["n"], figure(&report, raw)["n"]);
        assert_eq!(courier["runs"], 2);
    }
    for unpaired in ["enqueue (queued record, publish with ack), noop", "raw: JetStream publish with ack"] {
        assert!(figure(&report, unpaired)["of_raw_pipeline"].is_null(), "{unpaired} has no like to compare with");
    }
    assert!(figure(&report, "round trip, noop (enqueue -> result read)")["p50_ms"].as_f64().is_some());
    worker.stop().await.expect("the worker stops cleanly");
}

/// How the fake worker answers `select_one` (it answers `noop` correctly).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Failed,
    Wrong,
    Never,
}

/// A stand-in worker that writes each task's final record itself.
async fn fake_worker(scope: &Scope, answer: Answer) -> tokio::task::JoinHandle<()> {
    // The producer creates the streams.
    let _producer = scope.producer().await;
    let js = scope.jetstream().await;
    let stream = js.get_stream(&scope.settings.nats.stream).await.unwrap();
    let config =
        pull::Config { durable_name: Some("fake".into()), ack_policy: AckPolicy::Explicit, ..Default::default() };
    let consumer: PullConsumer = stream.create_consumer(config).await.unwrap();
    let store = di::RedisResultStore::connect(&scope.settings.redis).await.unwrap();
    tokio::spawn(async move {
        let mut messages = consumer.messages().await.unwrap();
        while let Some(Ok(message)) = messages.next().await {
            let envelope = Envelope::from_msgpack(&message.payload).unwrap();
            let record = match (envelope.task_name.as_str(), answer) {
                ("select_one", Answer::Failed) => {
                    Some(ResultRecord::failure("select_one", TaskStatus::Failed, 1, TaskError::new("DbError", "down")))
                }
                ("select_one", Answer::Wrong) => Some(ResultRecord::success("select_one", 1, 2.into(), 0.0)),
                ("select_one", Answer::Never) => None,
                (name, _) => Some(ResultRecord::success(name, 1, rmpv::Value::Nil, 0.0)),
            };
            if let Some(record) = record {
                store.put(&envelope.task_id, &record).await.unwrap();
            }
            let _ = message.ack().await;
        }
    })
}

#[tokio::test]
async fn a_failed_wrong_or_missing_result_is_counted_apart_and_fails_the_run() {
    for (answer, field) in [(Answer::Failed, "failed"), (Answer::Wrong, "wrong"), (Answer::Never, "missing")] {
        let scope = Scope::new();
        let fake = fake_worker(&scope, answer).await;
        let args = ["--n", "30", "--round-trips", "5", "--warmup", "10", "--stall-timeout", "1"];
        let (code, report, err) = tokio::time::timeout(Duration::from_secs(60), bench(&scope, &args)).await.unwrap();
        fake.abort();
        assert_eq!(code, 1, "{answer:?}: {err}\n{report:#}");
        assert_eq!(checks(&report, "warm-up, noop")["ok"], 10, "{answer:?}: {report:#}");
        let select = checks(&report, "warm-up, DI SELECT 1");
        assert_eq!(select[field], 10, "{answer:?}: {report:#}");
        assert_eq!(select["ok"], 0, "{answer:?}: {report:#}");
        assert_eq!(report["total"][field], 10, "{answer:?}: {report:#}");
        assert!(report["stopped"].as_str().is_some_and(|s| s.contains("warm-up, DI SELECT 1")), "{report:#}");
        assert!(report["figures"].as_array().unwrap().is_empty(), "no rate is reported: {report:#}");
        assert!(err.contains(&format!("10 {field}")), "{answer:?}: {err}");
    }
}
