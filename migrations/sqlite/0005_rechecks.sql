-- Closed payments a provider may still move money for without telling tolov: a payer paying in
-- ePay's widget after a merchant cancel (the payment token lives two hours) with the postLink
-- lost, an ATMOS debit landing after the cancel whose reversal failed. The reconciliation
-- worker asks the provider again when a row is due and settles what it finds.
CREATE TABLE payment_rechecks (
    payment_id TEXT PRIMARY KEY REFERENCES payments (id),
    due_at     BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payment_rechecks_due_idx ON payment_rechecks (due_at);
