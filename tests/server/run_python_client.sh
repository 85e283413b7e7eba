#!/usr/bin/env bash
# Starts `kiln serve` on a free loopback port with the bundled model, runs a Python test
# client against it (tests/server/SCRIPT, given the server's /v1 URL), and stops the server.
#   usage: run_python_client.sh KILN PYTHON SCRIPT    (PYTHON: build-deps/venv/bin/python, scripts/setup.sh)
set -euo pipefail
kiln=$1
python=$2
script=$3
here=$(cd "$(dirname "$0")" && pwd)
if ! "$python" -c 'import openai, jsonschema' 2>/dev/null; then
  echo "error: $python cannot import openai and jsonschema (pinned in scripts/python-requirements.txt): run scripts/setup.sh" >&2
  exit 1
fi
log=$(mktemp)
"$kiln" serve --port 0 --threads 1 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 1 300); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" || true)
  [ -n "$url" ] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "kiln serve printed no ready line"; cat "$log"; exit 1; }
"$python" "$here/$script" "$url/v1"
