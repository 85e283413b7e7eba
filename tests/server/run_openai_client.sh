#!/usr/bin/env bash
# Starts `kiln serve` on a free loopback port with the bundled model, runs the `openai`
# npm client test against it, and stops the server.   usage: run_openai_client.sh KILN OPENAI_MODULE_DIR
set -euo pipefail
kiln=$1
export KILN_OPENAI_MODULE=$2
here=$(cd "$(dirname "$0")" && pwd)
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
node "$here/openai_client.cjs" "$url/v1"
