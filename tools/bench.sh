#!/usr/bin/env bash
# Payme lifecycle benchmark: tolov (release build) on SQLite and PostgreSQL at concurrency
# 1, 16 and 64, next to the database-only reference ../shared/bench/run_pgbench.sh measured in
# the same run. PostgreSQL is measured twice, both tolov and the reference each time: over TLS
# (sslmode=prefer, what both clients do by default against a server with ssl=on) and without
# (sslmode=disable, usual for a database on the same host). Then the targets' pair (tolov on
# PostgreSQL at concurrency 64, and the reference at 64 clients) again, interleaved for ROUNDS
# rounds, with the CPU each process spent per lifecycle: this VM's speed moves by ±20 % from one
# minute to the next, so single runs are not compared. Writes BENCHMARKS.md. Loopback only;
# about 12 minutes with the defaults.
#   [ROUNDS=3] bash tools/bench.sh [seconds-per-run=15]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-15}
ROUNDS=${ROUNDS:-3}
PORT=18080
export PGHOST=127.0.0.1 PGUSER=postgres
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start

cargo build --release --locked --bins >/dev/null 2>&1 || cargo build --release --locked --bins
BIN=target/release/tolov
LOADGEN=target/release/tolov-loadgen
WORK=$(mktemp -d)
RESULTS="$WORK/results.jsonl"
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

start_server() { # $1 = database url
  TOLOV__SERVER__LISTEN=127.0.0.1:$PORT TOLOV__LOG__LEVEL=warn TOLOV__DATABASE__URL="$1" \
    TOLOV__DATABASE__MAX_CONNECTIONS="${TOLOV_BENCH_POOL:-32}" "$BIN" serve >"$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "tolov did not start"; cat "$WORK/server.log"; exit 1
}

fresh_pg_database() { # $1 = sslmode; recreates tolov_bench and prints its url
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS tolov_bench" -qc "CREATE DATABASE tolov_bench" >/dev/null
  psql "$ADMIN_URL" -qc "CHECKPOINT" >/dev/null
  echo "postgres://postgres@127.0.0.1:5432/tolov_bench?sslmode=$1"
}

