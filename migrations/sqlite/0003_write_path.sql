-- Same intent as the PostgreSQL migration: partial indexes for the open payments the expiry
-- worker scans and the undelivered outbox rows the dispatcher claims.
DROP INDEX payments_status_expires_idx;
CREATE INDEX payments_open_expires_idx ON payments (expires_at) WHERE status IN ('pending', 'processing');

DROP INDEX webhook_outbox_due_idx;
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at) WHERE status = 'pending';
