//! The three binaries' command lines: `--help` everywhere, completions,
//! the one exit-code table (each code pinned here or where noted), output
//! for pipes, and what `worker --check` and `--print-settings` say.

use std::process::Output;

use courier::cli::EXIT_CODES;
use it::process::command;
use it::scope::Scope;
use it::{Service, require};

/// Runs binary `name` with `args` and `env`: exit code, stdout, stderr.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out: Output = command(name).args(args).envs(env.iter().copied()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // Output for pipes: no carriage returns or terminal escapes, whatever the command.
    assert!(!stdout.contains('\r') && !stderr.contains('\r'), "{name} {args:?} wrote \\r into a pipe");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "{name} {args:?} wrote escapes into a pipe");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

const PRODUCER_COMMANDS: [&str; 6] = ["tasks", "send", "result", "dead-letters", "replay", "completions"];

#[test]
fn every_binary_and_subcommand_has_help_with_the_exit_codes() {
    let mut invocations: Vec<(&str, Vec<&str>)> = vec![
        ("worker", vec!["--help"]),
        ("worker", vec!["completions", "--help"]),
        ("bot", vec!["--help"]),
        ("bot", vec!["completions", "--help"]),
        ("producer", vec!["--help"]),
    ];
    invocations.extend(PRODUCER_COMMANDS.iter().map(|c| ("producer", vec![*c, "--help"])));
    for (name, args) in invocations {
        let (code, out, err) = run(name, &args, &[]);
        assert_eq!(code, 0, "{name} {args:?}: {err}");
        assert!(out.contains("Usage:") && out.contains(EXIT_CODES), "{name} {args:?}:\n{out}");
    }
    let (_, out, _) = run("producer", &["--help"], &[]);
    for command in PRODUCER_COMMANDS {
        assert!(out.contains(command), "producer --help does not list {command}");
    }
    // The benchmark is a binary of its own, not a production command.
    assert!(!out.contains("bench"), "producer --help lists a benchmark:\n{out}");
    assert_eq!(run("producer", &["bench"], &[]).0, 2, "producer bench is gone");
    let (_, out, _) = run("worker", &["--help"], &[]);
    for flag in ["--check", "--list-tasks", "--print-settings", "--json"] {
        assert!(out.contains(flag), "worker --help does not list {flag}");
    }
}

#[test]
fn every_binary_prints_completions_for_each_shell() {
    for name in ["worker", "producer", "bot"] {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let (code, out, err) = run(name, &["completions", shell], &[]);
            assert_eq!(code, 0, "{name} {shell}: {err}");
            assert!(out.contains(name) && out.len() > 200, "{name} {shell}:\n{out}");
        }
    }
    let (_, bash, _) = run("producer", &["completions", "bash"], &[]);
    assert!(bash.contains("dead-letters") && bash.contains("--kwargs"), "subcommands and flags complete");
}

#[test]
fn usage_and_configuration_errors_exit_2_in_every_binary() {
    for (name, args) in [
        ("worker", &["--bogus"][..]),
        ("worker", &["--json"]),
        ("worker", &["--check", "--list-tasks"]),
        ("bot", &["--bogus"]),
        ("producer", &["bogus"]),
        ("producer", &["send"]),
        ("producer", &["send", "no_such_task"]),
        ("producer", &["send", "noop", "--kwargs", "[1]"]),
    ] {
        let (code, _, err) = run(name, args, &[]);
        assert_eq!(code, 2, "{name} {args:?}: {err}");
    }
    // Settings: a typo, a value out of range, a folder that is not there.
    let bad_settings: [(&str, &str); 3] = [
        ("COURIER_WROKER__CONCURRENCY", "4"),
        ("COURIER_WORKER__CONCURRENCY", "0"),
        ("COURIER_SETTINGS_DIR", "/nonexistent/courier-settings"),
    ];
    for (key, value) in bad_settings {
        for (name, args) in [("worker", &["--check"][..]), ("bot", &[]), ("producer", &["result", "x"])] {
            let (code, _, err) = run(name, args, &[(key, value)]);
            assert_eq!(code, 2, "{name} with {key}={value}: {err}");
        }
    }
    let (_, _, err) = run("worker", &["--check"], &[("COURIER_WROKER__CONCURRENCY", "4")]);
    assert!(
        err.contains("COURIER_WROKER__CONCURRENCY") && err.contains("did you mean COURIER_WORKER__CONCURRENCY"),
        "{err}"
    );
}

#[test]
fn an_unavailable_component_exits_3_in_every_binary() {
    let nats_down = [("COURIER_NATS__URL", "nats://127.0.0.1:1"), ("COURIER_NATS__CONNECT_TIMEOUT", "1s")];
    let (code, out, err) = run("worker", &["--check"], &nats_down);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("FAIL") && l.contains("nats")), "{out}");
    let (code, _, err) = run("producer", &["result", "some-task"], &nats_down);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = run("worker", &[], &nats_down);
    assert_eq!(code, 3, "the worker itself: {err}");
    let telegram_down = [("COURIER_TELEGRAM__TOKEN", "1:x"), ("COURIER_TELEGRAM__API_URL", "http://127.0.0.1:1/")];
    let (code, _, err) = run("bot", &[], &telegram_down);
    assert_eq!(code, 3, "{err}");
}

