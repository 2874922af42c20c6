-- `GET /v1/events` pages in the order changes commit, not in the order they drew an event
-- number: `seq` comes from a sequence when the event is written, so a change that commits late
-- can land behind a cursor already handed out. `tx` is the writing transaction's id; every
-- transaction below the oldest one still running has finished, so listing only events with a
-- `tx` below that horizon, in (tx, seq) order, never leaves a gap behind the cursor. The key
-- (tx, seq) replaces the one on seq alone (nothing looks an event up by seq), so writes keep
-- one index entry for it. Rows already here share this migration's transaction id.
ALTER TABLE payment_events ADD COLUMN tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
ALTER TABLE payment_events DROP CONSTRAINT payment_events_pkey;
ALTER TABLE payment_events ADD PRIMARY KEY (tx, seq);
