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