#[tokio::test]
async fn not_found_and_timed_out_exit_4_and_5() {
    let scope = Scope::new();
    let _producer = scope.producer().await;
    let env = scope.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, err) = run("producer", &["result", "never-sent"], &env);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no record for task never-sent"), "{err}");
    // No worker runs: the wait runs out.
    let (code, out, err) = run("producer", &["send", "noop", "--wait", "0.3"], &env);
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("no final result for task") && err.contains("within 300ms"), "{err}");
}

#[test]
fn check_lists_the_registry_and_exits_0_or_says_why_not_in_json_too() {
    require(Service::Nats);
    require(Service::Redis);
    require(Service::Postgres);
    let (code, out, err) = run("worker", &["--check", "--json"], &[("COURIER_ENV", "development")]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: serde_json::Value = serde_json::from_str(&out).unwrap();
    let components: Vec<&str> = lines.as_array().unwrap().iter().map(|l| l["component"].as_str().unwrap()).collect();
    assert_eq!(components, ["tasks", "schedules", "nats", "database", "redis", "telegram"]);
    assert!(lines[0]["detail"].as_str().unwrap().contains("send_message"), "{out}");
    assert!(lines.as_array().unwrap().iter().all(|l| l["ok"] == true), "{out}");
    // The start-up log names the layers and the variables, never their values.
    assert!(err.contains("settings loaded") && err.contains("profile development"), "{err}");
}

/// An HTTP server on a free port answering every request with `status` and `body`.
async fn answering(status: u16, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().fallback(move || async move { (status, body) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_tells_an_unexpected_answer_and_a_refusal_from_an_unreachable_telegram() {
    let html = answering(200, "<html>a proxy, not the Bot API</html>").await;
    let refusing = answering(401, r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#).await;
    let nobody = "http://127.0.0.1:1/".to_owned();
    for (url, said) in [(html, "gave an unexpected answer"), (refusing, "refused us"), (nobody, "is unreachable")] {
        let url_again = url.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run("worker", &["--check"], &[("COURIER_TELEGRAM__TOKEN", "1:x"), ("COURIER_TELEGRAM__API_URL", &url)])
        })
        .await
        .unwrap();
        let line = out.lines().find(|l| l.contains("telegram")).unwrap_or_else(|| panic!("{out}{err}"));
        assert!(line.starts_with("FAIL") && line.contains(said), "expected {said:?}: {line}");
        assert_eq!(code, 3, "{out}");
        // The bot says the same.
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            run("bot", &[], &[("COURIER_TELEGRAM__TOKEN", "1:x"), ("COURIER_TELEGRAM__API_URL", &url_again)])
        })
        .await
        .unwrap();
        assert!(err.contains(said), "bot: expected {said:?}: {err}");
        assert_eq!(code, 3, "bot: {err}");
    }
}

#[test]
fn the_settings_layers_are_logged_by_variable_name_only() {
    let env = [("COURIER_REDIS__KEY_PREFIX", "hush-hush:"), ("COURIER_LOG__LEVEL", "info")];
    let (_, _, err) = run("worker", &["--check"], &env);
    let line = err.lines().find(|l| l.contains("settings loaded")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("COURIER_REDIS__KEY_PREFIX") && line.contains("COURIER_LOG__LEVEL"), "{line}");
    assert!(!err.contains("hush-hush"), "a value was logged:\n{err}");
}

#[test]
fn print_settings_shows_the_merged_settings_with_secrets_masked() {
    let env = [
        ("COURIER_TELEGRAM__TOKEN", "777:TOPSECRET"),
        ("COURIER_DATABASE__URL", "postgres://app:hunter2@db:5432/app"),
        ("COURIER_WORKER__CONCURRENCY", "12"),
    ];
    let (code, out, err) = run("worker", &["--print-settings"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("TOPSECRET") && !out.contains("hunter2") && !out.contains("777"), "{out}");
    assert!(out.contains("concurrency = 12") && out.contains("token = \"***\""), "{out}");
    assert!(out.contains("postgres://app:***@db:5432/app"), "{out}");
    assert!(out.starts_with("# layers: built-in defaults"), "{out}");
    let (code, out, _) = run("worker", &["--print-settings", "--json"], &env);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["settings"]["worker"]["concurrency"], 12);
    assert_eq!(json["environment"].as_array().unwrap().len(), 3, "{json}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn the_readme_carries_the_exit_code_table() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains(EXIT_CODES), "README.md's exit-code table differs from courier::cli::EXIT_CODES");
}

#[tokio::test]
async fn the_worker_log_has_no_debug_formatting() {
    let scope = Scope::new();
    let env = scope.env();
    let log = tokio::task::spawn_blocking(move || {
        let mut worker = it::process::ChildProcess::start(&env);
        let log = worker.log();
        assert_eq!(worker.terminate(std::time::Duration::from_secs(20)).code(), Some(0));
        log
    })
    .await
    .unwrap();
    assert!(log.contains("mode=\"jetstream\"") && log.contains("settings loaded"), "{log}");
    for debug in ["Jetstream", "WorkQueue", "Some(", "[\"", "Duration"] {
        assert!(!log.contains(debug), "{debug} in the log:\n{log}");
    }
}
