//! Private `redis-server` and `nats-server` processes on free loopback
//! ports, for tests that must stop or restart a server (never the shared one).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; taken by the caller soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private Redis, stopped on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port (no persistence).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts it with extra arguments (`--requirepass`, say).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut redis = Self { port: free_port(), extra: extra.iter().map(|s| (*s).to_owned()).collect(), child: None };
        redis.restart();
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        wait_listening(self.port, "redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private NATS with JetStream (file storage in a temp folder), stopped on drop.
#[derive(Debug)]
pub struct PrivateNats {
    /// Its port.
    pub port: u16,
    store: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts `nats-server -js` on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts it with extra arguments (`--user`/`--pass`, `--auth`).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = std::env::temp_dir().join(crate::unique("courier_nats"));
        std::fs::create_dir_all(&store).expect("nats store dir");
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut nats = Self { port: free_port(), store, extra, child: None };
        nats.restart();
        nats
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no chance to flush anything).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        self.child = Some(child);
        wait_listening(self.port, "nats-server");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
