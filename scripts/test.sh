#!/usr/bin/env bash
# Courier's test command: formatting, lints, and every test against the
# real services. CI (.ci/run) calls exactly this.
#   ./scripts/test.sh           everything, as CI runs it
#   ./scripts/test.sh --quick   the same checks and tests, without the long
#                               acceptance tests (nextest profile `quick` in
#                               .config/nextest.toml: faults and restarts,
#                               Telegram's limits, campaigns, the cluster,
#                               floods, the browser; nextest names how many
#                               it left out), and without the drop-in build
set -euo pipefail
cd "$(dirname "$0")/.."
profile=default
case "${1:-}" in
  "") ;;
  --quick) profile=quick ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

# Fail at once, saying how to start it, if a service the tests need is down.
need() {
  local name=$1 port=$2 how=$3
  if ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    echo "test.sh: $name is not reachable on 127.0.0.1:$port. Start it with:" >&2
    echo "  $how" >&2
    echo "  (or all of them: docker compose -f docker/compose.yml up -d)" >&2
    exit 1
  fi
}
need NATS 4222 "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
need Redis 6379 "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
need PostgreSQL 5432 "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unused dependencies (cargo machete)"
if command -v cargo-machete >/dev/null 2>&1; then
  cargo machete
else
  echo "NOT CHECKED: cargo-machete is not installed (cargo install cargo-machete; .ci/run does)"
fi

echo "== the apalis peer (bench/apalis, a cargo project of its own)"
# Not in the workspace: formatted and linted here so it does not rot.
apalis_target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/apalis"
cargo fmt --manifest-path bench/apalis/Cargo.toml --check
CARGO_TARGET_DIR="$apalis_target" cargo clippy --manifest-path bench/apalis/Cargo.toml --locked --quiet -- -D warnings

echo "== compose files"
for file in docker/compose.yml docker/compose.cluster.yml; do
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f "$file" config --quiet && echo "$file: valid"
  elif docker compose version >/dev/null 2>&1; then
    docker compose -f "$file" config --quiet && echo "$file: valid"
  else
    echo "NOT CHECKED: $file (no docker-compose client here: apt-get install docker-compose)"
  fi
done

echo "== binaries and the taskiq venv, once, before the tests"
# Tests run the binaries as processes and never build them themselves
# (tests/src/process.rs); nor do they install Python packages.
cargo build --workspace --bins --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
./scripts/taskiq-venv.sh "$target/taskiq-venv"

echo "== chromium and chromedriver for the browser tests (tests/src/browser.rs)"
if [ "$profile" = quick ]; then
  echo "not needed: --quick leaves the browser test out"
elif ! command -v chromedriver >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium and chromium-driver; the browser tests will fail saying how to install them"
fi
if command -v chromedriver >/dev/null 2>&1; then chromedriver --version; fi

echo "== tests"
# The browser test saves a screenshot of each page it visits (the issue's
# artefacts): say where, whatever the tests' outcome.
screenshots="$target/board-screenshots"
run_started=$(mktemp)
show_screenshots() {
  local shots
  shots=$(find "$screenshots" -maxdepth 1 -name '*.png' -newer "$run_started" 2>/dev/null | sort || true)
  if [ -n "$shots" ]; then
    echo "== board screenshots (artefacts of the browser test): $screenshots"
    echo "$shots" | sed 's|.*/|  |'
  fi
  rm -f "$run_started"
}
trap show_screenshots EXIT
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests (the typed-enqueue compile check is one).
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast --profile "$profile"
elif [ "$profile" = quick ]; then
  echo "test.sh: --quick needs cargo-nextest (cargo install cargo-nextest --locked)" >&2
  exit 2
else
  cargo test --workspace --no-fail-fast
fi

echo "== drop-in: a new file in tasks/src is a new task"
if [ "$profile" = quick ]; then
  echo "left out by --quick (two builds of a scratch copy, about 90 s); ./scripts/test.sh runs it"
else
  ./scripts/check-dropin.sh
fi
