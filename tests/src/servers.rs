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

/// A server process on a port of its own that can be killed and started
/// again with the same arguments; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    /// Its port.
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl ServerProcess {
    fn start(program: &'static str, port: u16, args: Vec<String>) -> Self {
        let mut server = Self { port, program, args, child: None };
        server.restart();
        server
    }

    /// Kills it (SIGKILL, as a crash would: nothing is flushed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same arguments, and waits
    /// until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} must be installed: {e}", self.program));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "{} did not start answering on {}", self.program, self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it accepts a connection and, for a Redis without TLS, answers
    /// `PING` (a connection accepted during start-up can still be reset).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let plain_redis = self.program == "redis-server" && !self.args.iter().any(|a| a == "--tls-port");
        if !plain_redis {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        // `+PONG`, or `-NOAUTH` from one that wants a password: either way it answers.
        let mut answer = [0_u8; 1];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && matches!(answer[0], b'+' | b'-')
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis (no persistence).
pub type PrivateRedis = ServerProcess;

impl ServerProcess {
    /// A private `redis-server` on a free port.
    pub fn redis() -> Self {
        Self::redis_with(&[])
    }

    /// A private `redis-server` with extra arguments (`--requirepass`, ACL users).
    pub fn redis_with(extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .map(String::from)
                .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::start("redis-server", port, args)
    }

    /// A private `redis-server` that keeps every write on disk (append-only
    /// file, fsync always), so a `kill -9` and restart loses nothing; its
    /// folder is removed on drop.
    pub fn redis_persistent() -> PersistentRedis {
        let dir = std::env::temp_dir().join(crate::unique("courier_redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let dir_arg = dir.display().to_string();
        let server = Self::redis_with(&["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir_arg]);
        PersistentRedis { server, dir }
    }

    /// A private `redis-server` that speaks only TLS, with this certificate.
    pub fn redis_tls(cert: &str, key: &str) -> Self {
        let port = free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        Self::start("redis-server", port, args.map(String::from).to_vec())
    }

    /// Its URL as `redis://` (or `nats://` for a NATS server).
    pub fn url(&self) -> String {
        let scheme = if self.program == "nats-server" { "nats" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

/// A private NATS with JetStream, file storage in a temp folder removed on drop.
#[derive(Debug)]
pub struct PrivateNats {
    server: ServerProcess,
    store: PathBuf,
}

impl std::ops::Deref for PrivateNats {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl std::ops::DerefMut for PrivateNats {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.server
    }
}

impl PrivateNats {
    /// `nats-server -js` on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra arguments (`--user`/`--pass`, `--auth`).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = std::env::temp_dir().join(crate::unique("courier_nats"));
        std::fs::create_dir_all(&store).expect("nats store dir");
        let port = free_port();
        let mut args: Vec<String> =
            ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"].map(String::from).to_vec();
        args.push(store.display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self { server: ServerProcess::start("nats-server", port, args), store }
    }
}

impl PrivateNats {
    /// Kills it and starts it again with empty storage, as a server whose
    /// streams were in memory would come back: every stream and consumer is gone.
    pub fn wipe_and_restart(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.store);
        std::fs::create_dir_all(&self.store).expect("nats store dir");
        self.server.restart();
    }
}

/// A private Redis whose data survives `kill -9` (see [`ServerProcess::redis_persistent`]).
#[derive(Debug)]
pub struct PersistentRedis {
    server: ServerProcess,
    dir: PathBuf,
}

impl std::ops::Deref for PersistentRedis {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl std::ops::DerefMut for PersistentRedis {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.server
    }
}

impl Drop for PersistentRedis {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Three private `nats-server` processes with routes between them and
/// JetStream (a cluster named `courier-it`), each on free ports with its
/// own storage; killed (and their storage removed) on drop.
#[derive(Debug)]
pub struct PrivateNatsCluster {
    /// The nodes, in order; `nodes[i]` is named `node-<i>`.
    pub nodes: Vec<ServerProcess>,
    /// Each node's monitoring port (`/healthz`).
    pub monitors: Vec<u16>,
    stores: Vec<PathBuf>,
}

impl PrivateNatsCluster {
    /// Starts three nodes and waits (up to 60 s) until each says JetStream is ready.
    pub fn start() -> Self {
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for n in 0..3 {
            let store = std::env::temp_dir().join(crate::unique("courier_nats_cluster"));
            std::fs::create_dir_all(&store).expect("nats store dir");
            let others: Vec<String> =
                (0..3).filter(|o| *o != n).map(|o| format!("nats://127.0.0.1:{}", routes[o])).collect();
            let args: Vec<String> = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                clients[n].to_string(),
                "-m".into(),
                monitors[n].to_string(),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
                "-n".into(),
                format!("node-{n}"),
                "--cluster_name".into(),
                "courier-it".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes[n]),
                "--routes".into(),
                others.join(","),
            ];
            nodes.push(ServerProcess::start("nats-server", clients[n], args));
            stores.push(store);
        }
        let cluster = Self { nodes, monitors, stores };
        for n in 0..3 {
            cluster.wait_ready(n);
        }
        cluster
    }

    /// Every node's URL, comma-separated (`nats.url`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Waits (up to 60 s) until node `n`'s `/healthz` answers 200 (JetStream on and current with
    /// the meta leader: a cluster answers JetStream requests only then).
    pub fn wait_ready(&self, n: usize) {
        use std::io::{Read, Write};
        wait_for(&format!("nats node {n} is not ready"), || {
            std::net::TcpStream::connect(("127.0.0.1", self.monitors[n])).ok().is_some_and(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
                let mut answer = String::new();
                s.write_all(request.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
            })
        });
    }
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        stop_and_remove(&mut self.nodes, &self.stores);
    }
}

/// Kills every node of a private cluster and removes their folders.
fn stop_and_remove(nodes: &mut [ServerProcess], dirs: &[PathBuf]) {
    for node in nodes {
        node.stop();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Asks `ready` every 200 ms until it says yes; panics saying `what` is not
/// so after 60 s (a liveness bound: a NATS node restarted under load took
/// over 30 s to catch its streams up on a slow two-core machine).
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private Redis Cluster on loopback: six `redis-server` processes,
/// three primaries with one replica each (`redis-cli --cluster create`),
/// a node timeout of 1 s so a killed primary's replica takes over within
/// a few seconds; killed (and their folders removed) on drop.
#[derive(Debug)]
pub struct PrivateRedisCluster {
    /// The nodes, in the order they were created.
    pub nodes: Vec<ServerProcess>,
    dirs: Vec<PathBuf>,
}

impl PrivateRedisCluster {
    /// Starts six nodes, forms the cluster, and waits (up to 60 s) until
    /// every node says `cluster_state:ok` and every replica is in sync.
    pub fn start() -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let dir = std::env::temp_dir().join(crate::unique("courier_redis_cluster"));
            std::fs::create_dir_all(&dir).expect("redis cluster dir");
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            nodes.push(ServerProcess::start("redis-server", port, args));
            dirs.push(dir);
        }
        let cluster = Self { nodes, dirs };
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (Debian's redis-tools)");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        cluster.wait_healthy(&[]);
        cluster
    }

    /// Every node's URL, comma-separated (`redis.url` with `redis.cluster`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(ServerProcess::url).collect::<Vec<_>>().join(",")
    }

    /// What `redis-cli -p <port> <args>` printed, if the node answered.
    pub fn cli(port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The index in `nodes` of the primary that serves `slot` now, asked of
    /// any node that answers (none of `down`).
    pub fn primary_of(&self, slot: u16, down: &[usize]) -> Option<usize> {
        let asked = self.nodes.iter().enumerate().filter(|(i, _)| !down.contains(i));
        let listing = asked.map(|(_, n)| n.port).find_map(|port| Self::cli(port, &["cluster", "nodes"]))?;
        let line = listing.lines().find(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 8
                && fields[2].contains("master")
                && !fields[2].contains("fail")
                && fields[8..].iter().any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
        })?;
        let port: u16 = line.split_whitespace().nth(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Waits (up to 30 s) until every node but `down` says
    /// `cluster_state:ok` and every replica among them has its link up.
    pub fn wait_healthy(&self, down: &[usize]) {
        wait_for("the redis cluster is not healthy", || {
            self.nodes.iter().enumerate().filter(|(i, _)| !down.contains(i)).all(|(_, node)| {
                let ok = Self::cli(node.port, &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"));
                let replication = Self::cli(node.port, &["info", "replication"]).unwrap_or_default();
                ok && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            })
        });
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        stop_and_remove(&mut self.nodes, &self.dirs);
    }
}
