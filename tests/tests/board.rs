//! Courier Board over plain HTTP: who may do what (sessions, CSRF tokens,
//! the login form's token, the password rule), the headers every answer
//! carries, the task index behind its search (secret fields masked, found
//! by argument value), each action (cancel, retry, replay all, discard,
//! campaign cancel, report) with its audit line, the live parts, the 429s
//! by lane, and that no page shows a setting's secret.

use std::time::Duration;

use it::PgSchema;
use it::process::{ChildProcess, command};
use it::scope::Scope;
use it::servers::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "board-pass-7Qx!";
const WAIT: Duration = Duration::from_secs(30);

/// An argument the index must never store.
mod with_secret {
    use di::prelude::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Args {
        pub chat_id: i64,
        pub token: String,
    }

    pub async fn run(_ctx: TaskContext, args: Args) -> TaskResult<i64> {
        Ok(args.chat_id)
    }

    register_task!(run: Args => i64, TaskOptions::new().secret(&["token"]));
}

/// One HTTP/1.1 answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The session cookie this answer sets (`name=value`).
    fn cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        Some(set.split(';').next()?.to_owned())
    }

    /// The CSRF token in the page's forms.
    fn csrf(&self) -> Option<String> {
        let at = self.body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        Some(self.body[at..].split('"').next()?.to_owned())
    }
}

