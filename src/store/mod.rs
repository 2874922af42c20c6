//! Persistence. One [`Store`] trait, two implementations (PostgreSQL and SQLite) that share
//! their SQL text through [`sql::impl_store`] and differ only in pool set-up and migrations.
//! No other module writes SQL.

mod pg_conns;
mod postgres;
mod postgres_batch;
mod recent;
mod rows;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::DatabaseSettings;
use crate::domain::{
    Change, DeliveryResult, DeliveryStatus, EventPosition, IdempotencyRecord, NewEvent, NewPayment,
    OutboxMessage, Payment, PaymentEvent, PaymentId, PaymentQuery, PaymentStatus, ProviderKind,
    Recheck, Refund, Transaction,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-set guard did not hold: someone else changed the row first.
    #[error("concurrent update of {0}")]
    Conflict(&'static str),
    /// A unique constraint refused the insert; the name says which.
    #[error("duplicate {0}")]
    Duplicate(String),
    /// A guarded insert would exceed a limit (refunds beyond the payment's amount).
    #[error("{0} would exceed its limit")]
    LimitExceeded(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The database could not be reached (no connection in time, I/O, TLS, a closed pool): every
    /// other call would fail the same way, unlike a refusal of one row's change.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // The server says so itself: connection exceptions (class 08), shutting down or
            // starting up (57P01–57P03), too many connections (53300), the login refused
            // (28000, 28P01).
            StoreError::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(
                        &*code,
                        "57P01" | "57P02" | "57P03" | "53300" | "28000" | "28P01"
                    )
            }),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                let name = db
                    .constraint()
                    .map(str::to_owned)
                    .unwrap_or_else(|| db.message().to_owned());
                return StoreError::Duplicate(name);
            }
        }
        StoreError::Database(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts the payment with its `payment.created` event and, if given, the idempotency
    /// key that claims it, all in one transaction. A taken key is `Duplicate("idempotency_keys")`
    /// and leaves no payment behind.
    async fn create_payment(
        &self,
        payment: &NewPayment,
        event: &NewEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<Payment, StoreError>;
    async fn get_payment(&self, id: &PaymentId) -> Result<Option<Payment>, StoreError>;
    /// This process's last copy of a payment it wrote or read (see `store::recent`). Possibly
    /// stale: use it only as the expected state of a compare-and-set [`Change`], never as an
    /// answer, and decide again from a fresh read when the change is refused.
    fn recent_payment(&self, id: &PaymentId) -> Option<Payment>;
    /// This process's last copies of a provider transaction and its payment; possibly stale,
    /// like [`Store::recent_payment`].
    fn recent_transaction_with_payment(
        &self,
        provider: ProviderKind,
        external_id: &str,
    ) -> Option<(Transaction, Payment)>;
    /// Newest first; `limit` rows at most.
    async fn list_payments(&self, query: &PaymentQuery) -> Result<Vec<Payment>, StoreError>;
    async fn count_payments_by_status(&self) -> Result<Vec<(PaymentStatus, i64)>, StoreError>;
    /// Open payments whose `expires_at` is before `now`, by deadline (then id), after `after`
    /// (the last payment of the previous page, as read).
    async fn list_expired_open_payments(
        &self,
        now: DateTime<Utc>,
        after: Option<&Payment>,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError>;

    /// Payments whose outcome may be waiting at their provider: in `processing` and last
    /// changed before `updated_before`, or `pending` at a provider whose payer pays on its own
    /// page ([`crate::domain::ProviderKind::pending_may_be_paid`]), created before it, and with
    /// a deadline after it. Oldest change (then id) first, after `after` (the last payment of
    /// the previous page, as read).
    async fn list_stale_unsettled(
        &self,
        updated_before: DateTime<Utc>,
        after: Option<&Payment>,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError>;

    /// Applies a [`Change`] atomically: compare-and-set updates, inserts, events and outbox rows
    /// commit together or not at all.
    async fn apply(&self, change: &Change) -> Result<(), StoreError>;

    async fn list_events(&self, payment_id: &PaymentId) -> Result<Vec<PaymentEvent>, StoreError>;
    /// Every payment's events, oldest first, after the given position (`GET /v1/events`).
    async fn list_all_events(
        &self,
        after: EventPosition,
        limit: u32,
    ) -> Result<Vec<PaymentEvent>, StoreError>;

    /// Claims up to `limit` due outbox rows until `lease_until` (ms): pending, due, not claimed
    /// by a live lease, and the oldest undelivered row of their payment (events of one payment
    /// go out in order). Concurrent claimers never get the same row.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Records an attempt; false if the claim was lost (another dispatcher owns the row now).
    async fn record_delivery(&self, result: &DeliveryResult) -> Result<bool, StoreError>;
    /// Deletes up to `limit` delivered messages created before `created_before` (oldest first;
    /// pending and dead ones stay); returns how many.
    async fn prune_delivered_outbox(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    async fn list_outbox(
        &self,
        status: Option<DeliveryStatus>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    async fn get_outbox(&self, seq: i64) -> Result<Option<OutboxMessage>, StoreError>;
    /// A dead message becomes due again now; false if it was not dead.
    async fn retry_outbox(&self, seq: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;

    async fn get_transaction(
        &self,
        provider: ProviderKind,
        external_id: &str,
    ) -> Result<Option<Transaction>, StoreError>;
    /// A provider transaction together with its payment, in one read (a join).
    async fn get_transaction_with_payment(
        &self,
        provider: ProviderKind,
        external_id: &str,
    ) -> Result<Option<(Transaction, Payment)>, StoreError>;
    /// A payment and a provider transaction looked up independently but in one read; either
    /// may be absent, and the transaction need not belong to the payment.
    async fn get_payment_and_transaction(
        &self,
        payment_id: &PaymentId,
        provider: ProviderKind,
        external_id: &str,
    ) -> Result<(Option<Payment>, Option<Transaction>), StoreError>;
    async fn list_transactions(
        &self,
        payment_id: &PaymentId,
    ) -> Result<Vec<Transaction>, StoreError>;
    /// Transactions of a provider whose `provider_time` lies in `[from, to]`, ascending
    /// (Payme GetStatement).
    async fn list_transactions_by_provider_time(
        &self,
        provider: ProviderKind,
        from: i64,
        to: i64,
    ) -> Result<Vec<Transaction>, StoreError>;

    async fn list_refunds(&self, payment_id: &PaymentId) -> Result<Vec<Refund>, StoreError>;

    /// Refunds still `pending` whose last change is before `updated_before`, oldest change
    /// (then id) first, after `after` (the last refund of the previous page).
    async fn list_stale_pending_refunds(
        &self,
        updated_before: DateTime<Utc>,
        after: Option<&Refund>,
        limit: u32,
    ) -> Result<Vec<Refund>, StoreError>;

    /// Rechecks due at `now`, earliest first (see [`crate::domain::Recheck`]).
    async fn due_rechecks(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Recheck>, StoreError>;
    /// Moves the recheck as read to `due_at` (one more attempt when `counted`) and returns it as
    /// stored now; `None` if it changed since (another worker took it, or a new one was
    /// scheduled). Taking a due recheck this way first is how one worker of several asks the
    /// provider.
    async fn postpone_recheck(
        &self,
        seen: &Recheck,
        due_at: DateTime<Utc>,
        now: DateTime<Utc>,
        counted: bool,
    ) -> Result<Option<Recheck>, StoreError>;
    /// Deletes the recheck as read; a newer one scheduled meanwhile stays.
    async fn finish_recheck(&self, seen: &Recheck) -> Result<(), StoreError>;

    async fn get_idempotency_key(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Claims a key for a request that is about to run; false if the key already exists.
    async fn claim_idempotency_key(&self, record: &IdempotencyRecord) -> Result<bool, StoreError>;
    /// Frees a claimed key whose request failed on our side, so the client may retry it.
    async fn delete_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError>;
    /// Records the response of the request that owns the key (only once).
    async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;

    /// The next value (1, 2, 3, …) of a named counter; each call gets a different value, also
    /// across instances.
    async fn next_number(&self, name: &str) -> Result<i64, StoreError> {
        self.next_number_from(name, 1).await
    }

    /// [`Store::next_number`] for a counter whose first value is `first` (`first`, `first` + 1,
    /// …); `first` matters only on the counter's first use.
    async fn next_number_from(&self, name: &str, first: i64) -> Result<i64, StoreError>;

    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    async fn put_setting(
        &self,
        name: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// Opens the database named by the settings (`postgres://…` or `sqlite://…`) and applies
/// pending migrations.
pub async fn connect(settings: &DatabaseSettings) -> Result<Arc<dyn Store>, StoreError> {
    use secrecy::ExposeSecret;
    let url = settings.url.expose_secret();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, settings).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url, settings).await?))
    }
}

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")))
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    /// The workers end a pass on these (every next row would fail alike) and go on past the
    /// others (one row's change refused).
    #[test]
    fn only_an_unreachable_database_is_unavailable() {
        for down in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
        ] {
            assert!(StoreError::Database(down).is_unavailable());
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(StoreError::Database(sqlx::Error::Io(io)).is_unavailable());
        for refused in [
            StoreError::Conflict("payment"),
            StoreError::Duplicate("x".into()),
            StoreError::Corrupt("x".into()),
            StoreError::Database(sqlx::Error::RowNotFound),
        ] {
            assert!(!refused.is_unavailable(), "{refused}");
        }
    }
}
