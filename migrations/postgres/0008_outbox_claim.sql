-- The dispatcher takes, per payment, only its earliest undelivered message (per-payment order).
-- Without an index on the payment, that test read every undelivered row on each pass: with a
-- backlog of 200 000 (a merchant's endpoint down for hours) one claim of 32 took ~200 ms, so
-- draining it grew with the square of its size. With it, ~1 ms (BENCHMARKS.md, outbox claim).
-- Built in the migration's transaction, not CONCURRENTLY: instances starting together wait for
-- one another's migration (sqlx's advisory lock), which a concurrent build would deadlock with,
-- leaving an invalid index behind. The build holds payment writes back while it reads the
-- outbox (README: run `tolov migrate` once before the new instances take traffic).
CREATE INDEX webhook_outbox_pending_payment_idx ON webhook_outbox (payment_id, seq) WHERE status = 'pending';
