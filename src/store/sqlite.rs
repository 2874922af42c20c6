use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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

/// SQLite store (the embedded default). SQLite allows one writer at a time and a deferred
/// transaction that reads before it writes can fail with SQLITE_BUSY instead of waiting, so all
/// writes go through a one-connection pool (queued in-process, never "database is locked"),
/// while reads use their own pool and see committed data through WAL.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    recent: Arc<RecentRows>,
}

impl SqliteStore {
    pub async fn connect(url: &str, settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit tolov has answered for survives a power loss too (NORMAL in WAL
            // mode can lose the last commits to one, and with them a refund already made).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let acquire = Duration::from_secs(settings.acquire_timeout_secs);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        // An in-memory database exists once per connection, so it cannot have a second pool.
        let reader = if url.contains(":memory:") || url.contains("mode=memory") {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(acquire)
                .test_before_acquire(false)
                .connect_with(options.read_only(true))
                .await?
        };
        Ok(SqliteStore {
            writer,
            reader,
            recent: Arc::default(),
        })
    }

    /// SQLite has one writer, so a claim is never concurrent with another.
    const SKIP_LOCKED: &'static str = "";

    /// One writer: events commit in `seq` order and `tx` is always 0.
    const EVENTS_AFTER: &'static str = "WHERE tx >= $1 AND seq > $2 ORDER BY seq";

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn create_payment_impl(
        &self,
        p: &NewPayment,
        event: &NewEvent,
        idem: Option<&IdempotencyRecord>,
    ) -> Result<Payment, StoreError> {
        generic_create_payment(&self.writer, p, event, idem).await
    }

    async fn apply_impl(&self, c: &Change) -> Result<(), StoreError> {
        generic_apply(&self.writer, c).await
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit tolov has answered for (a refund, a payment paid) must survive a power loss,
    /// not only a crash of the process: in WAL mode `synchronous = NORMAL` can roll the last
    /// commits back after one. 2 is FULL.
    #[tokio::test]
    async fn commits_are_synced_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let settings = crate::config::Settings::sandbox_defaults()
            .expect("defaults")
            .database;
        let store = SqliteStore::connect(&url, &settings)
            .await
            .expect("connect");
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(level, 2);
    }
}
