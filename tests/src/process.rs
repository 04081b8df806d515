//! The workspace binaries as child processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

/// The path of a workspace binary (`worker`, `producer`, `bot`), built
/// first so a test never runs a stale one.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
    BUILD.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--bins", "--quiet"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing after cargo build", path.display());
    path
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

    /// Starts binary `name` with `env` and waits (up to 30 s) until its
    /// log contains `ready`.
    pub fn spawn(name: &str, env: &[(String, String)], ready: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique(&format!("courier_{name}"))));
        let file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = command(name);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).stdout(std::process::Stdio::null()).stderr(file);
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
        let _ = std::fs::remove_file(&self.log);
    }
}
