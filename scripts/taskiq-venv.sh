#!/usr/bin/env bash
# Creates (once) the Python venv with the taskiq stack that the interop test
# runs examples/taskiq_producer.py with (examples/requirements.txt, from
# PyPI), at the path given; scripts/test.sh calls it before the tests, which
# never install anything themselves. Does nothing when the venv already has
# exactly these requirements.
set -euo pipefail
venv=${1:?usage: taskiq-venv.sh <venv-dir>}
requirements="$(cd "$(dirname "$0")/.." && pwd)/examples/requirements.txt"
python=${PYTHON:-python3}
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
  exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
