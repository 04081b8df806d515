//! A headless Chromium driven through `chromedriver` (WebDriver), for tests
//! of web pages.
//!
//! [`Browser::start`] runs a `chromedriver` of its own on a free port, in a
//! process group of its own, and opens a session; dropping the `Browser`
//! ends the session and kills the group, so no Chromium outlives the test.
//! Debian's `chromium` and `chromium-driver` packages provide both
//! (`scripts/test.sh` installs them when `chromedriver` is missing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

const INSTALL: &str = "apt-get install -y chromium chromium-driver (scripts/test.sh installs them)";

/// How long [`Browser::text`], [`Browser::fill`] and [`Browser::click`] wait
/// for their element to appear.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// A `chromedriver` with one headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session, for anything the helpers do not cover.
    pub client: Client,
    /// Kept for its drop (declared after `client`, so dropped after it).
    _driver: Driver,
}

impl Browser {
    /// Starts `chromedriver` on a free port, waits (up to 10 s) until it
    /// answers ready, and opens a headless session (window 1280x900).
    /// Panics if `chromedriver` is not installed, saying how to install it.
    pub async fn start() -> Self {
        let mut driver = Driver::spawn();
        driver.wait_ready().await;
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    // A profile of ours, removed on drop (chromedriver's own
                    // temporary one would stay behind when the driver is killed).
                    format!("--user-data-dir={}", driver.dir.join("profile").display()),
                ]
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium ({e}); is chromium installed? {INSTALL}\n{}",
                    driver.log()
                )
            });
        driver.session = client.session_id().await.ok().flatten();
        Self { client, _driver: driver }
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the first element matching `css`, waiting up to 5 s for
    /// one to appear.
    pub async fn text(&self, css: &str) -> String {
        // A part the board refreshes in place may be replaced between the
        // find and the read: find it again.
        for _ in 0..STALE_RETRIES {
            match self.find(css).await.text().await {
                Err(e) if is_stale(&e) => continue,
                read => return read.unwrap_or_else(|e| panic!("the text of {css:?}: {e}")),
            }
        }
        panic!("the text of {css:?}: replaced {STALE_RETRIES} times in a row");
    }

    /// Types `value` into the first element matching `css` (cleared first),
    /// waiting up to 5 s for it to appear.
    pub async fn fill(&self, css: &str, value: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap_or_else(|e| panic!("clear {css:?}: {e}"));
        element.send_keys(value).await.unwrap_or_else(|e| panic!("type into {css:?}: {e}"));
    }

    /// Clicks the first element matching `css`, waiting up to 5 s for it to
    /// appear.
    pub async fn click(&self, css: &str) {
        for _ in 0..STALE_RETRIES {
            match self.find(css).await.click().await {
                Err(e) if is_stale(&e) => continue,
                clicked => return clicked.map(drop).unwrap_or_else(|e| panic!("click {css:?}: {e}")),
            }
        }
        panic!("click {css:?}: replaced {STALE_RETRIES} times in a row");
    }

    /// Polls until the text of the first element matching `css` contains
    /// `needle`, and returns that text; panics after `timeout` with the last
    /// text seen and the page source's first 2,000 characters.
    pub async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        self.wait_until_text(css, &format!("{needle:?}"), timeout, |text| text.contains(needle)).await
    }

    /// Waits until the text of `css` satisfies `wanted` (described as
    /// `what` if it never does: the test fails with the page's source).
    pub async fn wait_until_text(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if wanted(&text) {
                    return text;
                }
                last = Some(text);
            }
            if Instant::now() >= deadline {
                let seen = last.map_or_else(|| "no such element".to_owned(), |text| format!("{text:?}"));
                panic!(
                    "{css:?} did not show {what} within {timeout:?} (last: {seen}); page source:\n{}",
                    self.source_start().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the window as `<target dir>/board-screenshots/<name>.png`,
    /// prints its path on stderr and returns it.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = target_dir().join("board-screenshots");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The first element matching `css`, waiting up to 5 s for one.
    async fn find(&self, css: &str) -> Element {
        match self.client.wait().at_most(FIND_TIMEOUT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!(
                "no element matches {css:?} after {FIND_TIMEOUT:?} ({e}); page source:\n{}",
                self.source_start().await
            ),
        }
    }

    /// The page source's first 2,000 characters, for failure messages.
    async fn source_start(&self) -> String {
        match self.client.source().await {
            Ok(source) => source.chars().take(2000).collect(),
            Err(e) => format!("(unavailable: {e})"),
        }
    }
}

/// The `chromedriver` process, leader of a process group of its own (the
/// Chromium processes it starts join it), the port it listens on, the
/// session it serves, and a folder with Chromium's profile and the driver's
/// log. On drop (also when start-up fails) it ends the session, kills the
/// group and removes the folder.
#[derive(Debug)]
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
    dir: PathBuf,
}

impl Driver {
    fn spawn() -> Self {
        let program = on_path("chromedriver").unwrap_or_else(|| panic!("chromedriver is not installed: {INSTALL}"));
        let dir = std::env::temp_dir().join(crate::unique("courier_browser"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("create the chromedriver log");
        let port = crate::servers::free_port();
        let spawned = Command::new(&program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the chromedriver log"))
            .stderr(log)
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{} did not start: {e}", program.display());
            }
        };
        Self { child, port, session: None, dir }
    }

    /// Waits (up to 10 s) until `GET /status` says it is ready.
    async fn wait_ready(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let port = self.port;
            let answer = tokio::task::spawn_blocking(move || request(port, "GET", "/status")).await.ok().flatten();
            let ready = answer.is_some_and(|body| {
                serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|json| json["value"]["ready"] == serde_json::Value::Bool(true))
            });
            if ready {
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver exited during start-up ({exit}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer ready on {addr} within 10 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The session first, so Chromium exits cleanly (a blocking request of
        // our own: the runtime fantoccini's client needs may be shutting down),
        // then the whole group: the driver and any Chromium process left.
        if let Some(session) = &self.session {
            let _ = request(self.port, "DELETE", &format!("/session/{session}"));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain HTTP/1.1 request to the driver on `port`: the body of a 200
/// answer; `None` otherwise, or after 5 s. Not `crate::http_get`: chromedriver
/// refuses a `Host` other than a local one without closing the connection,
/// and keeps it open after its answer even when asked to close it, so the
/// body is read by its `Content-Length`.
fn request(port: u16, method: &str, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let ok = line.split_whitespace().nth(1) == Some("200");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    ok.then(|| String::from_utf8_lossy(&body).into_owned())
}

/// `program` in a folder of `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|file| file.is_file())
}

/// The cargo target folder: `CARGO_TARGET_DIR` if set (and absolute), else
/// found from the test executable, `<target>/<profile>/deps/<exe>` (as
/// `process::binary` finds the binaries).
/// Finds of an element a refresh replaced, before giving up.
const STALE_RETRIES: usize = 5;

/// Whether WebDriver says the element was replaced (a live part refreshed).
fn is_stale(err: &fantoccini::error::CmdError) -> bool {
    err.to_string().to_ascii_lowercase().contains("stale element")
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).filter(|dir| dir.is_absolute()) {
        return dir;
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).and_then(Path::parent).expect("the target folder").to_owned()
}
