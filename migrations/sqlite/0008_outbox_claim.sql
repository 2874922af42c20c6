-- Same index as PostgreSQL's 0008: the claim's per-payment order test probes it instead of
-- scanning every undelivered row inside the writer's lock.
CREATE INDEX webhook_outbox_pending_payment_idx ON webhook_outbox (payment_id, seq) WHERE status = 'pending';
