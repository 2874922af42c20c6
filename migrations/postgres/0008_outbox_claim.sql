-- no-transaction
-- The dispatcher takes, per payment, only its earliest undelivered message (per-payment order).
-- Without an index on the payment, that test read every undelivered row on each pass: with a
-- backlog of 200 000 (a merchant's endpoint down for hours) one claim of 32 took ~200 ms, so
-- draining it grew with the square of its size. With it, ~1 ms (BENCHMARKS.md, outbox claim).
-- Built CONCURRENTLY (outside a transaction, hence the first line): every payment change writes
-- an outbox row, and a plain build would hold them all back while it reads the table's history.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_outbox_pending_payment_idx ON webhook_outbox (payment_id, seq) WHERE status = 'pending';
