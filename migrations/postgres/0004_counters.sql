-- Named counters for provider-facing numeric ids (Click merchant_prepare_id, ePay invoiceId):
-- unique and increasing, never random.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
