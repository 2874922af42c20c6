#!/usr/bin/env bash
# The benchmark's load generator (tools/loadgen.rs) against a debug build of tolov on SQLite for
# two seconds: every lifecycle must succeed, so the benchmark tool cannot rot between benchmark
# runs. Its numbers here mean nothing (debug build, CI machine); tools/bench.sh measures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOLOV__SERVER__LISTEN="127.0.0.1:$port" TOLOV__DATABASE__URL="sqlite://$work/smoke.db" TOLOV__LOG__LEVEL=warn \
  target/debug/tolov serve >"$work/server.log" 2>&1 &
server=$!
# On failure the server's log is the diagnosis: print it before it is removed.
trap 'rc=$?; kill "$server" 2>/dev/null || true; [ "$rc" -eq 0 ] || { echo "--- tolov server.log"; cat "$work/server.log"; }; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
target/debug/tolov-loadgen --url "http://127.0.0.1:$port" --concurrency 4 --seconds 2 --warmup 0 >"$work/run.json"
python3 - "$work/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f'load generator: {r["lifecycles"]} lifecycles, {r["errors"]} errors')
if r["errors"] or not r["lifecycles"]:
    sys.exit("the load generator's lifecycles failed against tolov")
PY
