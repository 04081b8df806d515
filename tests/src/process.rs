//! The workspace binaries as child processes.
//!
//! The binaries are built once, before the tests, by `cargo build --workspace
//! --bins` (`scripts/test.sh` does it first), never from inside a test: a
//! `cargo build` run by a test process inherits the test's cargo variables,
//! which dirties build-script fingerprints (ring's, for one) so the next
//! outer build recompiles half the graph.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The variable naming the folder with the built binaries; by default they
/// are looked for next to the test executable (`<target>/<profile>/`).
pub const BIN_DIR_VAR: &str = "COURIER_BIN_DIR";

/// The path of a workspace binary (`worker`, `producer`, `bot`), built
/// beforehand. Fails with what to run if it is missing, or older than a
/// source file of the crates it is built from (a stale binary would test
/// old code).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        // The test executable lives in <target>/<profile>/deps/.
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent().and_then(Path::parent).expect("target profile dir").to_owned()
        }
    };
    let path = dir.join(name);
    let build = "build the binaries first: `cargo build --workspace --bins` (scripts/test.sh does), \
                 with the same CARGO_TARGET_DIR as the tests, or point COURIER_BIN_DIR at them";
    let built = std::fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {build}", path.display()));
    if let Some((source, changed)) = newest_source(name) {
        assert!(changed <= built, "{} is older than {}: {build}", path.display(), source.display());
    }
    path
}

/// The most recently modified file the binaries are compiled from: the
/// sources, migrations and build scripts of `app`, `di`, `tasks` and
/// `settings`, and the compiled-in settings. (Not the manifests: cargo
/// relinks nothing for a manifest edit that changes no build input; nor
/// the other binaries' `src/bin` files, which cargo does not link into it.)
fn newest_source(name: &str) -> Option<(PathBuf, SystemTime)> {
    let own = format!("{}.rs", name.replace('-', "_"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let mut pending: Vec<PathBuf> = Vec::new();
    for krate in ["app", "di", "tasks", "settings"] {
        for input in ["src", "migrations", "build.rs", "settings.toml"] {
            pending.push(workspace.join(krate).join(input));
        }
    }
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let other_binary = path.parent().is_some_and(|dir| dir.ends_with("src/bin"))
            && path.file_name().is_some_and(|file| file.to_string_lossy() != own);
        if other_binary {
            continue;
        }
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|entry| entry.path()));
        } else if let Ok(modified) = meta.modified() {
            if newest.as_ref().is_none_or(|(_, time)| modified > *time) {
                newest = Some((path, modified));
            }
        }
    }
    newest
}

/// A `Command` for a workspace binary with `COURIER_*` variables cleared
/// (the test sets what it means) and logs captured.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(binary(name));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COURIER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A workspace binary running as a child process, its log captured to a file.
#[derive(Debug)]
pub struct ChildProcess {
    child: std::process::Child,
    log: PathBuf,
}

/// The `worker` binary as a child process.
pub type ChildWorker = ChildProcess;

impl ChildProcess {
    /// Starts `worker` with `env` and waits (up to 30 s) for `worker ready`.
    pub fn start(env: &[(String, String)]) -> Self {
        Self::spawn("worker", env, "worker ready")
    }

    /// Starts `n` workers with `env`, each with its own `/readyz` address
    /// (`worker.http_addr` on a free loopback port), off the async runtime;
    /// returns them with their addresses, in the same order.
    pub async fn start_many(env: &[(String, String)], n: usize) -> (Vec<Self>, Vec<String>) {
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", crate::servers::free_port())).collect();
        let (env, wanted) = (env.to_vec(), addrs.clone());
        let workers = tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .map(|addr| {
                    let mut env = env.clone();
                    env.push(("COURIER_WORKER__HTTP_ADDR".to_owned(), addr.clone()));
                    Self::start(&env)
                })
                .collect()
        })
        .await
        .expect("the workers start");
        (workers, addrs)
    }

    /// Starts binary `name` with `env` and waits (up to 30 s) until its
    /// log contains `ready`.
    pub fn spawn(name: &str, env: &[(String, String)], ready: &str) -> Self {
        Self::spawn_with_args(name, env, &[], ready)
    }

    /// [`ChildProcess::spawn`] with command-line arguments.
    pub fn spawn_with_args(name: &str, env: &[(String, String)], args: &[&str], ready: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique(&format!("courier_{name}"))));
        let file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = command(name);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("spawn the worker");
        let mut process = Self { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !process.log().contains(ready) {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("{name} exited during start-up ({status}):\n{}", process.log());
            }
            assert!(std::time::Instant::now() < deadline, "{name} did not log {ready:?}:\n{}", process.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        process
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(timeout)
    }

    /// Waits (up to `timeout`) for the exit status.
    pub fn wait(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the worker did not exit:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // A failed test keeps what its processes said: the log's path
            // and its last lines go to the test's output.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(TAIL_LINES).collect();
            eprintln!("--- {} (last {} lines):", self.log.display(), tail.len());
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
            return;
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// How many of its last log lines a process prints when its test fails.
const TAIL_LINES: usize = 60;
