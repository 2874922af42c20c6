-- Timestamps are BIGINT milliseconds since the Unix epoch (UTC) in both backends: Payme speaks
-- milliseconds, and one representation keeps the PostgreSQL and SQLite stores byte-identical.
-- JSON documents are TEXT for the same reason.

CREATE TABLE payments (
    id                 TEXT PRIMARY KEY,
    order_id           TEXT NOT NULL,
    provider           TEXT NOT NULL CHECK (provider IN ('payme', 'click', 'atmos', 'epay')),
    amount_minor       BIGINT NOT NULL CHECK (amount_minor > 0),
    currency           TEXT NOT NULL CHECK (currency IN ('UZS', 'KZT')),
    status             TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded',
                         'partially_refunded', 'refunded', 'canceled', 'failed', 'expired')),
    description        TEXT,
    return_url         TEXT,
    language           TEXT NOT NULL CHECK (language IN ('uz', 'ru', 'en')),
    metadata           TEXT NOT NULL,
    provider_data      TEXT NOT NULL,
    client_secret_hash TEXT NOT NULL,
    expires_at         BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    version            BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX payments_order_id_idx ON payments (order_id);
CREATE INDEX payments_status_expires_idx ON payments (status, expires_at);

CREATE TABLE transactions (
    id            TEXT PRIMARY KEY,
    payment_id    TEXT NOT NULL REFERENCES payments (id),
    provider      TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    state         TEXT NOT NULL,
    amount_minor  BIGINT NOT NULL,
    provider_time BIGINT,
    create_time   BIGINT,
    perform_time  BIGINT,
    cancel_time   BIGINT,
    reason        BIGINT,
    masked_card   TEXT,
    raw_status    TEXT,
    data          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT transactions_provider_external_id_key UNIQUE (provider, external_id)
);
CREATE INDEX transactions_payment_id_idx ON transactions (payment_id);
CREATE INDEX transactions_provider_time_idx ON transactions (provider, provider_time);

CREATE TABLE refunds (
    id           TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL REFERENCES payments (id),
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    external_id  TEXT,
    reason       TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX refunds_payment_id_idx ON refunds (payment_id);

CREATE TABLE payment_events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    payment_id  TEXT NOT NULL REFERENCES payments (id),
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX payment_events_payment_id_idx ON payment_events (payment_id, seq);

CREATE TABLE webhook_outbox (
    seq             BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    payment_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until    BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (status, next_attempt_at);

CREATE TABLE idempotency_keys (
    scope           TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    payment_id      TEXT,
    response_status BIGINT,
    response_body   TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Key-value settings that must survive restarts (e.g. a Payme key changed by ChangePassword).
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