async fn request(addr: &str, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Answer {
    request_with(addr, method, path, cookie, form, &[]).await
}

/// [`request`] with more headers; a `Host` among them replaces the address.
async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the board");
    let host = extra.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map_or(addr, |(_, v)| *v);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in extra.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    let body = form.unwrap_or_default();
    if form.is_some() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("an answer").unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

/// A login form: its pre-session cookie (`name=value`) and its token.
async fn login_form(addr: &str) -> (String, String) {
    let form = request(addr, "GET", "/login", None, None).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let set = form.header("set-cookie").unwrap_or_default().to_owned();
    assert!(set.starts_with("courier_login=") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    (form.cookie().unwrap(), form.csrf().expect("a token in the login form"))
}

fn board_env(scope: &Scope, schema: &PgSchema, addr: &str, password: Option<&str>) -> Vec<(String, String)> {
    let mut env = scope.env();
    env.push(("COURIER_DATABASE__URL".into(), schema.url.clone()));
    env.push(("COURIER_BOARD__ADDR".into(), addr.to_owned()));
    if let Some(password) = password {
        env.push(("COURIER_BOARD__PASSWORD".into(), password.to_owned()));
    }
    env
}

#[tokio::test]
async fn requests_without_a_session_or_a_csrf_token_are_refused() {
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = board_env(&scope, &schema, &addr, Some(PASSWORD));
    env.push(("COURIER_SCHEDULES__NIGHTLY__TASK".into(), "heartbeat".into()));
    env.push(("COURIER_SCHEDULES__NIGHTLY__CRON".into(), "0 3 * * *".into()));
    let mut board =
        tokio::task::spawn_blocking(move || ChildProcess::spawn("board", &env, "board ready")).await.unwrap();

    // No session: pages send to the login page, actions are refused.
    let page = request(&addr, "GET", "/", None, None).await;
    assert_eq!((page.status, page.header("location")), (303, Some("/login")), "{}", page.body);
    let action = request(&addr, "POST", "/schedules/x/pause", None, Some("csrf=guess")).await;
    assert_eq!(action.status, 403, "{}", action.body);
    // Every answer carries the standard headers.
    for answer in [&page, &action] {
        let csp = answer.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    }

    // The login form carries a token of its own, tied to a short-lived
    // pre-session cookie; a login POST without both is refused before the
    // password is looked at, even the right password.
    let right = format!("password={}", urlencode(PASSWORD));
    let bare = request(&addr, "POST", "/login", None, Some(&right)).await;
    assert_eq!(bare.status, 403, "no login form token: {}", bare.body);
    assert!(!bare.headers.iter().any(|(n, v)| n == "set-cookie" && v.starts_with("courier_board=")));
    let (form_cookie, form_token) = login_form(&addr).await;
    let no_cookie = request(&addr, "POST", "/login", None, Some(&format!("csrf={form_token}&{right}"))).await;
    assert_eq!(no_cookie.status, 403, "the token without its cookie: {}", no_cookie.body);
    let (other_cookie, _) = login_form(&addr).await;
    let mixed =
        request(&addr, "POST", "/login", Some(&other_cookie), Some(&format!("csrf={form_token}&{right}"))).await;
    assert_eq!(mixed.status, 403, "another form's cookie: {}", mixed.body);
    let cross = request_with(
        &addr,
        "POST",
        "/login",
        Some(&form_cookie),
        Some(&format!("csrf={form_token}&{right}")),
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(cross.status, 403, "another site: {}", cross.body);

    // A wrong password is refused, slowly; the right one opens a session.
    let wrong =
        request(&addr, "POST", "/login", Some(&form_cookie), Some(&format!("csrf={form_token}&password=nope"))).await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.headers.iter().any(|(n, v)| n == "set-cookie" && v.starts_with("courier_board=")));
    let login = request(&addr, "POST", "/login", Some(&form_cookie), Some(&format!("csrf={form_token}&{right}"))).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let set = login.header("set-cookie").unwrap().to_owned();
    assert!(set.starts_with("courier_board=") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = login.cookie().unwrap();

    // With the session: pages render, each with the session's token.
    let page = request(&addr, "GET", "/schedules", Some(&cookie), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf().expect("a CSRF token in the page's forms");
    // A POST without the token, or with another, is refused before it acts.
    for form in ["", "csrf=", "csrf=0123456789abcdef0123456789abcdef"] {
        let refused = request(&addr, "POST", "/logout", Some(&cookie), Some(form)).await;
        assert_eq!(refused.status, 403, "form {form:?}: {}", refused.body);
    }
    // Only GET and POST.
    let deleted = request(&addr, "DELETE", "/tasks/x", Some(&cookie), None).await;
    assert_eq!(deleted.status, 405);
    // With it, the action runs (an unknown schedule: 404, after the check).
    let unknown = request(&addr, "POST", "/schedules/nope/pause", Some(&cookie), Some(&format!("csrf={csrf}"))).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // Pause and resume a schedule: the page and the database say so.
    assert!(page.body.contains("nightly") && !page.body.contains("<em>paused</em>"), "{}", page.body);
    let form = format!("csrf={csrf}");
    let paused = request(&addr, "POST", "/schedules/nightly/pause", Some(&cookie), Some(&form)).await;
    assert_eq!((paused.status, paused.header("location")), (303, Some("/schedules?note=paused")));
    let listed = request(&addr, "GET", "/schedules", Some(&cookie), None).await;
    assert!(listed.body.contains("<em>paused</em>"), "{}", listed.body);
    let pool = di::sqlx::PgPool::connect(&schema.url).await.unwrap();
    let state: (bool,) = di::sqlx::query_as("SELECT paused <> 0 FROM courier_schedules WHERE name = 'nightly'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(state.0, "paused in the database");
    let resumed = request(&addr, "POST", "/schedules/nightly/resume", Some(&cookie), Some(&form)).await;
    assert_eq!(resumed.status, 303);
    let listed = request(&addr, "GET", "/schedules", Some(&cookie), None).await;
    assert!(!listed.body.contains("<em>paused</em>"), "{}", listed.body);
    let out = request(&addr, "POST", "/logout", Some(&cookie), Some(&format!("csrf={csrf}"))).await;
    assert_eq!(out.status, 303);
    // The session is over.
    let after = request(&addr, "GET", "/", Some(&cookie), None).await;
    assert_eq!(after.status, 303);

    let log = board.log();
    assert!(log.contains("courier::board::audit"), "audit lines:\n{log}");
    assert!(log.contains("missing or wrong CSRF token") && log.contains("wrong password"), "{log}");
    assert!(log.contains("wrong login form token"), "{log}");
    assert!(!log.contains(PASSWORD), "the password is never logged:\n{log}");
    assert!(!page.body.contains(PASSWORD));
    board.terminate(Duration::from_secs(5));
}

#[tokio::test]
async fn without_a_password_the_board_starts_only_on_loopback_and_asks_for_no_login() {
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    let wide = format!("0.0.0.0:{}", free_port());
    let env = board_env(&scope, &schema, &wide, None);
    let out = tokio::task::spawn_blocking(move || command("board").envs(env).output().unwrap()).await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("board.password") && said.contains("loopback"), "{said}");

    let addr = format!("127.0.0.1:{}", free_port());
    let env = board_env(&scope, &schema, &addr, None);
    let mut board =
        tokio::task::spawn_blocking(move || ChildProcess::spawn("board", &env, "board ready")).await.unwrap();
    let page = request(&addr, "GET", "/dead-letters", None, None).await;
    assert_eq!(page.status, 200, "no login on loopback without a password");
    // Still a session, for the CSRF token.
    assert!(page.cookie().is_some() && page.csrf().is_some());
    let refused = request(&addr, "POST", "/schedules/x/pause", page.cookie().as_deref(), Some("csrf=x")).await;
    assert_eq!(refused.status, 403);
    // The same page's form from another site's page is refused, token or not.
    let cookie = page.cookie().unwrap();
    let form = format!("csrf={}", page.csrf().unwrap());
    let origin = [("Origin", "http://evil.example")];
    let cross = request_with(&addr, "POST", "/schedules/x/pause", Some(&cookie), Some(&form), &origin).await;
    assert_eq!(cross.status, 403, "{}", cross.body);
    let own = format!("http://{addr}");
    let same = [("Origin", own.as_str())];
    let allowed = request_with(&addr, "POST", "/schedules/x/pause", Some(&cookie), Some(&form), &same).await;
    assert_eq!(allowed.status, 404, "past the checks, an unknown schedule: {}", allowed.body);
    // DNS rebinding: a name that resolves to 127.0.0.1 is not this board's name.
    let rebound = request_with(&addr, "GET", "/", None, None, &[("Host", "evil.example")]).await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert!(rebound.cookie().is_none() && rebound.csrf().is_none());
    let log = board.log();
    assert!(log.contains("Host is not a loopback name") && log.contains("from another site"), "{log}");
    board.terminate(Duration::from_secs(5));
}

#[tokio::test]
async fn finished_tasks_are_indexed_searchable_by_argument_with_secrets_masked() {
    let schema = PgSchema::create().await;
    index_round_trip(&schema.url).await;
}

/// The same on SQLite, the default database (a file: the worker's pool and
/// the test's must see one database).
#[tokio::test]
async fn the_task_index_works_on_sqlite_too() {
    let file = std::env::temp_dir().join(format!("{}.db", it::unique("courier_index")));
    index_round_trip(&format!("sqlite://{}?mode=rwc", file.display())).await;
    let _ = std::fs::remove_file(&file);
}

async fn index_round_trip(url: &str) {
    let mut scope = Scope::new();
    scope.settings.database.url = settings::SecretUrl::new(url);
    scope.settings.database.max_connections = 4;
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let mut ids = Vec::new();
    for chat_id in [501, 502, 501] {
        let args = with_secret::Args { chat_id, token: "tok-SECRET-123".into() };
        let handle = producer.enqueue(with_secret::TASK, &args).await.unwrap();
        ids.push(handle.task_id);
    }
    for id in &ids {
        producer.wait(id, Duration::from_secs(30)).await.unwrap();
    }
    di::sqlx::any::install_default_drivers();
    let pool = di::sqlx::AnyPool::connect(url).await.unwrap();
    let query = courier::index::Query { key: Some(("chat_id".into(), "501".into())), limit: 10, ..Default::default() };
    let found = scope
        .eventually(Duration::from_secs(10), "two rows for chat 501", || async {
            let rows = courier::index::search(&pool, &query).await.unwrap();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    let mut found_ids: Vec<&str> = found.iter().map(|r| r.task_id.as_str()).collect();
    found_ids.sort_unstable();
    let mut expected = vec![ids[0].as_str(), ids[2].as_str()];
    expected.sort_unstable();
    assert_eq!(found_ids, expected);
    for row in &found {
        assert_eq!((row.task_name.as_str(), row.status.as_str()), ("with_secret", "success"));
        assert!(!row.arguments.contains("SECRET"), "masked: {}", row.arguments);
        assert!(row.arguments.contains(courier::index::MASK), "{}", row.arguments);
        assert_eq!(row.result.as_deref(), Some("501"));
    }
    let dump: Vec<(String,)> =
        di::sqlx::query_as("SELECT value FROM courier_task_keys").fetch_all(&pool).await.unwrap();
    assert!(dump.iter().all(|(v,)| !v.contains("SECRET")), "no secret among the searchable values");
    worker.stop().await.unwrap();
    // Retention: an hour keeps the three tasks and their keys; none deletes them.
    let counts = || async {
        let rows: (i64,) =
            di::sqlx::query_as("SELECT COUNT(*) FROM courier_task_index").fetch_one(&pool).await.unwrap();
        let keys: (i64,) = di::sqlx::query_as("SELECT COUNT(*) FROM courier_task_keys").fetch_one(&pool).await.unwrap();
        (rows.0, keys.0)
    };
    courier::index::prune(&pool, Duration::from_secs(3600)).await;
    assert_eq!(counts().await, (3, 3));
    courier::index::prune(&pool, Duration::ZERO).await;
    assert_eq!(counts().await, (0, 0));
}

/// A task indexed again (a record written anew: a run by the same id
/// after `reset_to_queued`) replaces its row: on PostgreSQL the writer's
/// plain insert meets the row already there and the batch is written again as
/// upserts; a search finds it once, by the keys of its last row only (key
/// rows of an earlier finish time stay until the retention, unjoined), and
/// pruning deletes its rows and every key row. A NUL in an error does not cost the
/// batch, and what COPY reads as syntax (tab, newline, backslash, `\N`)
/// comes back as written.
#[tokio::test]
async fn a_task_indexed_again_replaces_its_row_on_postgres() {
    let schema = PgSchema::create().await;
    let mut settings = it::test_settings();
    settings.database.url = settings::SecretUrl::new(&schema.url);
    di::sqlx::any::install_default_drivers();
    let pool = di::sqlx::AnyPool::connect(&schema.url).await.unwrap();
    courier::campaign::migrator().run(&pool).await.unwrap();
    let registry = di::Registry::from_inventory().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (indexer, writer) = courier::index::Indexer::start(
        pool.clone(),
        courier::index::writer_pool(&settings.database),
        &registry,
        &settings.index,
        di::DecodeLimits::from_settings(&settings),
        "test-worker".into(),
        stop.clone(),
    );
    assert!(courier::index::writer_pool(&settings.database).is_some(), "the PostgreSQL path");
    let args = with_secret::Args { chat_id: 777, token: "t".into() };
    let envelope = with_secret::TASK.envelope(&args).unwrap();
    let payload = bytes::Bytes::from(envelope.to_msgpack().unwrap());
    let id = envelope.task_id.clone();
    let status = |pool: di::sqlx::AnyPool, id: String| async move {
        di::sqlx::query_as::<_, (String, String)>(
            "SELECT status, COALESCE(error, '') FROM courier_task_index WHERE task_id = $1",
        )
        .bind(id)
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let mut failed = di::ResultRecord::failure(
        "with_secret",
        di::TaskStatus::Failed,
        1,
        di::TaskError::new("Boom", "a NUL \0 in the message;\ta tab\r\na line\\N"),
    );
    failed.labels.insert("batch".into(), "x".into());
    failed.labels.insert("odd".into(), "\\N\t\\".into());
    // Without the arguments (a message the executor did not decode): read from the payload.
    indexer.add(id.clone(), &payload, failed, None);
    let scope = Scope::new();
    let first = scope.eventually(Duration::from_secs(10), "the first row", || status(pool.clone(), id.clone())).await;
    assert_eq!(first.0, "failed");
    assert_eq!(first.1, "Boom: a NUL  in the message;\ta tab\r\na line\\N", "{first:?}");
    let odd: Vec<(String,)> =
        di::sqlx::query_as("SELECT value FROM courier_task_keys WHERE task_id = $1 AND name = 'label.odd'")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(odd, vec![("\\N\t\\".to_owned(),)], "a key's value as written");
    let mut succeeded = di::ResultRecord::new("with_secret", di::TaskStatus::Success, 2);
    succeeded.labels.insert("batch".into(), "x".into());
    succeeded.labels.insert("odd".into(), "\\N\t\\".into());
    succeeded.finished_at = Some(di::unix_now());
    // With the arguments the executor decoded.
    let arguments = di::Envelope::arguments_from_msgpack(&payload, &di::DecodeLimits::DEFAULT).unwrap();
    indexer.add(id.clone(), &payload, succeeded, Some(arguments));
    scope
        .eventually(Duration::from_secs(10), "the row replaced", || async {
            (status(pool.clone(), id.clone()).await?.0 == "success").then_some(())
        })
        .await;
    // Two records of one task queued together land in one batch: the last wins.
    let mut again =
        di::ResultRecord::failure("with_secret", di::TaskStatus::Failed, 3, di::TaskError::new("Boom", "3"));
    again.labels.insert("batch".into(), "x".into());
    indexer.add(id.clone(), &payload, again, None);
    let mut last = di::ResultRecord::new("with_secret", di::TaskStatus::Cancelled, 4);
    last.finished_at = Some(di::unix_now());
    indexer.add(id.clone(), &payload, last, None);
    scope
        .eventually(Duration::from_secs(10), "the last record of the batch", || async {
            (status(pool.clone(), id.clone()).await?.0 == "cancelled").then_some(())
        })
        .await;
    // The task's keys are its last row's: the arguments' chat_id (the last
    // record has no labels). Key rows of the earlier rows stay until the
    // retention ends them, and are not found: a search by a label of the
    // earlier rows finds nothing, and one by chat_id finds the task once.
    let keys: Vec<(String, String)> = di::sqlx::query_as(
        "SELECT k.name, k.value FROM courier_task_keys k JOIN courier_task_index i \
         ON i.task_id = k.task_id AND i.finished_at = k.finished_at WHERE k.task_id = $1 ORDER BY k.name",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(keys, vec![("chat_id".into(), "777".into())]);
    let search = |key: (&str, &str)| courier::index::Query {
        key: Some((key.0.to_owned(), key.1.to_owned())),
        limit: 10,
        ..Default::default()
    };
    let found = courier::index::search(&pool, &search(("chat_id", "777"))).await.unwrap();
    assert_eq!(
        found.iter().map(|f| (f.task_id.as_str(), f.status.as_str())).collect::<Vec<_>>(),
        [(id.as_str(), "cancelled")]
    );
    let found = courier::index::search(&pool, &search(("label.batch", "x"))).await.unwrap();
    assert!(found.is_empty(), "{found:?}");
    // Pruning by each table's unique index: a retention of an hour keeps
    // everything, none deletes the row and every key row, stale ones too.
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            di::sqlx::query_as::<_, (i64,)>(di::sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap().0
        }
    };
    let before = (count("courier_task_index").await, count("courier_task_keys").await);
    assert_eq!(before.0, 1);
    assert!(before.1 >= 3, "the stale key rows are there to prune: {before:?}");
    courier::index::prune(&pool, Duration::from_secs(3600)).await;
    assert_eq!((count("courier_task_index").await, count("courier_task_keys").await), before);
    courier::index::prune(&pool, Duration::ZERO).await;
    assert_eq!((count("courier_task_index").await, count("courier_task_keys").await), (0, 0));
    stop.cancel();
    writer.await.unwrap();
    assert_eq!(indexer.dropped(), 0);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A board process without a password (loopback) over `env`.
async fn start_board(env: Vec<(String, String)>) -> ChildProcess {
    tokio::task::spawn_blocking(move || ChildProcess::spawn("board", &env, "board ready")).await.unwrap()
}

/// A password-less board's session: its cookie and its CSRF token.
async fn local_session(addr: &str) -> (String, String) {
    let page = request(addr, "GET", "/dead-letters", None, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    (page.cookie().expect("a session cookie"), page.csrf().expect("a CSRF token"))
}

/// The audit lines of a board's log.
fn audit_lines(board: &ChildProcess) -> Vec<String> {
    board.log().lines().filter(|l| l.contains("courier::board::audit")).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_flood_page_counts_429s_by_lane_over_the_workers_alive() {
    use redis::AsyncCommands;
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    // Two workers' presence records, as workers write them (presence.rs).
    let prefix = scope.settings.redis.key_prefix.clone();
    let mut conn = redis::Client::open(it::REDIS_URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let now_ms = (di::unix_now() * 1000.0) as i64;
    for (name, rate_limited) in
        [("w-one:1", [("bulk", 5_u64), ("transactional", 2)]), ("w-two:2", [("bulk", 7), ("paid", 1)])]
    {
        let info = courier::worker::presence::WorkerInfo {
            name: name.into(),
            version: "test".into(),
            in_flight: 0,
            concurrency: 1,
            rate_limited: rate_limited.iter().map(|(lane, n)| ((*lane).to_owned(), *n)).collect(),
            started_at: now_ms / 1000,
        };
        let _: () = conn.zadd(format!("{prefix}courier:{{workers}}"), name, now_ms + 60_000).await.unwrap();
        let _: () = conn
            .hset(format!("{prefix}courier:{{workers}}:info"), name, serde_json::to_string(&info).unwrap())
            .await
            .unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board = start_board(board_env(&scope, &schema, &addr, None)).await;
    let page = request(&addr, "GET", "/flood", None, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"rate-limited-by-lane\""), "{}", page.body);
    for (lane, n) in [("transactional", 2), ("interactive", 0), ("bulk", 12), ("paid", 1)] {
        let row = format!("<tr data-lane=\"{lane}\"><td>{lane}</td><td class=\"n\">{n}</td></tr>");
        assert!(page.body.contains(&row), "{row} in {}", page.body);
    }
    assert!(page.body.contains("to the workers alive (2)"), "{}", page.body);
    board.terminate(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_shows_its_progress_live_and_cancel_and_retry_work() {
    let mut scope = Scope::new();
    let schema = PgSchema::create().await;
    scope.settings.database.url = settings::SecretUrl::new(&schema.url);
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board = start_board(board_env(&scope, &schema, &addr, None)).await;
    let (cookie, csrf) = local_session(&addr).await;
    let form = format!("csrf={csrf}");

    // A long task writes its progress; its page shows it, and asks for it again.
    let long = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 60_000 }).await.unwrap().task_id;
    let path = format!("/tasks/{long}");
    let page = scope
        .eventually(WAIT, "the task page showing progress", || async {
            let page = request(&addr, "GET", &path, Some(&cookie), None).await;
            (page.status == 200 && page.body.contains("<progress")).then_some(page)
        })
        .await;
    assert!(page.body.contains(">running<"), "{}", page.body);
    assert!(page.body.contains("% slept "), "{}", page.body);
    let live = format!("data-refresh=\"/fragment/tasks/{long}\"");
    assert!(page.body.contains(&live), "an unfinished task's part refreshes: {}", page.body);
    // The fragment moves on with the task.
    let first = request(&addr, "GET", &format!("/fragment/tasks/{long}"), Some(&cookie), None).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("<progress") && !first.body.contains("data-final"), "{}", first.body);
    let caption = |body: &str| body.split("% slept ").nth(1).and_then(|r| r.split(" ms").next()).map(str::to_owned);
    let before = caption(&first.body).expect("a progress caption");
    scope
        .eventually(WAIT, "the fragment's progress moving on", || async {
            let next = request(&addr, "GET", &format!("/fragment/tasks/{long}"), Some(&cookie), None).await;
            (caption(&next.body).is_some_and(|c| c != before)).then_some(())
        })
        .await;

    // Cancel it from the board.
    let cancelled = request(&addr, "POST", &format!("{path}/cancel"), Some(&cookie), Some(&form)).await;
    let expected = format!("{path}?note=cancelled");
    let location = cancelled.header("location").map(percent_decode);
    assert_eq!((cancelled.status, location.as_deref()), (303, Some(expected.as_str())), "{}", cancelled.body);
    assert_eq!(producer.wait(&long, WAIT).await.unwrap().status, di::TaskStatus::Cancelled);
    let done = request(&addr, "GET", &format!("/fragment/tasks/{long}"), Some(&cookie), None).await;
    assert!(done.body.contains("data-final") && done.body.contains(">cancelled<"), "{}", done.body);
    let page = request(&addr, "GET", &path, Some(&cookie), None).await;
    assert!(!page.body.contains("data-refresh"), "a finished task's page stops: {}", page.body);

    // Retry a finished task: the same arguments again, as a new task.
    let short = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 1 }).await.unwrap().task_id;
    assert_eq!(producer.wait(&short, WAIT).await.unwrap().status, di::TaskStatus::Success);
    di::sqlx::any::install_default_drivers();
    let pool = di::sqlx::AnyPool::connect(&schema.url).await.unwrap();
    scope
        .eventually(WAIT, "the finished task indexed", || async {
            courier::index::get(&pool, &short).await.unwrap().map(drop)
        })
        .await;
    let retried = request(&addr, "POST", &format!("/tasks/{short}/retry"), Some(&cookie), Some(&form)).await;
    assert_eq!(retried.status, 303, "{}", retried.body);
    let location = percent_decode(retried.header("location").unwrap_or_default());
    let new_id = location
        .strip_prefix("/tasks/")
        .and_then(|rest| rest.strip_suffix("?note=retried"))
        .unwrap_or_else(|| panic!("sent to the new task's page: {location}"))
        .to_owned();
    assert!(new_id.starts_with(&format!("{short}.retry.")), "{new_id}");
    let record = producer.wait(&new_id, WAIT).await.unwrap();
    assert_eq!((record.status, record.task_name.as_str()), (di::TaskStatus::Success, "sleep"));
    // An unknown task cannot be retried (its arguments are unknown).
    let unknown = request(&addr, "POST", "/tasks/no-such-task/retry", Some(&cookie), Some(&form)).await;
    assert_eq!(unknown.status, 404);

    let audit = audit_lines(&board).join("\n");
    assert!(audit.contains("cancel task") && audit.contains(&long), "{audit}");
    assert!(audit.contains("retry task") && audit.contains(&format!("enqueued as {new_id}")), "{audit}");
    board.terminate(Duration::from_secs(5));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_by_filter_and_discarded_with_their_task_ids_audited() {
    let mut scope = Scope::new();
    let schema = PgSchema::create().await;
    scope.settings.database.url = settings::SecretUrl::new(&schema.url);
    let producer = scope.producer().await;
    // Three dead letters: two whose cause is gone (alpha), one to throw away (beta).
    let subject = scope.settings.nats.subject.clone();
    let mut ids = Vec::new();
    for reason in ["Fatal: alpha down", "Fatal: beta broken", "Fatal: alpha down"] {
        let id = it::unique("board-dl");
        let payload = di::Envelope::new(id.clone(), "noop", &tasks::noop::Args {}).unwrap().to_msgpack().unwrap();
        producer.publisher().dead_letter(payload.into(), reason, Some(&id), 3, &id, &subject).await.unwrap();
        ids.push(id);
    }
    let worker = scope.start_worker().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board = start_board(board_env(&scope, &schema, &addr, None)).await;
    let (cookie, csrf) = local_session(&addr).await;

    // Replay all that match "alpha": both run and succeed, beta stays.
    let replay =
        request(&addr, "POST", "/dead-letters/replay", Some(&cookie), Some(&format!("csrf={csrf}&reason=alpha"))).await;
    assert_eq!(
        (replay.status, replay.header("location")),
        (303, Some("/dead-letters?note=replayed-all&n=2")),
        "{}",
        replay.body
    );
    for id in [&ids[0], &ids[2]] {
        assert_eq!(producer.wait(id, WAIT).await.unwrap().status, di::TaskStatus::Success, "{id}");
    }
    let left = scope.dead_letters().await;
    assert_eq!(left.iter().map(|l| l.task_id.clone().unwrap_or_default()).collect::<Vec<_>>(), vec![ids[1].clone()]);

    // Discard beta by its number.
    let js = scope.jetstream().await;
    let listed = courier::broker::dead_letters::list(&js, &scope.settings.nats, &Default::default(), 10).await.unwrap();
    let sequence = listed.iter().find(|l| l.task_id.as_deref() == Some(ids[1].as_str())).unwrap().sequence;
    let page = request(&addr, "GET", "/dead-letters", Some(&cookie), None).await;
    assert!(page.body.contains(&format!("/dead-letters/{sequence}/discard")), "{}", page.body);
    let discard = request(
        &addr,
        "POST",
        &format!("/dead-letters/{sequence}/discard"),
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!((discard.status, discard.header("location")), (303, Some("/dead-letters?note=discarded")));
    assert!(scope.dead_letters().await.is_empty(), "discarded");
    let page = request(&addr, "GET", "/dead-letters", Some(&cookie), None).await;
    assert!(page.body.contains("id=\"no-dead-letters\""), "{}", page.body);

    // The audit lines name the tasks, not only the letters' numbers.
    let audit = audit_lines(&board);
    let replayed = audit.iter().find(|l| l.contains("replay dead letters")).expect("a replay-all audit line");
    assert!(replayed.contains(&ids[0]) && replayed.contains(&ids[2]) && !replayed.contains(&ids[1]), "{replayed}");
    assert!(replayed.contains("replayed 2"), "{replayed}");
    let discarded = audit.iter().find(|l| l.contains("discard dead letter")).expect("a discard audit line");
    assert!(discarded.contains(&format!("#{sequence}")) && discarded.contains(&ids[1]), "{discarded}");
    board.terminate(Duration::from_secs(5));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_campaign_is_shown_live_cancelled_and_its_report_downloaded() {
    let mut scope = Scope::new();
    let schema = PgSchema::create().await;
    scope.settings.database.url = settings::SecretUrl::new(&schema.url);
    // A running campaign of three recipients, not fanned out: nothing sends.
    let campaigns = courier::campaign::Campaigns::connect(&scope.settings).await.unwrap();
    let id = it::unique("board_campaign").to_ascii_lowercase();
    let spec = courier::campaign::CampaignSpec {
        id: Some(id.clone()),
        task_name: "send_message".into(),
        kwargs: serde_json::json!({ "text": "news" }).as_object().unwrap().clone(),
        lane: di::Lane::Bulk,
        follow_up: None,
    };
    campaigns.create(spec, &courier::campaign::recipients::Recipients::List(vec![901, 902, 903])).await.unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board = start_board(board_env(&scope, &schema, &addr, None)).await;
    let (cookie, csrf) = local_session(&addr).await;

    let page = request(&addr, "GET", "/campaigns", Some(&cookie), None).await;
    assert!(page.body.contains("data-refresh=\"/fragment/campaigns\""), "the list refreshes: {}", page.body);
    let live = request(&addr, "GET", "/fragment/campaigns", Some(&cookie), None).await;
    assert_eq!(live.status, 200);
    let row = format!("id=\"campaign-{id}\"");
    assert!(
        live.body.contains(&row) && live.body.contains("<progress") && live.body.contains("0/3 done: sent 0"),
        "{}",
        live.body
    );
    assert!(!live.body.contains("<html"), "a fragment, not a page");

    let cancel =
        request(&addr, "POST", &format!("/campaigns/{id}/cancel"), Some(&cookie), Some(&format!("csrf={csrf}"))).await;
    assert_eq!(
        (cancel.status, cancel.header("location")),
        (303, Some("/campaigns?note=campaign-cancelled&n=3")),
        "{}",
        cancel.body
    );
    let (campaign, _) = campaigns.status(&id).await.unwrap();
    assert_eq!(campaign.status.name(), "cancelled");
    let live = request(&addr, "GET", "/fragment/campaigns", Some(&cookie), None).await;
    assert!(live.body.contains("<td class=\"status cancelled\">cancelled</td>"), "{}", live.body);
    assert!(live.body.contains("3/3 done: sent 0, dead 0, failed 0, cancelled 3"), "{}", live.body);

    let report = request(&addr, "GET", &format!("/campaigns/{id}/report.csv"), Some(&cookie), None).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(report.header("content-type").unwrap_or_default().starts_with("text/csv"));
    assert_eq!(
        report.header("content-disposition"),
        Some(format!("attachment; filename=\"campaign-{id}.csv\"").as_str())
    );
    let lines: Vec<&str> = report.body.lines().collect();
    assert_eq!(lines.first(), Some(&"seq,chat_id,status,message_id,reason"), "{}", report.body);
    let rows: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> =
        ["901", "902", "903"].iter().map(|c| ((*c).to_owned(), "cancelled".to_owned())).collect();
    assert_eq!(rows, expected, "{}", report.body);
    let missing = request(&addr, "GET", "/campaigns/no-such-campaign/report.csv", Some(&cookie), None).await;
    assert_eq!(missing.status, 404);

    let audit = audit_lines(&board).join("\n");
    assert!(
        audit.contains("cancel campaign") && audit.contains("download campaign report") && audit.contains(&id),
        "{audit}"
    );
    board.terminate(Duration::from_secs(5));
}

#[tokio::test]
async fn no_page_renders_the_telegram_token_or_the_database_password() {
    const TOKEN: &str = "123456:TOKEN-never-SHOWN-9f3k";
    const DB_PASSWORD: &str = "dbpass-never-SHOWN-q7";
    let scope = Scope::new();
    let schema = PgSchema::create().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = board_env(&scope, &schema, &addr, Some(PASSWORD));
    // The local PostgreSQL trusts loopback: the password is carried, not checked.
    let with_password = schema.url.replacen("postgres://postgres@", &format!("postgres://postgres:{DB_PASSWORD}@"), 1);
    assert_ne!(with_password, schema.url);
    env.retain(|(k, _)| k != "COURIER_DATABASE__URL");
    env.push(("COURIER_DATABASE__URL".into(), with_password));
    env.push(("COURIER_TELEGRAM__TOKEN".into(), TOKEN.into()));
    // No Bot API there: the flood page's failure is rendered too.
    env.push(("COURIER_TELEGRAM__API_URL".into(), format!("http://127.0.0.1:{}", free_port())));
    let mut board = start_board(env).await;
    // A queued task, so a task page has something to show.
    let producer = scope.producer().await;
    let queued = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 1 }).await.unwrap().task_id;
    let (form_cookie, token) = login_form(&addr).await;
    let login = request(
        &addr,
        "POST",
        "/login",
        Some(&form_cookie),
        Some(&format!("csrf={token}&password={}", urlencode(PASSWORD))),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login.cookie().unwrap();
    let task_page = format!("/tasks/{queued}");
    let pages = [
        "/",
        "/fragment/overview",
        "/tasks",
        "/tasks?key=chat_id%3D1",
        task_page.as_str(),
        "/tasks/no-such-task",
        "/dead-letters",
        "/campaigns",
        "/schedules",
        "/flood",
        "/login",
    ];
    for path in pages {
        let page = request(&addr, "GET", path, Some(&cookie), None).await;
        assert!(matches!(page.status, 200 | 404), "{path}: {} {}", page.status, page.body);
        for secret in [TOKEN, "TOKEN-never-SHOWN", DB_PASSWORD] {
            assert!(!page.body.contains(secret), "{path} shows {secret}: {}", page.body);
            assert!(!page.headers.iter().any(|(_, v)| v.contains(secret)), "{path}'s headers");
        }
    }
    let flood = request(&addr, "GET", "/flood", Some(&cookie), None).await;
    assert!(flood.body.contains("No flood-control state"), "the failure is rendered: {}", flood.body);
    let task = request(&addr, "GET", &task_page, Some(&cookie), None).await;
    assert!(task.body.contains(&queued), "{}", task.body);
    let log = board.log();
    for secret in ["TOKEN-never-SHOWN", DB_PASSWORD, PASSWORD] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }
    board.terminate(Duration::from_secs(5));
}

/// `%XX` sequences decoded (the board percent-encodes task ids in paths).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tasks_are_found_by_status_task_and_label_from_their_records() {
    // A Redis of its own: the walk reads every key (SCAN), and the shared
    // one may hold hundreds of thousands from other tests and benchmarks,
    // more than the walk's 2 s bound gets through.
    let redis = it::servers::PrivateRedis::redis();
    let mut scope = Scope::new();
    scope.settings.redis.url = settings::SecretUrl::new(redis.url()).into();
    let schema = PgSchema::create().await;
    let producer = scope.producer().await;
    // No worker: these stay queued, or scheduled.
    let plain = producer.enqueue(tasks::sleep::TASK, &tasks::sleep::Args { ms: 1 }).await.unwrap().task_id;
    let mut envelope = tasks::sleep::TASK.envelope(&tasks::sleep::Args { ms: 2 }).unwrap();
    envelope.labels.insert("batch".into(), "b7".into());
    producer.enqueue_envelope(&envelope, None).await.unwrap();
    let labelled = envelope.task_id.clone();
    let other = producer.enqueue(tasks::noop::TASK, &tasks::noop::Args {}).await.unwrap().task_id;
    let later = producer
        .enqueue_in(tasks::sleep::TASK, &tasks::sleep::Args { ms: 3 }, Duration::from_secs(3600))
        .await
        .unwrap()
        .task_id;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut board = start_board(board_env(&scope, &schema, &addr, None)).await;
    let (cookie, _) = local_session(&addr).await;
    let search = |query: &'static str| {
        let (addr, cookie) = (addr.clone(), cookie.clone());
        async move {
            let page = request(&addr, "GET", &format!("/tasks?{query}"), Some(&cookie), None).await;
            assert_eq!(page.status, 200, "{query}: {}", page.body);
            page.body
        }
    };
    let listed = |body: &str, id: &str| body.contains(&format!(">{id}</a>"));

    let form = search("").await;
    assert!(form.contains("<option value=\"queued\">") && form.contains("<option value=\"retrying\">"), "{form}");

    let queued = search("status=queued").await;
    assert!(queued.contains("id=\"scan-note\"") && queued.contains("Read all 4 task records"), "{queued}");
    assert!(listed(&queued, &plain) && listed(&queued, &labelled) && listed(&queued, &other), "{queued}");
    assert!(!listed(&queued, &later), "the delayed task is scheduled, not queued: {queued}");
    let by_task = search("status=queued&name=noop").await;
    assert!(listed(&by_task, &other) && !listed(&by_task, &plain), "{by_task}");
    let by_label = search("status=queued&key=label.batch%3Db7").await;
    assert!(listed(&by_label, &labelled) && !listed(&by_label, &plain), "{by_label}");
    let scheduled = search("status=scheduled").await;
    assert!(listed(&scheduled, &later) && !listed(&scheduled, &plain), "{scheduled}");
    // Arguments are not in the records: said, not silently empty.
    let by_argument = search("status=queued&key=chat_id%3D1").await;
    assert!(by_argument.contains("found by task and label only"), "{by_argument}");
    assert!(!by_argument.contains("id=\"results\""), "{by_argument}");
    // A finished status still searches the index.
    let finished = search("status=success&name=sleep").await;
    assert!(finished.contains("No finished task matches") && !finished.contains("scan-note"), "{finished}");

    // An unfinished task's page says what is known, and that its arguments are not.
    let page = request(&addr, "GET", &format!("/tasks/{labelled}"), Some(&cookie), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(">queued<") && page.body.contains("b7"), "status and labels: {}", page.body);
    assert!(page.body.contains("Not known until it finishes"), "{}", page.body);
    board.terminate(Duration::from_secs(5));
}
