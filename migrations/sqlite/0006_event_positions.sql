-- Same columns as PostgreSQL's 0006. SQLite has one writer, so events commit in `seq` order and
-- `tx` stays 0; the listing orders by `seq` alone and needs no new index.
ALTER TABLE payment_events ADD COLUMN tx INTEGER NOT NULL DEFAULT 0;
