#!/usr/bin/env bash
# Where PostgreSQL's time goes in a Payme lifecycle: replays tolov's statements
# (tools/pgbench_tolov_lifecycle.sql) with pgbench, each time with one part taken away, next to
# the anchor of ../shared/bench (lifecycle_per_call.sql), and reports throughput and the CPU the
# PostgreSQL processes spend per lifecycle (sampled from /proc in the middle of each run, so
# neither connection set-up nor pgbench's own CPU is counted). Rounds are interleaved because
# this shared VM drifts by ±20 % between consecutive runs. Writes BENCHMARKS.sql.md, which
# tools/bench.sh appends to BENCHMARKS.md. Loopback only; about 5 minutes with the defaults.
#   bash tools/sql_ablation.sh [seconds-per-run=8] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}; ROUNDS=${2:-3}
export PGHOST=127.0.0.1 PGUSER=postgres PGSSLMODE=${PGSSLMODE:-prefer}
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The variants: a name, what it removes, and how (a schema change and/or a rewrite of the script).
python3 - tools/pgbench_tolov_lifecycle.sql "$WORK" <<'PY'
import re, sys
src, work = sys.argv[1], sys.argv[2]
lines = open(src).read().split("\n")
READS = ("SELECT id,",)

def drop(pred):
    kept = [l for l in lines if not pred(l)]
    # a CTE list must not end with a comma once its last member is gone
    return [l[:-1] if l.endswith(",") and i + 1 < len(kept) and kept[i + 1].startswith(" SELECT") else l
            for i, l in enumerate(kept)]

def is_outbox(l): return l.startswith(" o0 AS")
def is_transition_event(l): return l.startswith(" e0 AS") and "'payment.created'" not in l

def plpgsql_guard(l):
    # the guards as calls of the PL/pgSQL function tolov_guard (migration 0002), as before
    gs = re.findall(r"WHEN \(SELECT count\(\*\) FROM (\w+)\) <> 1 THEN \('tolov_guard-([^/]+)/'", l)
    return " SELECT " + " AND ".join(f"tolov_guard((SELECT count(*) FROM {c}) = 1, '{lab}')" for c, lab in gs) + ";"

variants = {
    "full": lines,
    "no_reads": [l for l in lines if not l.startswith(READS)],
    "with_lookups": [l.removeprefix("--lookup ") for l in lines],
    "no_outbox_rows": drop(is_outbox),
    "no_transition_events": drop(lambda l: is_outbox(l) or is_transition_event(l)),
    "no_guard": [re.sub(r"SELECT CASE .*;$", "SELECT (SELECT count(*) FROM p) + 1;", l) for l in lines],
    "plpgsql_guard": [plpgsql_guard(l) if l.startswith(" SELECT CASE") else l for l in lines],
    "events_as_outbox": [
        l.replace("data, created_at) VALUES", "data, created_at, delivery, next_attempt_at) VALUES")
         .replace("'{}', :now::bigint))", "'{}', :now::bigint, 'pending', :now::bigint))")
        if is_transition_event(l) else l
        for l in drop(is_outbox)],
}
variants["no_foreign_keys"] = variants["no_check_constraints"] = variants["table_checks"] = variants["no_secondary_indexes"] = variants["no_outbox_payment_index"] = lines
for name, body in variants.items():
    open(f"{work}/{name}.sql", "w").write("\n".join(body))
PY

