#!/usr/bin/env bash
# Proves "a task is a file": copies the repository to a scratch folder, drops
# a new file into tasks/src/, runs `cargo build`, and checks that
# `worker --list-tasks` shows the new task, with no other file edited and
# this tree left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# A target folder of its own, kept between runs (inside the main one): the
# scratch copy's crates share their names and hashes with the main tree's,
# and building them in the main target folder made the next test run
# rebuild courier, tasks and the tests (two minutes a run).
target="${CARGO_TARGET_DIR:-$root/target}/dropin"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/courier-dropin.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
status_before=$(git status --porcelain)

git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$scratch"
cd "$scratch"
export CARGO_TARGET_DIR="$target"
cargo build --workspace --quiet
if "$target/debug/worker" --list-tasks | grep -qx dropin_probe; then
  echo "check-dropin: dropin_probe is registered before its file exists" >&2; exit 1
fi

cat > tasks/src/dropin_probe.rs <<'TASK'
//! A task that exists only to prove that dropping a file in registers it.

use di::prelude::*;

/// No arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct Args {}

/// Returns at once.
pub async fn run(_ctx: TaskContext, _args: Args) -> TaskResult<()> {
    Ok(())
}

register_task!(run: Args => ());
TASK
cargo build --workspace --quiet
if ! "$target/debug/worker" --list-tasks | grep -qx dropin_probe; then
  echo "check-dropin: FAILED: tasks/src/dropin_probe.rs was added and built, but worker --list-tasks does not show it" >&2
  exit 1
fi
changed=$(find . -path ./target -prune -o -newer tasks/src/dropin_probe.rs -type f -print | grep -v '^./target' || true)
cd "$root"
[ "$(git status --porcelain)" = "$status_before" ] || { echo "check-dropin: the tree changed" >&2; exit 1; }
[ -z "$changed" ] || { echo "check-dropin: files other than the new task changed: $changed" >&2; exit 1; }
echo "check-dropin: ok (tasks/src/dropin_probe.rs registered by cargo build alone)"
