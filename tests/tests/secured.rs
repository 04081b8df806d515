//! Secured connections through settings alone: NATS with a user and
//! password, NATS with a token, Redis with `requirepass`. Wrong credentials
//! fail start-up with a clear error that does not contain the secret.

use di::TaskStatus;
use it::scope::Scope;
use it::servers::{PrivateNats, PrivateRedis};
use settings::{SecretUrl, SecretUrls};

#[tokio::test]
async fn worker_and_producer_connect_with_credentials_from_settings() {
    let nats = PrivateNats::start_with(&["--user", "courier", "--pass", "nats-s3cret"]);
    let redis = PrivateRedis::redis_with(&["--requirepass", "redis-s3cret"]);
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(format!("nats://courier:nats-s3cret@127.0.0.1:{}", nats.port));
    scope.settings.redis.url = SecretUrl::new(format!("redis://:redis-s3cret@127.0.0.1:{}", redis.port)).into();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(std::time::Duration::from_secs(20)).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn nats_token_from_settings() {
    let nats = PrivateNats::start_with(&["--auth", "tok-s3cret"]);
    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(format!("nats://tok-s3cret@127.0.0.1:{}", nats.port));
    let worker = scope.start_worker().await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_credentials_fail_clearly_without_the_secret() {
    let nats = PrivateNats::start_with(&["--user", "courier", "--pass", "right-pass"]);
    let redis = PrivateRedis::redis_with(&["--requirepass", "right-pass"]);

    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(format!("nats://courier:wrong-nats-pass@127.0.0.1:{}", nats.port));
    let err = courier::run_worker(scope.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("nats") && err.contains(&nats.port.to_string()), "{err}");
    assert!(!err.contains("wrong-nats-pass"), "the password leaked: {err}");

    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(format!("redis://:wrong-redis-pass@127.0.0.1:{}", redis.port)).into();
    let err = courier::run_worker(scope.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("redis") && err.contains(&redis.port.to_string()), "{err}");
    assert!(!err.contains("wrong-redis-pass"), "the password leaked: {err}");
    println!("{err}");
}

#[tokio::test]
async fn redis_acl_user_from_settings() {
    let redis = PrivateRedis::redis_with(&[
        "--user",
        "courier",
        "on",
        ">acl-s3cret",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(format!("redis://courier:acl-s3cret@127.0.0.1:{}", redis.port)).into();
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(std::time::Duration::from_secs(20)).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=courier-test-ca"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test]
async fn nats_over_tls_with_a_ca_from_settings() {
    let dir = std::env::temp_dir().join(it::unique("courier_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let file = |name: &str| dir.join(name).display().to_string();
    let nats = PrivateNats::start_with(&["--tls", "--tlscert", &file("server.pem"), "--tlskey", &file("server.key")]);

    let mut untrusting = Scope::new();
    untrusting.settings.nats.url = SecretUrls::new(nats.url());
    let err = courier::run_worker(untrusting.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("nats") && err.contains(&nats.port.to_string()), "{err}");

    let mut scope = Scope::new();
    scope.settings.nats.url = SecretUrls::new(nats.url());
    scope.settings.nats.tls_ca_file = Some(file("ca.pem"));
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(std::time::Duration::from_secs(20)).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redis_over_tls_with_a_ca_from_settings() {
    let dir = std::env::temp_dir().join(it::unique("courier_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let file = |name: &str| dir.join(name).display().to_string();
    let redis = PrivateRedis::redis_tls(&file("server.pem"), &file("server.key"));
    let mut scope = Scope::new();
    scope.settings.redis.url = SecretUrl::new(format!("rediss://127.0.0.1:{}", redis.port)).into();
    scope.settings.redis.tls_ca_file = Some(file("ca.pem"));
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
    assert_eq!(handle.wait(std::time::Duration::from_secs(20)).await.unwrap().status, TaskStatus::Success);
    worker.stop().await.unwrap();

    // Plain text against the TLS port is refused at start-up, clearly.
    scope.settings.redis.url = SecretUrl::new(format!("redis://127.0.0.1:{}", redis.port)).into();
    scope.settings.redis.tls_ca_file = None;
    scope.settings.redis.connect_timeout = std::time::Duration::from_secs(2);
    let err = di::RedisResultStore::connect(&scope.settings.redis).await.unwrap_err();
    assert_eq!(err.component(), di::Component::Redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_over_tls_from_the_url() {
    it::require(it::Service::Postgres);
    let mut settings = it::test_settings();
    settings.database.url = SecretUrl::new(format!("{}?sslmode=require", it::POSTGRES_URL));
    let db = di::SqlxDb::connect(&settings.database).await.expect("TLS to the local PostgreSQL (ssl = on)");
    let ssl: bool = di::sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(di::Db::pool(&db))
        .await
        .unwrap();
    assert!(ssl, "the session is not encrypted");
    db.close().await;
}

#[tokio::test]
async fn a_malformed_credentials_file_fails_startup_clearly() {
    // No JWT-enabled nats-server can be set up here (no operator tooling):
    // this checks the setting is read and a bad file is a clear error.
    let dir = std::env::temp_dir().join(it::unique("courier_creds"));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("user.creds");
    std::fs::write(&creds, "not a credentials file\n").unwrap();
    let mut scope = Scope::new();
    scope.settings.nats.credentials_file = Some(creds.display().to_string());
    let err = courier::run_worker(scope.settings.clone(), std::future::pending()).await.unwrap_err().to_string();
    assert!(err.contains("nats.credentials_file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Passwords with characters that URLs treat specially (issue 11, point 15).
const TRICKY: [&str; 5] = ["a+b", "a%2Bb", "p@ss", "p:ss", "dGVzdA+/x=="];

/// Percent-encodes all but ASCII letters and digits, as a URL's user part needs.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Runs the `worker` binary with `env` until it gives up; all it printed.
async fn worker_output(env: Vec<(String, String)>) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = it::process::command("worker").envs(env).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn passwords_with_url_special_characters_connect_and_never_leak() {
    for password in TRICKY {
        let nats = PrivateNats::start_with(&["--user", "u", "--pass", password]);
        let redis = PrivateRedis::redis_with(&["--requirepass", password]);
        let nats_url = |pw: &str| SecretUrls::new(format!("nats://u:{pw}@127.0.0.1:{}", nats.port));
        let redis_url = |pw: &str| SecretUrl::new(format!("redis://:{pw}@127.0.0.1:{}", redis.port));

        // Percent-encoded (and, where a URL allows it, as typed): connects.
        let mut forms = vec![encode(password)];
        if password == "a+b" {
            forms.push(password.to_owned());
        }
        for form in forms {
            let mut scope = Scope::new();
            scope.settings.nats.url = nats_url(&form);
            scope.settings.redis.url = redis_url(&form).into();
            for url in [&scope.settings.nats.url.servers()[0], &scope.settings.redis.url.servers()[0]] {
                assert_eq!(url.password().as_deref(), Some(password), "{form}: what the scrubber masks");
            }
            let producer = courier::Producer::connect(&scope.settings)
                .await
                .unwrap_or_else(|e| panic!("{password:?} as {form}: {e}"));
            let handle = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap();
            assert!(producer.result(&handle.task_id).await.unwrap().is_some(), "{form}: the record was written");
        }

        // A wrong password, to NATS and then to Redis: it is nowhere in the
        // error, the settings' Debug or the worker's log.
        let wrong = format!("{password}-wr0ng");
        for (nats_pw, redis_pw) in [(encode(&wrong), encode(password)), (encode(password), encode(&wrong))] {
            let mut scope = Scope::new();
            scope.settings.nats.url = nats_url(&nats_pw);
            scope.settings.redis.url = redis_url(&redis_pw).into();
            let err = courier::run_worker(scope.settings.clone(), std::future::pending()).await.unwrap_err();
            let (code, log) = worker_output(scope.env()).await;
            assert_ne!(code, Some(0), "{log}");
            let texts = [err.to_string(), format!("{err:?}"), format!("{:?}", scope.settings), log];
            for text in &texts {
                for secret in [wrong.as_str(), &encode(&wrong)] {
                    assert!(!text.contains(secret), "{secret:?} leaked: {text}");
                }
            }
        }
    }
}