schema_change() { # $1 = variant
  case $1 in
    no_foreign_keys) echo "ALTER TABLE transactions DROP CONSTRAINT transactions_payment_id_fkey;
      ALTER TABLE payment_events DROP CONSTRAINT payment_events_payment_id_fkey;" ;;
    no_check_constraints) echo "ALTER TABLE payments ALTER provider TYPE TEXT, ALTER amount_minor TYPE BIGINT,
      ALTER currency TYPE TEXT, ALTER status TYPE TEXT, ALTER language TYPE TEXT;
      ALTER TABLE webhook_outbox ALTER status TYPE TEXT;" ;;
    table_checks) echo "ALTER TABLE payments ALTER provider TYPE TEXT, ALTER amount_minor TYPE BIGINT,
      ALTER currency TYPE TEXT, ALTER status TYPE TEXT, ALTER language TYPE TEXT,
      ADD CHECK (provider IN ('payme', 'click', 'atmos', 'epay')), ADD CHECK (amount_minor > 0),
      ADD CHECK (currency IN ('UZS', 'KZT')), ADD CHECK (status IN ('pending', 'processing', 'succeeded',
        'partially_refunded', 'refunded', 'canceled', 'failed', 'expired')),
      ADD CHECK (language IN ('uz', 'ru', 'en'));
      ALTER TABLE webhook_outbox ALTER status TYPE TEXT, ADD CHECK (status IN ('pending', 'delivered', 'dead'));" ;;
    no_secondary_indexes) echo "DROP INDEX payments_order_id_idx; DROP INDEX transactions_provider_time_idx;
      DROP INDEX transactions_payment_id_idx;" ;;
    no_outbox_payment_index) echo "DROP INDEX webhook_outbox_pending_payment_idx;" ;;
    events_as_outbox) echo "ALTER TABLE payment_events DROP CONSTRAINT payment_events_pkey;
      DROP INDEX payment_events_payment_id_idx; ALTER TABLE payment_events ADD PRIMARY KEY (payment_id, seq);
      ALTER TABLE payment_events ADD COLUMN delivery TEXT, ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0,
      ADD COLUMN next_attempt_at BIGINT, ADD COLUMN locked_until BIGINT, ADD COLUMN last_status BIGINT,
      ADD COLUMN last_error TEXT;
      CREATE INDEX ON payment_events (next_attempt_at) WHERE delivery = 'pending';" ;;
  esac
}

