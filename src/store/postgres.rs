use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::rows::{EventRow, IdempotencyRow, OutboxRow, PaymentRow, RefundRow, TransactionRow};
use super::sql::{
    impl_store, list_payments_sql, EVENT_COLUMNS, IDEMPOTENCY_COLUMNS, OUTBOX_COLUMNS,
    PAYMENT_AND_TRANSACTION_SQL, PAYMENT_COLUMNS, PAYMENT_COLUMN_COUNT, REFUND_COLUMNS,
    TRANSACTION_COLUMNS, TRANSACTION_COLUMN_COUNT, TRANSACTION_WITH_PAYMENT_SQL,
};
use super::{millis, Backend, StoreError};
use crate::config::DatabaseSettings;
use crate::domain::{
    Change, DeliveryResult, DeliveryStatus, IdempotencyRecord, NewEvent, NewPayment, OutboxMessage,
    Payment, PaymentEvent, PaymentId, PaymentQuery, PaymentStatus, ProviderKind, Refund,
    Transaction,
};

/// PostgreSQL store: one pool; concurrency is settled by row locks and version checks.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(settings.min_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            // sqlx pings every connection it hands out by default: one extra round trip per
            // query. A broken connection surfaces as a query error instead, which callers handle.
            .test_before_acquire(false)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claimers skip rows another transaction has locked instead of waiting for them.
    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn create_payment_impl(
        &self,
        p: &NewPayment,
        event: &NewEvent,
        idem: Option<&IdempotencyRecord>,
    ) -> Result<Payment, StoreError> {
        super::postgres_batch::create_payment(&self.pool, p, event, idem).await?;
        Ok(Payment::from_new(p))
    }

    async fn apply_impl(&self, c: &Change) -> Result<(), StoreError> {
        if super::postgres_batch::supports(c) {
            super::postgres_batch::apply(&self.pool, c).await
        } else {
            generic_apply(&self.pool, c).await
        }
    }
}

impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
