#!/usr/bin/env bash
# The webhook dispatcher's claim pass with a delivery backlog: a merchant endpoint down for hours
# leaves PENDING undelivered messages behind DELIVERED old ones. Runs the claim statement of
# src/store/sql.rs (claim_outbox, 32 rows, rolled back so every pass sees the same backlog) with
# pgbench on tolov's migrated PostgreSQL schema, next to the reference measured in the same run:
# the statement and indexes before migration 0008 (ordered by seq, no index on the payment).
# Writes BENCHMARKS.outbox.md and that section of BENCHMARKS.md. Loopback only; about a minute.
#   bash tools/outbox_claim_bench.sh [seconds-per-run=10] [pending=200000] [delivered=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; PENDING=${2:-200000}; DELIVERED=${3:-1000000}
export PGHOST=127.0.0.1 PGUSER=postgres
ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
DB=tolov_outbox_bench
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
cargo build --release --locked --bin tolov >/dev/null 2>&1 || cargo build --release --locked --bin tolov
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -qc "CREATE DATABASE $DB" >/dev/null
TOLOV__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB" target/release/tolov migrate >/dev/null
# Delivered history first (lower seq), then the backlog: two messages per payment, due times
# spread over the retry schedule so about half are due at the claim's "now".
psql -d "$DB" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO webhook_outbox (event_id, payment_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
  SELECT 'evt_d' || g, 'pay_d' || (g / 2), 'payment.succeeded', repeat('x', 400), 'delivered', 1, 1000, 0, 0
  FROM generate_series(1, $DELIVERED) g;
INSERT INTO webhook_outbox (event_id, payment_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
  SELECT 'evt_p' || g, 'pay_p' || (g / 2), 'payment.succeeded', repeat('x', 400), 'pending', 1,
         1000::bigint + (g % 1000)::bigint * 4000000000::bigint, 0, 0
  FROM generate_series(1, $PENDING) g;
VACUUM ANALYZE webhook_outbox;
SQL

claim() { # $1 = ORDER BY list
  cat <<SQL
BEGIN;
UPDATE webhook_outbox SET locked_until = 5 WHERE seq IN ( SELECT o.seq FROM webhook_outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= 2000000000000 AND (o.locked_until IS NULL OR o.locked_until <= 2000000000000) AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.payment_id = o.payment_id AND e.status = 'pending' AND e.seq < o.seq) ORDER BY $1 LIMIT 32 FOR UPDATE SKIP LOCKED) RETURNING seq;
ROLLBACK;
SQL
}
claim "o.next_attempt_at, o.seq" >"$WORK/now.sql"
claim "o.seq" >"$WORK/before.sql"

run() { # $1 = script; prints "claims/s avg-latency-ms"
  pgbench -n -M prepared -c 1 -j 1 -T "$SECS" -f "$1" "$DB" 2>&1 |
    awk '/latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%.1f %.2f\n", tps, lat}'
}
read -r now_tps now_lat < <(run "$WORK/now.sql")
psql -d "$DB" -qc "DROP INDEX webhook_outbox_pending_payment_idx"
read -r before_tps before_lat < <(run "$WORK/before.sql")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "## Webhook outbox: one claim pass with a delivery backlog"
  echo
  echo "- Command: \`bash tools/outbox_claim_bench.sh $SECS $PENDING $DELIVERED\`"
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD); machine: $(nproc) cores ($cpu), Linux $(uname -r); $(psql --version)"
  echo "- $PENDING undelivered messages (2 per payment, half of them due) behind $DELIVERED delivered ones; one pgbench client claims 32 and rolls back, so every pass sees the same backlog."
  echo
  echo "| claim | claims/s | average ms per claim |"
  echo "|---|---|---|"
  echo "| now: index on (payment_id, seq) of undelivered rows, most overdue first | $now_tps | $now_lat |"
  echo "| reference, before migration 0008: no index on the payment, oldest seq first | $before_tps | $before_lat |"
  echo
  echo "Draining a backlog takes about (backlog / 32) passes, so the time of one pass is what grows: before 0008 it read every undelivered row each pass (and walked the delivered ones in seq order), so draining grew with the square of the backlog."
} >BENCHMARKS.outbox.md
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null

# Replace this section of BENCHMARKS.md (or append it); tools/bench.sh appends the file too.
python3 - <<'PY'
import re
doc = open("BENCHMARKS.md").read()
sec = open("BENCHMARKS.outbox.md").read().rstrip("\n") + "\n"
head = "## Webhook outbox: one claim pass with a delivery backlog"
if head in doc:
    start = doc.index(head)
    nxt = doc.find("\n## ", start + len(head))
    doc = doc[:start] + sec + (doc[nxt + 1:] if nxt >= 0 else "")
    doc = doc.replace(sec + "## ", sec + "\n## ")
else:
    doc = doc.rstrip("\n") + "\n\n" + sec
open("BENCHMARKS.md", "w").write(doc)
PY
cat BENCHMARKS.outbox.md
