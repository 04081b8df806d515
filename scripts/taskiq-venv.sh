#!/usr/bin/env bash
# Creates (once) the Python venv with the taskiq stack for the
# interoperability test, at the path given (under the cargo target dir,
# outside the tree). Safe to call from parallel test processes.
set -euo pipefail
venv=${1:?usage: taskiq-venv.sh <venv-dir>}
requirements="$(cd "$(dirname "$0")/.." && pwd)/tests/python/requirements.txt"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
