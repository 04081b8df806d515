//! Each real component against its local service, the failures they
//! report, and each one swapped for its double through a shaku override.

use std::sync::Arc;
use std::time::Duration;

use di::shaku::HasComponent;
use di::testing::{InMemoryResultStore, RecordingBot, mock_container};
use di::{
    AppContainer, BotApi, BotError, Component, Db, RedisResultStore, ResultRecord, ResultStore, SqlxDb, StartupError,
    TaskStatus, TelegramBot,
};
use it::fake_telegram::FakeTelegram;
use it::{POSTGRES_URL, REDIS_URL, Service, require, test_settings, unique};
use redis::{self, AsyncCommands};
use settings::{Secret, SecretUrl, Settings};

fn settings_with(edit: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings();
    edit(&mut settings);
    settings
}

#[tokio::test]
async fn db_on_postgres_runs_select() {
    require(Service::Postgres);
    let settings = settings_with(|s| s.database.url = SecretUrl::new(POSTGRES_URL));
    let db = SqlxDb::connect(&settings.database).await.expect("connect to PostgreSQL");
    assert_eq!(db.backend(), "PostgreSQL");
    db.ping().await.expect("SELECT 1");
    let n: i64 =
        di::sqlx::query_scalar("SELECT CAST($1 AS BIGINT) + 1").bind(41_i64).fetch_one(db.pool()).await.unwrap();
    assert_eq!(n, 42);
    db.close().await;
    assert!(db.pool().is_closed());
}

