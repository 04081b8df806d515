//! `board_bench`: how fast the board answers with a large task index. Fills
//! `courier_task_index` (PostgreSQL) with `--rows` finished tasks spread over
//! `--days` (each with a `chat_id` among `--chats`), serves the board in this
//! process, and times its pages over HTTP: the overview, a search by
//! `chat_id`, a search by task name, and a task's page. Prints p50, p95, p99
//! and the slowest per page. Not part of the production binaries.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use courier::board::Board;
use courier::cli::Exit;
use settings::Settings;
use sqlx::Row as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
// The board lists the registered tasks.
use tasks as _;

/// Times the board's pages over a task index of `--rows` rows.
#[derive(Debug, Parser)]
#[command(name = "board_bench", version)]
struct Cli {
    /// Rows the index should hold (added with ids `bench-<n>` when fewer).
    #[arg(long, default_value = "1000000")]
    rows: i64,
    /// Distinct chat ids among them.
    #[arg(long, default_value = "100000")]
    chats: i64,
    /// The rows' finish times are spread over this many days back from now.
    #[arg(long, default_value = "7")]
    days: i64,
    /// Requests timed per page (after 10 untimed).
    #[arg(long, default_value = "200")]
    requests: usize,
    /// Delete the `bench-` rows afterwards.
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    courier::telemetry::init_quiet();
    let cli = Cli::parse();
    let mut settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("board_bench: {err}");
            return Exit::Usage.into();
        }
    };
    if !settings.database.url.expose().starts_with("postgres") {
        eprintln!("board_bench: needs PostgreSQL (database.url; the development profile has it)");
        return Exit::Usage.into();
    }
    settings.board.addr = "127.0.0.1:0".into();
    settings.board.password = None;
    match run(&cli, settings).await {
        Ok(()) => Exit::Ok.into(),
        Err(err) => {
            eprintln!("board_bench: {err}");
            Exit::Failed.into()
        }
    }
}

async fn run(cli: &Cli, settings: Settings) -> Result<(), String> {
    let board = Board::connect(settings).await.map_err(|e| e.to_string())?;
    let pool = board.pool().clone();
    fill(&pool, cli).await?;
    let stop = CancellationToken::new();
    let addr = courier::board::serve(board, stop.clone()).await.map_err(|e| e.to_string())?.to_string();
    let cookie = get(&addr, "/", None).await?.1.ok_or("the board set no session cookie")?;
    let chat = |i: usize| (i as i64 * 7_919) % cli.chats;
    let pages: [(&str, PathOf<'_>); 6] = [
        ("overview /", Box::new(|_| "/".to_owned())),
        ("search by chat_id", Box::new(move |i| format!("/tasks?key=chat_id%3D{}", chat(i)))),
        ("search by task name", Box::new(|_| "/tasks?name=send_message".to_owned())),
        // The slow cases: 2 % of rows match, and none does (every row read).
        ("failed tasks", Box::new(|_| "/tasks?status=failed".to_owned())),
        ("a name no task has", Box::new(|_| "/tasks?name=absent".to_owned())),
        ("task page", Box::new(|i| format!("/tasks/bench-{}", 1 + (i as i64 * 104_729) % 1_000_000))),
    ];
    println!("board pages over {} indexed tasks ({} timed requests each, one at a time):", cli.rows, cli.requests);
    println!("{:<22} {:>9} {:>9} {:>9} {:>9}", "page", "p50 ms", "p95 ms", "p99 ms", "max ms");
    for (name, path) in &pages {
        for i in 0..10 {
            get(&addr, &path(i), Some(&cookie)).await?;
        }
        let mut took = Vec::with_capacity(cli.requests);
        for i in 0..cli.requests {
            let started = Instant::now();
            let (status, _, body) = get(&addr, &path(i + 10), Some(&cookie)).await?;
            took.push(started.elapsed());
            if status != 200 || body.contains("unavailable") {
                return Err(format!("{name}: status {status}: {}", body.chars().take(300).collect::<String>()));
            }
        }
        took.sort_unstable();
        let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        println!("{name:<22} {:>9} {:>9} {:>9} {:>9}", ms(at(0.5)), ms(at(0.95)), ms(at(0.99)), ms(at(1.0)));
    }
    stop.cancel();
    if cli.cleanup {
        for sql in [
            "DELETE FROM courier_task_keys WHERE task_id LIKE 'bench-%'",
            "DELETE FROM courier_task_index WHERE task_id LIKE 'bench-%'",
        ] {
            sqlx::query(sql).execute(&pool).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The path of a page's `i`-th request.
type PathOf<'a> = Box<dyn Fn(usize) -> String + 'a>;

/// Adds `bench-<n>` rows up to `--rows`, in one statement per million.
async fn fill(pool: &sqlx::AnyPool, cli: &Cli) -> Result<(), String> {
    let have: i64 = sqlx::query("SELECT COUNT(*) FROM courier_task_index WHERE task_id LIKE 'bench-%'")
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| e.to_string())?;
    if have >= cli.rows {
        return Ok(());
    }
    let started = Instant::now();
    let now = (di::unix_now() * 1000.0) as i64;
    let span = cli.days.max(1) * 86_400_000;
    let mut from = have + 1;
    while from <= cli.rows {
        let to = (from + 999_999).min(cli.rows);
        // Generated rows: every value is computed by the server from the bound numbers.
        let index = "INSERT INTO courier_task_index (task_id, task_name, status, attempt, labels, arguments, result, \
             error, started_at, finished_at, elapsed_ms, worker) \
             SELECT 'bench-' || i, CASE WHEN i % 10 = 0 THEN 'send_report' ELSE 'send_message' END, \
             CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'success' END, 1, '{\"lane\":\"transactional\"}', \
             '{\"args\":[],\"kwargs\":{\"chat_id\":' || (i % $3) || ',\"text\":\"hello\"}}', '{\"ok\":true}', NULL, \
             $1 - (i * $4 / $5) - 5, $1 - (i * $4 / $5), 5, 'bench:1' \
             FROM generate_series(CAST($6 AS BIGINT), CAST($2 AS BIGINT)) AS i ON CONFLICT DO NOTHING";
        let keys = "INSERT INTO courier_task_keys (name, value, task_id, finished_at) \
             SELECT 'chat_id', CAST(i % $3 AS TEXT), 'bench-' || i, $1 - (i * $4 / $5) \
             FROM generate_series(CAST($6 AS BIGINT), CAST($2 AS BIGINT)) AS i ON CONFLICT DO NOTHING";
        for sql in [index, keys] {
            sqlx::query(sql)
                .bind(now)
                .bind(to)
                .bind(cli.chats.max(1))
                .bind(span)
                .bind(cli.rows.max(1))
                .bind(from)
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
        }
        eprintln!("board_bench: {to} of {} rows", cli.rows);
        from = to + 1;
    }
    for sql in ["ANALYZE courier_task_index", "ANALYZE courier_task_keys"] {
        sqlx::query(sql).execute(pool).await.map_err(|e| e.to_string())?;
    }
    eprintln!("board_bench: filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One GET over a new connection: (status, session cookie set, body).
async fn get(addr: &str, path: &str, cookie: Option<&str>) -> Result<(u16, Option<String>, String), String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let set =
        head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).and_then(|v| v.split(';').next()).map(str::to_owned);
    Ok((status, set, body.to_owned()))
}