peak_rss_kb() { # samples the server's RSS while the load generator runs
  local peak=0 rss
  while kill -0 "$1" 2>/dev/null; do
    rss=$(ps -o rss= -p "$SERVER" 2>/dev/null | tr -d ' ') || rss=0
    [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.2
  done
  echo "$peak"
}

for target in sqlite postgres:prefer postgres:disable; do
  db=${target%%:*}; ssl=${target#*:}
  for c in 1 16 64; do
    if [ "$db" = sqlite ]; then
      url="sqlite://$WORK/bench-$c.db"; ssl=none
    else
      url=$(fresh_pg_database "$ssl")
    fi
    start_server "$url"
    "$LOADGEN" --url "http://127.0.0.1:$PORT" --concurrency "$c" --seconds "$SECONDS_PER_RUN" >"$WORK/run.json" &
    LG=$!
    rss=$(peak_rss_kb "$LG")
    wait "$LG"
    idle_rss=$(ps -o rss= -p "$SERVER" | tr -d ' ')
    kill -TERM "$SERVER"; wait "$SERVER" || true
    python3 - "$db" "$rss" "$idle_rss" "$WORK/run.json" "$ssl" >>"$RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[4])); r["db"] = sys.argv[1]; r["peak_rss_mb"] = int(sys.argv[2]) / 1024; r["end_rss_mb"] = int(sys.argv[3]) / 1024
r["ssl"] = sys.argv[5]
print(json.dumps(r))
PY
    tail -n1 "$RESULTS"
  done
done

echo "== pgbench reference (clients 16 and 64, ${SECONDS_PER_RUN}s each, sslmode prefer and disable)"
for ssl in prefer disable; do
  for c in 16 64; do
    PGSSLMODE=$ssl bash ../shared/bench/run_pgbench.sh "$c" "$SECONDS_PER_RUN" | tee "$WORK/pgbench-$ssl-$c.txt"
  done
done

echo "== tolov's own statements in pgbench (clients 64, ${SECONDS_PER_RUN}s, sslmode prefer and disable)"
for ssl in prefer disable; do
  psql "$ADMIN_URL" -qc "CHECKPOINT" >/dev/null
  PGSSLMODE=$ssl pgbench -n -M prepared -c 64 -j 2 -T "$SECONDS_PER_RUN" -f tools/pgbench_tolov_lifecycle.sql \
    "postgres://postgres@127.0.0.1:5432/tolov_bench" 2>&1 | grep -E "tps|failed" | tee "$WORK/own-$ssl.txt"
done

ticks() { # utime + stime of the given processes, in clock ticks
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

echo "== targets: tolov (PostgreSQL, concurrency 64) and the reference (64 clients), $ROUNDS interleaved rounds"
ROUNDS_FILE="$WORK/rounds.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for ssl in prefer disable; do
    start_server "$(fresh_pg_database "$ssl")"
    "$LOADGEN" --url "http://127.0.0.1:$PORT" --concurrency 64 --seconds "$SECONDS_PER_RUN" >"$WORK/round.json" &
    LG=$!
    # CPU of each process over the middle of the measured window (after warm-up, before the end).
    sleep 3
    # shellcheck disable=SC2046 # one argument per PostgreSQL process
    t0=$(date +%s.%N); s0=$(ticks "$SERVER"); l0=$(ticks "$LG"); p0=$(ticks $(pgrep -x postgres))
    sleep $((SECONDS_PER_RUN - 2))
    # shellcheck disable=SC2046
    t1=$(date +%s.%N); s1=$(ticks "$SERVER"); l1=$(ticks "$LG"); p1=$(ticks $(pgrep -x postgres))
    wait "$LG"
    kill -TERM "$SERVER"; wait "$SERVER" || true
    PGSSLMODE=$ssl bash ../shared/bench/run_pgbench.sh 64 "$SECONDS_PER_RUN" >"$WORK/round-pgbench.txt"
    python3 - "$WORK/round.json" "$WORK/round-pgbench.txt" "$round" "$ssl" "$t0" "$t1" "$s0" "$s1" "$l0" "$l1" "$p0" "$p1" "$(getconf CLK_TCK)" >>"$ROUNDS_FILE" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
per_call = float(re.search(r"== lifecycle_per_call.*?tps = ([0-9.]+)", text, re.S).group(1))
t0, t1 = float(sys.argv[5]), float(sys.argv[6])
s0, s1, l0, l1, p0, p1, hz = map(int, sys.argv[7:14])
done = r["lifecycles_per_sec"] * (t1 - t0)
ms = lambda a, b: (b - a) * 1000.0 / hz / done if done else 0.0
print(json.dumps({"round": int(sys.argv[3]), "ssl": sys.argv[4], "lps": r["lifecycles_per_sec"],
    "p99_ms": r["all_calls"]["p99_ms"], "errors": r["errors"], "anchor": per_call,
    "cpu_ms": {"tolov": ms(s0, s1), "loadgen": ms(l0, l1), "postgres": ms(p0, p1)}}))
PY
    tail -n1 "$ROUNDS_FILE"
  done
done

python3 - "$RESULTS" "$WORK" "$SECONDS_PER_RUN" <<'PY'
import json, re, sys, subprocess, datetime, platform, os
results = [json.loads(l) for l in open(sys.argv[1])]
work, secs = sys.argv[2], sys.argv[3]
def pgb(path):
    out, cur = {}, None
    for line in open(path):
        m = re.match(r"== (\S+)", line)
        if m: cur = m.group(1)
        m = re.search(r"tps = ([0-9.]+)", line)
        if m and cur: out[cur] = float(m.group(1))
    return out
ref = {(ssl, c): pgb(f"{work}/pgbench-{ssl}-{c}.txt") for ssl in ("prefer", "disable") for c in (16, 64)}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
pgver = subprocess.run(["psql", "-V"], capture_output=True, text=True).stdout.strip()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
label = {"none": "sqlite", "prefer": "postgres (TLS)", "disable": "postgres (no TLS)"}
lines = []
lines.append("# Benchmarks\n")
lines.append("## Payme lifecycle (create payment → Check → Create → Perform → CheckTransaction)\n")
lines.append(f"- Command: `bash tools/bench.sh {secs}` ({secs} s measured per run after 2 s warm-up)")
lines.append(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC, commit {rev}")
lines.append(f"- Machine: {os.cpu_count()} cores ({cpu}), {int(mem)//1024//1024} GiB RAM, {platform.system()} {platform.release()}; {pgver}")
lines.append("- Load generator (tools/loadgen.rs), tolov (`--release`, `log.level=warn`, pool 32) and the database share the machine, over loopback.")
lines.append("- PostgreSQL twice: over TLS (`sslmode=prefer`, the default of sqlx and of libpq, the server has `ssl = on`) and without (`sslmode=disable`); the pgbench reference is run the same two ways.")
lines.append("- A lifecycle is 5 HTTP calls; every call checks its answer (errors are counted, not timed).\n")
lines.append("Latencies are p50 / p99 in milliseconds, per call and over all calls.\n")
lines.append("| db | concurrency | lifecycles/s | calls/s | all calls | create payment | CheckPerformTransaction | CreateTransaction | PerformTransaction | CheckTransaction | errors | peak RSS (MB) |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in results:
    c = r["calls"]
    per = " | ".join(f'{c[k]["p50_ms"]:.2f} / {c[k]["p99_ms"]:.1f}' for k in ["create_payment", "CheckPerformTransaction", "CreateTransaction", "PerformTransaction", "CheckTransaction"])
    lines.append(f'| {label[r["ssl"]]} | {r["concurrency"]} | {r["lifecycles_per_sec"]:.0f} | {r["calls_per_sec"]:.0f} | {r["all_calls"]["p50_ms"]:.2f} / {r["all_calls"]["p99_ms"]:.1f} | {per} | {r["errors"]} | {r["peak_rss_mb"]:.0f} |')
lines.append("")
lines.append("## Reference: the same database work in pgbench (no HTTP, no application)\n")
lines.append(f"`PGSSLMODE=prefer|disable bash ../shared/bench/run_pgbench.sh 16|64 {secs}` in the same run; tps = lifecycles/s.\n")
lines.append("| transport | clients | lifecycle_per_call tps | lifecycle_one_tx tps |")
lines.append("|---|---|---|---|")
for (ssl, c), d in ref.items():
    lines.append(f'| {"TLS" if ssl == "prefer" else "no TLS"} | {c} | {d.get("lifecycle_per_call", 0):.0f} | {d.get("lifecycle_one_tx", 0):.0f} |')
lines.append("")
own = {}
for ssl in ("prefer", "disable"):
    m = re.search(r"tps = ([0-9.]+)", open(f"{work}/own-{ssl}.txt").read())
    own[ssl] = float(m.group(1)) if m else 0
lines.append("## tolov's own statements in pgbench (no HTTP, no application)\n")
lines.append(f"`pgbench -n -M prepared -c 64 -j 2 -T {secs} -f tools/pgbench_tolov_lifecycle.sql` on the database of the last tolov run: the ceiling tolov's SQL alone allows on this machine.\n")
lines.append("| transport | clients | tolov statements tps |")
lines.append("|---|---|---|")
for ssl, v in own.items():
    lines.append(f'| {"TLS" if ssl == "prefer" else "no TLS"} | 64 | {v:.0f} |')
lines.append("")
lines.append("## tolov against the reference (same transport, same run)\n")
lines.append("| transport | concurrency | tolov PostgreSQL lifecycles/s | pgbench per-call tps | ratio |")
lines.append("|---|---|---|---|---|")
for r in results:
    if r["db"] != "postgres" or r["concurrency"] not in (16, 64): continue
    per_call = ref[(r["ssl"], r["concurrency"])].get("lifecycle_per_call", 0)
    ratio = r["lifecycles_per_sec"] / per_call if per_call else 0
    lines.append(f'| {"TLS" if r["ssl"] == "prefer" else "no TLS"} | {r["concurrency"]} | {r["lifecycles_per_sec"]:.0f} | {per_call:.0f} | {ratio:.0%} |')
lines.append("")
rounds_path = f"{work}/rounds.jsonl"
rounds = [json.loads(l) for l in open(rounds_path)] if os.path.exists(rounds_path) else []
def median(v):
    v = sorted(v); n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else 0
if rounds:
    lines.append("## The targets, measured in interleaved rounds\n")
    lines.append("The issue's targets: ≥ 1 500 lifecycles/s on PostgreSQL at concurrency 64, ≥ 50 % of the pgbench per-call figure, p99 < 50 ms per call. "
                 f"Each round runs tolov (fresh database, {secs} s) and then `run_pgbench.sh 64 {secs}` per transport, so both meet the same minutes of this VM. "
                 "CPU per lifecycle: utime + stime of each process (all PostgreSQL processes together) over the middle of tolov's measured window, divided by the lifecycles done in it; 2 cores give 2 000 ms of CPU per second.\n")
    lines.append(f"`ROUNDS={len(set(r['round'] for r in rounds))} bash tools/bench.sh {secs}`, same run as the tables above.\n")
    lines.append("| round | transport | tolov lifecycles/s | p99 all calls (ms) | errors | pgbench per-call tps | ratio | CPU ms per lifecycle: tolov / load generator / PostgreSQL / total |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rounds:
        c = r["cpu_ms"]; total = c["tolov"] + c["loadgen"] + c["postgres"]
        lines.append(f'| {r["round"]} | {"TLS" if r["ssl"] == "prefer" else "no TLS"} | {r["lps"]:.0f} | {r["p99_ms"]:.1f} | {r["errors"]} | {r["anchor"]:.0f} | {r["lps"] / r["anchor"]:.0%} | {c["tolov"]:.2f} / {c["loadgen"]:.2f} / {c["postgres"]:.2f} / {total:.2f} |')
    lines.append("")
    lines.append("| transport | median tolov lifecycles/s | median ratio | median p99 (ms) | median CPU ms per lifecycle: tolov / load generator / PostgreSQL / total |")
    lines.append("|---|---|---|---|---|")
    for ssl in ("prefer", "disable"):
        rs = [r for r in rounds if r["ssl"] == ssl]
        if not rs: continue
        cm = {k: median([r["cpu_ms"][k] for r in rs]) for k in ("tolov", "loadgen", "postgres")}
        tot = median([sum(r["cpu_ms"].values()) for r in rs])
        lines.append(f'| {"TLS" if ssl == "prefer" else "no TLS"} | {median([r["lps"] for r in rs]):.0f} | {median([r["lps"] / r["anchor"] for r in rs]):.0%} | {median([r["p99_ms"] for r in rs]):.1f} | {cm["tolov"]:.2f} / {cm["loadgen"]:.2f} / {cm["postgres"]:.2f} / {tot:.2f} |')
    lines.append("")
for extra in ("BENCHMARKS.notes.md", "BENCHMARKS.sql.md", "BENCHMARKS.outbox.md"):
    if os.path.exists(extra):
        lines.append(open(extra).read())
open("BENCHMARKS.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