#[tokio::test]
async fn db_on_sqlite_file_and_memory() {
    let dir = std::env::temp_dir().join(unique("courier_sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("app.db").display());
    let settings = settings_with(|s| s.database.url = SecretUrl::new(url));
    let db = SqlxDb::connect(&settings.database).await.expect("open SQLite file");
    assert_eq!(db.backend(), "SQLite");
    di::sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY)").execute(db.pool()).await.unwrap();
    di::sqlx::query("INSERT INTO t (id) VALUES ($1)").bind(7_i64).execute(db.pool()).await.unwrap();
    db.close().await;
    assert!(dir.join("app.db").is_file());
    std::fs::remove_dir_all(&dir).unwrap();

    let memory = SqlxDb::sqlite_in_memory().await.unwrap();
    assert_eq!(memory.backend(), "SQLite");
    // One connection, so a table created is still there on the next query.
    di::sqlx::query("CREATE TABLE m (x BIGINT)").execute(memory.pool()).await.unwrap();
    let count: i64 = di::sqlx::query_scalar("SELECT COUNT(*) FROM m").fetch_one(memory.pool()).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn unreachable_database_is_named_without_password() {
    let settings = settings_with(|s| {
        s.database.url = SecretUrl::new("postgres://app:hunter2@127.0.0.1:1/app");
        s.database.connect_timeout = Duration::from_secs(1);
    });
    let e = SqlxDb::connect(&settings.database).await.expect_err("port 1 is closed");
    assert_eq!(e.component(), Component::Database);
    assert!(matches!(e, StartupError::Unreachable { .. }));
    let text = e.to_string();
    assert!(text.contains("127.0.0.1:1") && !text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn result_store_on_redis_writes_with_ttl() {
    require(Service::Redis);
    let prefix = format!("{}:", unique("courier_test"));
    let settings = settings_with(|s| {
        s.redis.url = SecretUrl::new(REDIS_URL).into();
        s.redis.key_prefix = prefix.clone();
        s.redis.result_ttl = Duration::from_secs(90);
    });
    let store = RedisResultStore::connect(&settings.redis).await.expect("connect to Redis");
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}task-1");
    let status_key = format!("{prefix}task-1:status");

    // Before the end, the record lives beside the taskiq key, which must not
    // exist yet (taskiq reads "the key exists" as "finished").
    let running = ResultRecord::new("t", TaskStatus::Running, 1);
    store.put("task-1", &running).await.unwrap();
    assert_eq!(store.get("task-1").await.unwrap(), Some(running));
    assert!(!conn.exists::<_, bool>(&key).await.unwrap());
    assert!(conn.exists::<_, bool>(&status_key).await.unwrap());
    let queued = ResultRecord::new("t", TaskStatus::Queued, 0);
    assert!(!store.put_if_absent("task-1", &queued).await.unwrap(), "never over an existing record");

    let record = ResultRecord::success("t", 1, rmpv::Value::from("done"), 0.25);
    store.put("task-1", &record).await.unwrap();
    assert_eq!(store.get("task-1").await.unwrap(), Some(record));
    assert!(!conn.exists::<_, bool>(&status_key).await.unwrap(), "the final write removes the status record");
    assert_eq!(store.get("missing").await.unwrap(), None);

    let ttl: i64 = conn.ttl(&key).await.unwrap();
    assert!((85..=90).contains(&ttl), "TTL of {key} is {ttl}, expected about 90");
    // The stored bytes are the taskiq-compatible msgpack map.
    let raw: Vec<u8> = conn.get(&key).await.unwrap();
    let value = rmpv::decode::read_value(&mut raw.as_slice()).unwrap();
    let keys: Vec<String> = value.as_map().unwrap().iter().filter_map(|(k, _)| k.as_str().map(str::to_owned)).collect();
    for field in ["is_err", "log", "return_value", "execution_time", "labels", "error", "status", "attempt"] {
        assert!(keys.iter().any(|k| k == field), "{field} missing from {keys:?}");
    }
    let () = conn.del(&key).await.unwrap();
}

#[tokio::test]
async fn unreachable_redis_is_named_without_password() {
    let settings = settings_with(|s| s.redis.url = SecretUrl::new("redis://:redispass@127.0.0.1:1").into());
    let e = RedisResultStore::connect(&settings.redis).await.expect_err("port 1 is closed");
    assert_eq!(e.component(), Component::Redis);
    let text = e.to_string();
    assert!(text.contains("127.0.0.1:1") && !text.contains("redispass"), "{text}");
}

fn telegram_settings(fake: &FakeTelegram) -> Settings {
    settings_with(|s| {
        s.telegram.token = Some(Secret::new("123:SECRETTOKEN"));
        s.telegram.api_url = fake.url.clone();
    })
}

#[tokio::test]
async fn bot_sends_through_the_api_url() {
    let fake = FakeTelegram::start().await;
    let bot = TelegramBot::from_settings(&telegram_settings(&fake).telegram).unwrap();
    assert!(bot.is_live());
    assert!(!format!("{bot:?}").contains("SECRETTOKEN"));
    assert_eq!(bot.check().await.unwrap(), "@courier_test_bot");
    let sent = bot.send_message(42, "hello").await.unwrap();
    assert_eq!(sent.chat_id, 42);
    assert_eq!(sent.message_id, 1);
    let requests = fake.sent_messages();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].token, "123:SECRETTOKEN");
    assert_eq!(requests[0].body["chat_id"], 42);
    assert_eq!(requests[0].body["text"], "hello");
}

#[tokio::test]
async fn bot_errors_are_split_into_retryable_and_fatal() {
    let fake = FakeTelegram::start().await;
    let bot = TelegramBot::from_settings(&telegram_settings(&fake).telegram).unwrap();

    fake.script_rate_limit("sendMessage", 7);
    let e = bot.send_message(1, "x").await.unwrap_err();
    assert_eq!(e, BotError::RateLimited { retry_after: Duration::from_secs(7) });
    assert!(e.is_retryable());

    fake.script(
        "sendMessage",
        403,
        serde_json::json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
    );
    let e = bot.send_message(1, "x").await.unwrap_err();
    assert!(matches!(e, BotError::ChatGone { reason: di::ChatGone::Blocked, .. }) && !e.is_retryable(), "{e:?}");

    // teloxide waits 10 s after any 5xx before it returns the error.
    fake.script(
        "sendMessage",
        500,
        serde_json::json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
    );
    let e = bot.send_message(1, "x").await.unwrap_err();
    assert!(matches!(e, BotError::Unavailable(_)), "{e:?}");

    let down = settings_with(|s| {
        s.telegram.token = Some(Secret::new("123:SECRETTOKEN"));
        s.telegram.api_url = "http://127.0.0.1:1/".to_owned();
    });
    let e = TelegramBot::from_settings(&down.telegram).unwrap().send_message(1, "x").await.unwrap_err();
    assert!(matches!(e, BotError::Unavailable(_)), "{e:?}");
    assert!(!e.to_string().contains("SECRETTOKEN"), "{e}");
}

#[tokio::test]
async fn bot_without_token_logs_instead_of_sending() {
    let bot = TelegramBot::from_settings(&test_settings().telegram).unwrap();
    assert!(!bot.is_live());
    let sent = bot.send_message(5, "only logged").await.unwrap();
    assert_eq!(sent.message_id, 0);
}

#[tokio::test]
async fn container_connects_real_components_and_closes_pools() {
    require(Service::Postgres);
    require(Service::Redis);
    let fake = FakeTelegram::start().await;
    let settings = settings_with(|s| {
        s.database.url = SecretUrl::new(POSTGRES_URL);
        s.redis.url = SecretUrl::new(REDIS_URL).into();
        s.redis.key_prefix = format!("{}:", unique("courier_container"));
        s.telegram.token = Some(Secret::new("123:SECRETTOKEN"));
        s.telegram.api_url = fake.url.clone();
    });
    let container = AppContainer::builder(&settings).build().await.expect("build the container");
    let module = container.module().clone();
    let db: Arc<dyn Db> = module.resolve();
    assert_eq!(db.backend(), "PostgreSQL");
    db.ping().await.unwrap();
    let store: Arc<dyn ResultStore> = module.resolve();
    store.ping().await.unwrap();
    assert_eq!(store.ttl(), settings.redis.result_ttl);
    let bot: Arc<dyn BotApi> = module.resolve();
    bot.send_message(9, "from the container").await.unwrap();
    assert_eq!(fake.sent_messages().len(), 1);
    assert!(fake.requests().iter().any(|r| r.method == "getme"), "the token is checked at start-up");
    // Singletons: the same Arc every time.
    assert!(Arc::ptr_eq(&db, &HasComponent::<dyn Db>::resolve(&*module)));

    drop(module);
    container.shutdown().await;
    assert!(db.pool().is_closed(), "shutdown closes the database pool");
}

#[tokio::test]
async fn container_build_names_the_failing_component() {
    let settings = settings_with(|s| {
        s.redis.url = SecretUrl::new("redis://127.0.0.1:1").into();
        s.redis.connect_timeout = Duration::from_secs(1);
    });
    let e = AppContainer::builder(&settings).build().await.expect_err("redis is unreachable");
    assert_eq!(e.component(), Component::Redis);
}

#[tokio::test]
async fn overridden_components_are_not_connected() {
    // Every URL points at a closed port: only the overrides make this work.
    let settings = settings_with(|s| {
        s.database.url = SecretUrl::new("postgres://x@127.0.0.1:1/x");
        s.redis.url = SecretUrl::new("redis://127.0.0.1:1").into();
        s.telegram.token = Some(Secret::new("1:x"));
        s.telegram.api_url = "http://127.0.0.1:1/".to_owned();
    });
    let bot = RecordingBot::new();
    let store = InMemoryResultStore::new();
    let container = AppContainer::builder(&settings)
        .with_db(SqlxDb::sqlite_in_memory().await.unwrap())
        .with_bot(bot.clone())
        .with_store(store.clone())
        .build()
        .await
        .expect("nothing to connect");
    let module = container.module();
    let resolved_bot: Arc<dyn BotApi> = module.resolve();
    resolved_bot.send_message(1, "recorded").await.unwrap();
    assert_eq!(bot.sent().len(), 1);
    assert_eq!(bot.sent()[0].text, "recorded");
    let resolved_store: Arc<dyn ResultStore> = module.resolve();
    resolved_store.put("id", &ResultRecord::new("t", TaskStatus::Queued, 0)).await.unwrap();
    assert_eq!(store.records()["id"].status, TaskStatus::Queued);
    let db: Arc<dyn Db> = module.resolve();
    assert_eq!(db.backend(), "SQLite");
    container.shutdown().await;
}

#[tokio::test]
async fn one_component_swapped_the_others_real() {
    require(Service::Redis);
    let settings = settings_with(|s| {
        s.redis.url = SecretUrl::new(REDIS_URL).into();
        s.redis.key_prefix = format!("{}:", unique("courier_swap"));
    });
    let bot = RecordingBot::new();
    let container = AppContainer::builder(&settings).with_bot(bot.clone()).build().await.unwrap();
    let store: Arc<dyn ResultStore> = container.module().resolve();
    store.ping().await.expect("the real Redis store");
    let resolved: Arc<dyn BotApi> = container.module().resolve();
    resolved.send_message(3, "x").await.unwrap();
    assert_eq!(bot.sent().len(), 1);
    container.shutdown().await;
}

#[tokio::test]
async fn mock_container_is_all_doubles() {
    let (module, mocks) = mock_container().await.unwrap();
    let bot: Arc<dyn BotApi> = module.resolve();
    mocks.bot.fail_next(BotError::RateLimited { retry_after: Duration::from_secs(1) });
    assert!(bot.send_message(1, "a").await.is_err());
    bot.send_message(1, "b").await.unwrap();
    assert_eq!(mocks.bot.sent().len(), 1);
    let db: Arc<dyn Db> = module.resolve();
    db.ping().await.unwrap();
}

/// Fifty callers asking a fresh shared connection at once open one, not
/// fifty (on a cluster each would be a connection to every node); with
/// nothing listening, they all get the error.
#[tokio::test]
async fn callers_of_a_shared_connection_open_it_once() {
    use di::redis_conn::{RedisClient, SharedConn};
    let redis = it::servers::PrivateRedis::redis();
    let client = redis::Client::open(redis.url()).unwrap();
    let clients = || async {
        let mut probe = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("clients").query_async(&mut probe).await.unwrap();
        let n: u32 = info.lines().find_map(|l| l.strip_prefix("connected_clients:")).unwrap().trim().parse().unwrap();
        n - 1
    };
    let before = clients().await;
    let shared = Arc::new(SharedConn::new(RedisClient::from(client.clone())));
    let opened = futures_util::future::join_all((0..50).map(|_| {
        let shared = shared.clone();
        async move { shared.get().await.is_ok() }
    }))
    .await;
    assert!(opened.iter().all(|ok| *ok), "every caller got the connection");
    assert_eq!(clients().await - before, 1, "one connection opened for fifty callers");

    let nowhere = SharedConn::new(RedisClient::from(redis::Client::open("redis://127.0.0.1:1").unwrap()));
    let failed = futures_util::future::join_all((0..50).map(|_| nowhere.get())).await;
    assert!(failed.iter().all(Result::is_err), "nothing listens there");
}
