use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::pg_conns::PgConns;
use super::recent::RecentRows;

use super::rows::{EventRow, IdempotencyRow, OutboxRow, PaymentRow, RefundRow, TransactionRow};
use super::sql::{
    impl_store, list_payments_sql, EVENT_COLUMNS, IDEMPOTENCY_COLUMNS, OUTBOX_COLUMNS,
    PAYMENT_AND_TRANSACTION_SQL, PAYMENT_COLUMNS, RECHECK_COLUMNS, REFUND_COLUMNS,
    TRANSACTION_COLUMNS, TRANSACTION_WITH_PAYMENT_SQL,
};
use super::{millis, Backend, StoreError};
use crate::config::DatabaseSettings;
use crate::domain::{
    Change, DeliveryResult, DeliveryStatus, EventPosition, IdempotencyRecord, NewEvent, NewPayment,
    OutboxMessage, Payment, PaymentEvent, PaymentId, PaymentQuery, PaymentStatus, ProviderKind,
    Refund, Transaction,
};

/// PostgreSQL store; concurrency is settled by row locks and version checks. Single
/// statements (nearly everything) run on [`PgConns`]; multi-statement transactions and
/// migrations on a small sqlx pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    conns: Arc<PgConns>,
    recent: Arc<RecentRows>,
}

impl PgStore {
    pub async fn connect(url: &str, settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let acquire_timeout = Duration::from_secs(settings.acquire_timeout_secs);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.div_ceil(4).max(2))
            .min_connections(settings.min_connections.min(2))
            .acquire_timeout(acquire_timeout)
            // sqlx pings every connection it hands out by default: one extra round trip per
            // query. A broken connection surfaces as a query error instead, which callers handle.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let conns = PgConns::new(options, settings.max_connections, acquire_timeout);
        Ok(PgStore {
            pool,
            conns: Arc::new(conns),
            recent: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claimers skip rows another transaction has locked instead of waiting for them.
    const SKIP_LOCKED: &'static str = "FOR UPDATE SKIP LOCKED";

    /// Events after a position ($1, $2), once every transaction that could still add one before
    /// them has finished (see `EventPosition`).
    const EVENTS_AFTER: &'static str = "WHERE (tx, seq) > ($1, $2) \
        AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY tx, seq";

    fn read_pool(&self) -> &PgConns {
        &self.conns
    }

    fn write_pool(&self) -> &PgConns {
        &self.conns
    }

    async fn create_payment_impl(
        &self,
        p: &NewPayment,
        event: &NewEvent,
        idem: Option<&IdempotencyRecord>,
    ) -> Result<Payment, StoreError> {
        super::postgres_batch::create_payment(&self.conns, p, event, idem).await?;
        Ok(Payment::from_new(p))
    }

    async fn apply_impl(&self, c: &Change) -> Result<(), StoreError> {
        if super::postgres_batch::supports(c) {
            super::postgres_batch::apply(&self.conns, c).await
        } else {
            generic_apply(&self.pool, c).await
        }
    }
}

impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