fresh_db() { # $1 = variant: tolov's migrations, then the variant's schema change
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS tolov_ablation" -qc "CREATE DATABASE tolov_ablation" >/dev/null 2>&1
  for f in migrations/postgres/*.sql; do psql -d tolov_ablation -q -v ON_ERROR_STOP=1 -f "$f"; done
  local change; change=$(schema_change "$1")
  [ -z "$change" ] || psql -d tolov_ablation -q -v ON_ERROR_STOP=1 -c "$change"
  psql "$ADMIN_URL" -qc "CHECKPOINT" >/dev/null
}

measure() { # $1 = label, $2 = script, $3 = database -> one JSON line
  pgbench -n -M prepared -c 64 -j 2 -T "$SECS" -f "$2" "postgres://postgres@127.0.0.1:5432/$3" >"$WORK/pgbench.out" 2>&1 &
  local pb=$!
  python3 - "$(id -u postgres)" "$SECS" >"$WORK/cpu.out" <<'PY'
import os, sys, time
uid, secs = int(sys.argv[1]), int(sys.argv[2])
def snap():  # CPU ticks of every PostgreSQL process
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit(): continue
        try:
            if os.stat(f"/proc/{p}").st_uid != uid: continue
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            out[p] = int(f[11]) + int(f[12])
        except OSError:
            pass
    return out
time.sleep(2); a, t0 = snap(), time.time()
time.sleep(secs - 3); b, t1 = snap(), time.time()
print(sum(b[p] - a[p] for p in b if p in a) / os.sysconf("SC_CLK_TCK"), t1 - t0)
PY
  wait "$pb" || { cat "$WORK/pgbench.out"; exit 1; }
  if grep -q "aborted" "$WORK/pgbench.out" || ! grep -q "number of failed transactions: 0 " "$WORK/pgbench.out"; then
    cat "$WORK/pgbench.out"; exit 1
  fi
  local tps; tps=$(awk '/^tps/ {print $3}' "$WORK/pgbench.out")
  read -r cpu dt <"$WORK/cpu.out"
  python3 -c "import json; print(json.dumps({'variant': '$1', 'tps': $tps, 'pg_ms': $cpu * 1000 / ($tps * $dt)}))"
}

VARIANTS=${VARIANTS:-"full no_reads with_lookups no_outbox_rows no_transition_events no_guard plpgsql_guard events_as_outbox no_foreign_keys no_check_constraints table_checks no_secondary_indexes"}
bash ../shared/bench/run_pgbench.sh 64 1 >/dev/null # creates and fills bench_anchor
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  measure anchor_per_call ../shared/bench/lifecycle_per_call.sql bench_anchor | tee -a "$WORK/results.jsonl"
  for v in $VARIANTS; do
    fresh_db "$v"
    measure "$v" "$WORK/$v.sql" tolov_ablation | tee -a "$WORK/results.jsonl"
  done
done
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS tolov_ablation" >/dev/null

python3 - "$WORK/results.jsonl" "$SECS" "$ROUNDS" <<'PY'
import json, sys, statistics, subprocess, datetime, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
secs, rounds = sys.argv[2], sys.argv[3]
what = {
    "anchor_per_call": "reference: ../shared/bench lifecycle_per_call.sql (4 rows, 5 index entries, 3 commits)",
    "full": "tolov's 5 statements as sent (10 rows, 3 commits)",
    "no_reads": "without the 2 reads (CheckPerformTransaction, CheckTransaction)",
    "with_lookups": "plus the 2 lookups Create/Perform need without a current copy of the rows",
    "no_outbox_rows": "without the 2 webhook outbox rows",
    "no_transition_events": "without the 2 outbox rows and the 2 transition events",
    "no_guard": "compare-and-set guards not checked",
    "plpgsql_guard": "guards as calls of the PL/pgSQL function tolov_guard (before commit c4500c5)",
    "events_as_outbox": "events carry the delivery state; no outbox table (PK (payment_id, seq))",
    "no_foreign_keys": "without the foreign keys of transactions and events",
    "no_check_constraints": "without the value checks of payments and the outbox (domains since migration 0007)",
    "table_checks": "the same checks as table CHECK constraints (before migration 0007)",
    "no_secondary_indexes": "without payments(order_id), transactions(payment_id), transactions(provider, provider_time)",
    "no_outbox_payment_index": "without the outbox's (payment_id, seq) index of undelivered rows (before migration 0008)",
}
by = {}
for r in rows: by.setdefault(r["variant"], []).append(r)
full_ms = statistics.median(r["pg_ms"] for r in by["full"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
pgver = subprocess.run(["psql", "-V"], capture_output=True, text=True).stdout.strip()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = ["## Where PostgreSQL's time goes: tolov's statements with one part taken away\n",
       f"- Command: `bash tools/sql_ablation.sh {secs} {rounds}` (pgbench -M prepared, 64 clients, {secs} s per run, {rounds} interleaved rounds, sslmode={os.environ.get('PGSSLMODE', 'prefer')})",
       f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC, commit {rev}; machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; {pgver}",
       "- PostgreSQL CPU per lifecycle: CPU time of all PostgreSQL processes in the middle of the run divided by the lifecycles done meanwhile (pgbench's own CPU not counted). Medians of the rounds: one disturbed round moves a mean by more than most variants differ; differences under about 15 % were not reproducible across runs.\n",
       "| variant | what is removed | lifecycles/s (median, min–max) | PostgreSQL CPU ms per lifecycle (median) | vs full |",
       "|---|---|---|---|---|"]
for name in ["anchor_per_call"] + [v for v in by if v not in ("anchor_per_call",)]:
    rs = by[name]
    tps = [r["tps"] for r in rs]; ms = statistics.median(r["pg_ms"] for r in rs)
    out.append(f"| {name} | {what[name]} | {statistics.median(tps):.0f} ({min(tps):.0f}–{max(tps):.0f}) | {ms:.2f} | {ms / full_ms - 1:+.0%} |")
open("BENCHMARKS.sql.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
