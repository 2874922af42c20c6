//! The SQL both backends run. PostgreSQL and SQLite accept the same statements here (`$n`
//! parameters, `ON CONFLICT`, `RETURNING`), so the text is written once and instantiated for
//! each backend's pool type by [`impl_store`].

use std::sync::LazyLock;

use super::rows::{PaymentRow, TransactionRow};

pub(crate) const PAYMENT_COLUMNS: &str = PaymentRow::COLUMNS;

pub(crate) const TRANSACTION_COLUMNS: &str = TransactionRow::COLUMNS;

pub(crate) const EVENT_COLUMNS: &str =
    "tx, seq, id, payment_id, kind, from_status, to_status, actor, reason, data, created_at";

pub(crate) const REFUND_COLUMNS: &str =
    "id, payment_id, amount_minor, status, external_id, reason, created_at, updated_at";

pub(crate) const OUTBOX_COLUMNS: &str = "seq, event_id, payment_id, event_type, payload, status, \
    attempts, next_attempt_at, locked_until, last_status, last_error, created_at, updated_at";

pub(crate) const RECHECK_COLUMNS: &str = "payment_id, due_at, attempts, reason, updated_at";

pub(crate) const IDEMPOTENCY_COLUMNS: &str =
    "scope, key, request_hash, payment_id, response_status, response_body, created_at";

/// `PAYMENT_COLUMNS` or `TRANSACTION_COLUMNS` qualified with a table alias, for joins.
fn qualified(alias: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Transaction columns, then payment columns: a provider transaction with its payment.
pub(crate) static TRANSACTION_WITH_PAYMENT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM transactions t JOIN payments p ON p.id = t.payment_id \
         WHERE t.provider = $1 AND t.external_id = $2",
        qualified("t", TRANSACTION_COLUMNS),
        qualified("p", PAYMENT_COLUMNS)
    )
});

/// Payment columns, then transaction columns, each side NULL when absent: one row always.
pub(crate) static PAYMENT_AND_TRANSACTION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM (SELECT 1 AS one) AS one \
         LEFT JOIN payments p ON p.id = $1 \
         LEFT JOIN transactions t ON t.provider = $2 AND t.external_id = $3",
        qualified("p", PAYMENT_COLUMNS),
        qualified("t", TRANSACTION_COLUMNS)
    )
});

/// Builds `SELECT … FROM payments` with the query's filters as numbered parameters.
pub(crate) fn list_payments_sql(q: &crate::domain::PaymentQuery) -> String {
    let mut sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE 1 = 1");
    let mut n = 0;
    let mut param = |sql: &mut String, clause: &str| {
        n += 1;
        sql.push_str(&format!(" AND {clause} ${n}"));
    };
    if q.order_id.is_some() {
        param(&mut sql, "order_id =");
    }
    if q.status.is_some() {
        param(&mut sql, "status =");
    }
    if q.provider.is_some() {
        param(&mut sql, "provider =");
    }
    if q.starting_after.is_some() {
        param(&mut sql, "id <");
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", q.limit));
    sql
}

/// The keyset position after a page's last row, given as its ordering time and id; before
/// everything when there is no previous page.
pub(crate) fn page_cursor(after: Option<(chrono::DateTime<chrono::Utc>, &str)>) -> (i64, String) {
    match after {
        Some((at, id)) => (super::millis(at), id.to_owned()),
        None => (i64::MIN, String::new()),
    }
}

/// Implements [`super::Store`] for a type with `read_pool()` / `write_pool()` methods over a
/// sqlx pool of database `$db`.
macro_rules! impl_store {
    ($ty:ty, $db:ty, $backend:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $ty {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.read_pool()).await?;
                Ok(())
            }

            #[tracing::instrument(skip_all, fields(payment_id = %p.id))]
            async fn create_payment(
                &self,
                p: &NewPayment,
                event: &NewEvent,
                idem: Option<&IdempotencyRecord>,
            ) -> Result<Payment, StoreError> {
                let payment = self.create_payment_impl(p, event, idem).await?;
                self.recent.remember_payment(&payment);
                Ok(payment)
            }

            async fn get_payment(&self, id: &PaymentId) -> Result<Option<Payment>, StoreError> {
                let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
                let payment = sqlx::query_as::<$db, PaymentRow>(&sql)
                    .bind(id.as_str())
                    .fetch_optional(self.read_pool())
                    .await?
                    .map(Payment::try_from)
                    .transpose()?;
                if let Some(p) = &payment {
                    self.recent.remember_payment(p);
                }
                Ok(payment)
            }

            fn recent_payment(&self, id: &PaymentId) -> Option<Payment> {
                self.recent.payment(id)
            }

            fn recent_transaction_with_payment(
                &self,
                provider: ProviderKind,
                external_id: &str,
            ) -> Option<(Transaction, Payment)> {
                self.recent.transaction_with_payment(provider, external_id)
            }

            async fn list_payments(&self, q: &PaymentQuery) -> Result<Vec<Payment>, StoreError> {
                let sql = list_payments_sql(q);
                let mut query = sqlx::query_as::<$db, PaymentRow>(&sql);
                if let Some(v) = &q.order_id {
                    query = query.bind(v);
                }
                if let Some(v) = q.status {
                    query = query.bind(v.as_str());
                }
                if let Some(v) = q.provider {
                    query = query.bind(v.as_str());
                }
                if let Some(v) = &q.starting_after {
                    query = query.bind(v.as_str());
                }
                query
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Payment::try_from)
                    .collect()
            }

            async fn count_payments_by_status(
                &self,
            ) -> Result<Vec<(PaymentStatus, i64)>, StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT status, COUNT(*) FROM payments GROUP BY status")
                        .fetch_all(self.read_pool())
                        .await?;
                rows.into_iter()
                    .map(|(s, n)| {
                        s.parse::<PaymentStatus>()
                            .map(|st| (st, n))
                            .map_err(|_| StoreError::Corrupt(format!("status `{s}`")))
                    })
                    .collect()
            }

            async fn list_expired_open_payments(
                &self,
                now: DateTime<Utc>,
                after: Option<&Payment>,
                limit: u32,
            ) -> Result<Vec<Payment>, StoreError> {
                let sql = format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments \
                     WHERE status IN ('pending', 'processing') AND expires_at < $1 \
                     AND (expires_at > $2 OR (expires_at = $2 AND id > $3)) \
                     ORDER BY expires_at, id LIMIT {limit}"
                );
                let (key, id) =
                    $crate::store::sql::page_cursor(after.map(|p| (p.expires_at, p.id.as_str())));
                sqlx::query_as::<$db, PaymentRow>(&sql)
                    .bind(millis(now))
                    .bind(key)
                    .bind(id)
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Payment::try_from)
                    .collect()
            }

            async fn list_stale_unsettled(
                &self,
                updated_before: DateTime<Utc>,
                after: Option<&Payment>,
                limit: u32,
            ) -> Result<Vec<Payment>, StoreError> {
                // The IN lets PostgreSQL use the partial index of open payments. A pending one
                // is due by its age, not its last change (a renewed widget token changes it),
                // and only until about its deadline, where expiry asks instead.
                let pending_at = $crate::domain::ProviderKind::ALL
                    .iter()
                    .filter(|p| p.pending_may_be_paid())
                    .map(|p| format!("'{}'", p.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments \
                     WHERE status IN ('pending', 'processing') \
                     AND ((status = 'processing' AND updated_at < $1) \
                          OR (status = 'pending' AND provider IN ({pending_at}) \
                              AND created_at < $1 AND expires_at > $1)) \
                     AND (updated_at > $2 OR (updated_at = $2 AND id > $3)) \
                     ORDER BY updated_at, id LIMIT {limit}"
                );
                let (key, id) =
                    $crate::store::sql::page_cursor(after.map(|p| (p.updated_at, p.id.as_str())));
                sqlx::query_as::<$db, PaymentRow>(&sql)
                    .bind(millis(updated_before))
                    .bind(key)
                    .bind(id)
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Payment::try_from)
                    .collect()
            }

            #[tracing::instrument(skip_all)]
            async fn apply(&self, c: &Change) -> Result<(), StoreError> {
                let result = self.apply_impl(c).await;
                // After any failure the outcome may be unknown (a lost connection after
                // COMMIT): forgetting the rows is right either way.
                match &result {
                    Ok(()) => self.recent.applied(c),
                    Err(_) => self.recent.refused(c),
                }
                result
            }

            async fn list_events(
                &self,
                payment_id: &PaymentId,
            ) -> Result<Vec<PaymentEvent>, StoreError> {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM payment_events WHERE payment_id = $1 ORDER BY seq"
                );
                sqlx::query_as::<$db, EventRow>(&sql)
                    .bind(payment_id.as_str())
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(PaymentEvent::try_from)
                    .collect()
            }

            async fn list_all_events(&self, after: EventPosition, limit: u32) -> Result<Vec<PaymentEvent>, StoreError> {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM payment_events {} LIMIT {limit}",
                    Self::EVENTS_AFTER
                );
                sqlx::query_as::<$db, EventRow>(&sql)
                    .bind(after.tx)
                    .bind(after.seq)
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(PaymentEvent::try_from)
                    .collect()
            }

            async fn claim_outbox(&self, now: DateTime<Utc>, lease_until: i64, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
                let sql = format!(
                    "UPDATE webhook_outbox SET locked_until = $1 WHERE seq IN ( \
                       SELECT o.seq FROM webhook_outbox o \
                       WHERE o.status = 'pending' AND o.next_attempt_at <= $2 \
                         AND (o.locked_until IS NULL OR o.locked_until <= $2) \
                         AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.payment_id = o.payment_id \
                                         AND e.status = 'pending' AND e.seq < o.seq) \
                       ORDER BY o.next_attempt_at, o.seq LIMIT {limit} {}) \
                     RETURNING {OUTBOX_COLUMNS}",
                    Self::SKIP_LOCKED
                );
                let mut rows: Vec<OutboxMessage> = sqlx::query_as::<$db, OutboxRow>(&sql)
                    .bind(lease_until)
                    .bind(millis(now))
                    .fetch_all(self.write_pool())
                    .await?
                    .into_iter()
                    .map(OutboxMessage::try_from)
                    .collect::<Result<_, _>>()?;
                rows.sort_by_key(|m| m.seq);
                Ok(rows)
            }

            async fn record_delivery(&self, r: &DeliveryResult) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "UPDATE webhook_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
                     last_status = $3, last_error = $4, updated_at = $5, locked_until = NULL \
                     WHERE seq = $6 AND locked_until = $7 AND status = 'pending'",
                )
                .bind(r.status.as_str())
                .bind(millis(r.next_attempt_at))
                .bind(r.http_status)
                .bind(&r.error)
                .bind(millis(r.now))
                .bind(r.seq)
                .bind(r.claimed_until)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn prune_delivered_outbox(&self, created_before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
                // Messages are numbered in creation order, so the old ones are those below the
                // first young one: a key range, not a scan of the whole retention window.
                let sql = format!(
                    "DELETE FROM webhook_outbox WHERE seq IN ( \
                       SELECT seq FROM webhook_outbox WHERE status = 'delivered' AND seq < COALESCE( \
                         (SELECT seq FROM webhook_outbox WHERE created_at >= $1 ORDER BY seq LIMIT 1), \
                         9223372036854775807) \
                       ORDER BY seq LIMIT {limit})"
                );
                Ok(sqlx::query(&sql)
                    .bind(millis(created_before))
                    .execute(self.write_pool())
                    .await?
                    .rows_affected())
            }

            async fn list_outbox(&self, status: Option<DeliveryStatus>, after_seq: i64, limit: u32) -> Result<Vec<OutboxMessage>, StoreError> {
                let filter = if status.is_some() { "AND status = $2" } else { "" };
                let sql = format!(
                    "SELECT {OUTBOX_COLUMNS} FROM webhook_outbox WHERE seq > $1 {filter} ORDER BY seq LIMIT {limit}"
                );
                let mut q = sqlx::query_as::<$db, OutboxRow>(&sql).bind(after_seq);
                if let Some(s) = status {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(OutboxMessage::try_from)
                    .collect()
            }

            async fn get_outbox(&self, seq: i64) -> Result<Option<OutboxMessage>, StoreError> {
                let sql = format!("SELECT {OUTBOX_COLUMNS} FROM webhook_outbox WHERE seq = $1");
                sqlx::query_as::<$db, OutboxRow>(&sql)
                    .bind(seq)
                    .fetch_optional(self.read_pool())
                    .await?
                    .map(OutboxMessage::try_from)
                    .transpose()
            }

            async fn retry_outbox(&self, seq: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "UPDATE webhook_outbox SET status = 'pending', next_attempt_at = $1, updated_at = $1, \
                     locked_until = NULL WHERE seq = $2 AND status = 'dead'",
                )
                .bind(millis(now))
                .bind(seq)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn get_transaction(
                &self,
                provider: ProviderKind,
                external_id: &str,
            ) -> Result<Option<Transaction>, StoreError> {
                let sql = format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE provider = $1 AND external_id = $2"
                );
                sqlx::query_as::<$db, TransactionRow>(&sql)
                    .bind(provider.as_str())
                    .bind(external_id)
                    .fetch_optional(self.read_pool())
                    .await?
                    .map(Transaction::try_from)
                    .transpose()
            }

            async fn get_transaction_with_payment(
                &self,
                provider: ProviderKind,
                external_id: &str,
            ) -> Result<Option<(Transaction, Payment)>, StoreError> {
                let row = sqlx::query(TRANSACTION_WITH_PAYMENT_SQL.as_str())
                    .bind(provider.as_str())
                    .bind(external_id)
                    .fetch_optional(self.read_pool())
                    .await?;
                let Some(row) = row else { return Ok(None) };
                match (
                    TransactionRow::read_at(&row, 0)?,
                    PaymentRow::read_at(&row, TransactionRow::COLUMN_COUNT)?,
                ) {
                    (Some(t), Some(p)) => {
                        let (t, p): (Transaction, Payment) = (t.try_into()?, p.try_into()?);
                        self.recent.remember_transaction(&t);
                        self.recent.remember_payment(&p);
                        Ok(Some((t, p)))
                    }
                    _ => Ok(None),
                }
            }

            async fn get_payment_and_transaction(
                &self,
                payment_id: &PaymentId,
                provider: ProviderKind,
                external_id: &str,
            ) -> Result<(Option<Payment>, Option<Transaction>), StoreError> {
                let row = sqlx::query(PAYMENT_AND_TRANSACTION_SQL.as_str())
                    .bind(payment_id.as_str())
                    .bind(provider.as_str())
                    .bind(external_id)
                    .fetch_one(self.read_pool())
                    .await?;
                let payment = PaymentRow::read_at(&row, 0)?.map(Payment::try_from).transpose()?;
                let tx = TransactionRow::read_at(&row, PaymentRow::COLUMN_COUNT)?
                    .map(Transaction::try_from)
                    .transpose()?;
                if let Some(p) = &payment {
                    self.recent.remember_payment(p);
                }
                if let Some(t) = &tx {
                    self.recent.remember_transaction(t);
                }
                Ok((payment, tx))
            }

            async fn list_transactions(
                &self,
                payment_id: &PaymentId,
            ) -> Result<Vec<Transaction>, StoreError> {
                let sql = format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE payment_id = $1 \
                     ORDER BY created_at, id"
                );
                sqlx::query_as::<$db, TransactionRow>(&sql)
                    .bind(payment_id.as_str())
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Transaction::try_from)
                    .collect()
            }

            async fn list_transactions_by_provider_time(
                &self,
                provider: ProviderKind,
                from: i64,
                to: i64,
            ) -> Result<Vec<Transaction>, StoreError> {
                let sql = format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE provider = $1 \
                     AND provider_time >= $2 AND provider_time <= $3 ORDER BY provider_time, id"
                );
                sqlx::query_as::<$db, TransactionRow>(&sql)
                    .bind(provider.as_str())
                    .bind(from)
                    .bind(to)
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Transaction::try_from)
                    .collect()
            }

            async fn list_refunds(&self, payment_id: &PaymentId) -> Result<Vec<Refund>, StoreError> {
                let sql = format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, id"
                );
                sqlx::query_as::<$db, RefundRow>(&sql)
                    .bind(payment_id.as_str())
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Refund::try_from)
                    .collect()
            }

            async fn list_stale_pending_refunds(
                &self,
                updated_before: DateTime<Utc>,
                after: Option<&Refund>,
                limit: u32,
            ) -> Result<Vec<Refund>, StoreError> {
                let sql = format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds \
                     WHERE status = 'pending' AND updated_at < $1 \
                     AND (updated_at > $2 OR (updated_at = $2 AND id > $3)) \
                     ORDER BY updated_at, id LIMIT {limit}"
                );
                let (key, id) =
                    $crate::store::sql::page_cursor(after.map(|r| (r.updated_at, r.id.as_str())));
                sqlx::query_as::<$db, RefundRow>(&sql)
                    .bind(millis(updated_before))
                    .bind(key)
                    .bind(id)
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map(Refund::try_from)
                    .collect()
            }

            async fn due_rechecks(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::domain::Recheck>, StoreError> {
                let sql = format!(
                    "SELECT {RECHECK_COLUMNS} FROM payment_rechecks WHERE due_at <= $1 \
                     ORDER BY due_at, payment_id LIMIT {limit}"
                );
                sqlx::query_as::<$db, $crate::store::rows::RecheckRow>(&sql)
                    .bind(millis(now))
                    .fetch_all(self.read_pool())
                    .await?
                    .into_iter()
                    .map($crate::domain::Recheck::try_from)
                    .collect()
            }

            async fn postpone_recheck(
                &self,
                seen: &$crate::domain::Recheck,
                due_at: DateTime<Utc>,
                now: DateTime<Utc>,
                counted: bool,
            ) -> Result<Option<$crate::domain::Recheck>, StoreError> {
                // updated_at must move even within one millisecond: it is the version.
                let sql = format!(
                    "UPDATE payment_rechecks SET due_at = $1, attempts = attempts + $5, \
                     updated_at = CASE WHEN $2 > updated_at THEN $2 ELSE updated_at + 1 END \
                     WHERE payment_id = $3 AND updated_at = $4 RETURNING {RECHECK_COLUMNS}"
                );
                sqlx::query_as::<$db, $crate::store::rows::RecheckRow>(&sql)
                    .bind(millis(due_at))
                    .bind(millis(now))
                    .bind(seen.payment_id.as_str())
                    .bind(millis(seen.updated_at))
                    .bind(i64::from(counted))
                    .fetch_optional(self.write_pool())
                    .await?
                    .map($crate::domain::Recheck::try_from)
                    .transpose()
            }

            async fn finish_recheck(&self, seen: &$crate::domain::Recheck) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM payment_rechecks WHERE payment_id = $1 AND updated_at = $2")
                    .bind(seen.payment_id.as_str())
                    .bind(millis(seen.updated_at))
                    .execute(self.write_pool())
                    .await?;
                Ok(())
            }

            async fn get_idempotency_key(
                &self,
                scope: &str,
                key: &str,
            ) -> Result<Option<IdempotencyRecord>, StoreError> {
                let sql = format!(
                    "SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE scope = $1 AND key = $2"
                );
                sqlx::query_as::<$db, IdempotencyRow>(&sql)
                    .bind(scope)
                    .bind(key)
                    .fetch_optional(self.read_pool())
                    .await?
                    .map(IdempotencyRecord::try_from)
                    .transpose()
            }

            async fn claim_idempotency_key(&self, k: &IdempotencyRecord) -> Result<bool, StoreError> {
                let n = sqlx::query(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, payment_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
                )
                .bind(&k.scope)
                .bind(&k.key)
                .bind(&k.request_hash)
                .bind(k.payment_id.as_ref().map(|p| p.as_str()))
                .bind(millis(k.created_at))
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn delete_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND response_status IS NULL")
                    .bind(scope)
                    .bind(key)
                    .execute(self.write_pool())
                    .await?;
                Ok(())
            }

            async fn complete_idempotency_key(
                &self,
                scope: &str,
                key: &str,
                status: u16,
                body: &str,
            ) -> Result<(), StoreError> {
                let n = sqlx::query(
                    "UPDATE idempotency_keys SET response_status = $1, response_body = $2 \
                     WHERE scope = $3 AND key = $4 AND response_status IS NULL",
                )
                .bind(i64::from(status))
                .bind(body)
                .bind(scope)
                .bind(key)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(StoreError::Conflict("idempotency key"));
                }
                Ok(())
            }

            async fn next_number_from(&self, name: &str, first: i64) -> Result<i64, StoreError> {
                let (value,): (i64,) = sqlx::query_as(
                    "INSERT INTO counters (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value",
                )
                .bind(name)
                .bind(first)
                .fetch_one(self.write_pool())
                .await?;
                Ok(value)
            }

            async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
                let v: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE name = $1")
                    .bind(name)
                    .fetch_optional(self.read_pool())
                    .await?;
                Ok(v.map(|(v,)| v))
            }

            async fn put_setting(
                &self,
                name: &str,
                value: &str,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(name)
                .bind(value)
                .bind(millis(now))
                .execute(self.write_pool())
                .await?;
                Ok(())
            }
        }


        /// The portable form of `Store::create_payment`: one statement per row, one transaction.
        #[allow(dead_code)]
        async fn generic_create_payment(
            pool: &sqlx::Pool<$db>,
            p: &NewPayment,
            event: &NewEvent,
            idem: Option<&IdempotencyRecord>,
        ) -> Result<Payment, StoreError> {
                let mut tx = pool.begin().await?;
                if let Some(k) = idem {
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (scope, key, request_hash, payment_id, \
                         response_status, response_body, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, key) DO NOTHING",
                    )
                    .bind(&k.scope)
                    .bind(&k.key)
                    .bind(&k.request_hash)
                    .bind(p.id.as_str())
                    .bind(k.response_status.map(i64::from))
                    .bind(&k.response_body)
                    .bind(millis(k.created_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 0 {
                        return Err(StoreError::Duplicate("idempotency_keys".to_owned()));
                    }
                }
                sqlx::query(
                    "INSERT INTO payments (id, order_id, provider, amount_minor, currency, status, \
                     description, return_url, language, metadata, provider_data, client_secret_hash, \
                     expires_at, created_at, updated_at, version) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12, $13, $13, 0)",
                )
                .bind(p.id.as_str())
                .bind(&p.order_id)
                .bind(p.provider.as_str())
                .bind(p.amount.minor())
                .bind(p.amount.currency().code())
                .bind(&p.description)
                .bind(&p.return_url)
                .bind(p.language.as_str())
                .bind(p.metadata.to_string())
                .bind(p.provider_data.to_string())
                .bind(&p.client_secret_hash)
                .bind(millis(p.expires_at))
                .bind(millis(p.created_at))
                .execute(&mut *tx)
                .await?;
                insert_event(&mut tx, event).await?;
                tx.commit().await?;
                Ok(Payment::from_new(p))
            }

        /// The portable form of `Store::apply`: one statement per part, one transaction.
        async fn generic_apply(pool: &sqlx::Pool<$db>, c: &Change) -> Result<(), StoreError> {
                let mut tx = pool.begin().await?;
                if let Some(u) = &c.payment {
                    let n = sqlx::query(
                        "UPDATE payments SET status = $1, provider_data = COALESCE($2, provider_data), \
                         updated_at = $3, version = version + 1 WHERE id = $4 AND version = $5",
                    )
                    .bind(u.status.as_str())
                    .bind(u.provider_data.as_ref().map(|v| v.to_string()))
                    .bind(millis(u.now))
                    .bind(u.id.as_str())
                    .bind(u.expected_version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Err(StoreError::Conflict("payment"));
                    }
                }
                if let Some(t) = &c.insert_transaction {
                    let n = sqlx::query(
                        "INSERT INTO transactions (id, payment_id, provider, external_id, state, \
                         amount_minor, provider_time, create_time, perform_time, cancel_time, reason, \
                         masked_card, raw_status, data, created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, 0) \
                         ON CONFLICT (provider, external_id) DO NOTHING",
                    )
                    .bind(t.id.as_str())
                    .bind(t.payment_id.as_str())
                    .bind(t.provider.as_str())
                    .bind(&t.external_id)
                    .bind(&t.state)
                    .bind(t.amount_minor)
                    .bind(t.provider_time)
                    .bind(t.create_time)
                    .bind(t.perform_time)
                    .bind(t.cancel_time)
                    .bind(t.reason)
                    .bind(&t.masked_card)
                    .bind(&t.raw_status)
                    .bind(t.data.to_string())
                    .bind(millis(t.created_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Err(StoreError::Duplicate(
                            "transactions_provider_external_id_key".to_owned(),
                        ));
                    }
                }
                if let Some(u) = &c.update_transaction {
                    let n = sqlx::query(
                        "UPDATE transactions SET state = $1, perform_time = $2, cancel_time = $3, \
                         reason = $4, masked_card = $5, raw_status = $6, data = $7, updated_at = $8, \
                         version = version + 1 WHERE id = $9 AND version = $10",
                    )
                    .bind(&u.state)
                    .bind(u.perform_time)
                    .bind(u.cancel_time)
                    .bind(u.reason)
                    .bind(&u.masked_card)
                    .bind(&u.raw_status)
                    .bind(u.data.to_string())
                    .bind(millis(u.now))
                    .bind(u.id.as_str())
                    .bind(u.expected_version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Err(StoreError::Conflict("transaction"));
                    }
                }
                if let Some(r) = &c.insert_refund {
                    // Touching the payment row first serialises refunds of one payment (a row
                    // lock on PostgreSQL, the single writer on SQLite), so the sum below is exact.
                    let locked = sqlx::query(
                        "UPDATE payments SET version = version + 1, updated_at = $1 \
                         WHERE id = $2 AND status IN ('succeeded', 'partially_refunded')",
                    )
                    .bind(millis(r.created_at))
                    .bind(r.payment_id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if locked == 0 {
                        return Err(StoreError::Conflict("payment"));
                    }
                    let (remaining,): (i64,) = sqlx::query_as(
                        "SELECT CAST(p.amount_minor - COALESCE((SELECT SUM(r.amount_minor) FROM refunds r \
                         WHERE r.payment_id = p.id AND r.status <> 'failed'), 0) AS BIGINT) FROM payments p WHERE p.id = $1",
                    )
                    .bind(r.payment_id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    if r.amount_minor > remaining {
                        return Err(StoreError::LimitExceeded("refund"));
                    }
                    sqlx::query(
                        "INSERT INTO refunds (id, payment_id, amount_minor, status, external_id, \
                         reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(r.id.as_str())
                    .bind(r.payment_id.as_str())
                    .bind(r.amount_minor)
                    .bind(r.status.as_str())
                    .bind(&r.external_id)
                    .bind(&r.reason)
                    .bind(millis(r.created_at))
                    .bind(millis(r.updated_at))
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some((id, status, external_id, now)) = &c.update_refund {
                    // Only a pending refund may settle, and only once.
                    let n = sqlx::query(
                        "UPDATE refunds SET status = $1, external_id = COALESCE($2, external_id), \
                         updated_at = $3 WHERE id = $4 AND status = 'pending'",
                    )
                    .bind(status.as_str())
                    .bind(external_id)
                    .bind(millis(*now))
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Err(StoreError::Conflict("refund"));
                    }
                }
                for e in &c.events {
                    insert_event(&mut tx, e).await?;
                }
                for m in &c.outbox {
                    sqlx::query(
                        "INSERT INTO webhook_outbox (event_id, payment_id, event_type, payload, \
                         status, attempts, next_attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)",
                    )
                    .bind(m.event_id.as_str())
                    .bind(m.payment_id.as_str())
                    .bind(&m.event_type)
                    .bind(m.payload.to_string())
                    .bind(millis(m.created_at))
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(r) = &c.recheck {
                    // An earlier one already scheduled stays; updated_at (the version) moves.
                    sqlx::query(
                        "INSERT INTO payment_rechecks (payment_id, due_at, attempts, reason, created_at, updated_at) \
                         VALUES ($1, $2, 0, $3, $4, $4) \
                         ON CONFLICT (payment_id) DO UPDATE SET \
                         due_at = CASE WHEN excluded.due_at < payment_rechecks.due_at \
                             THEN excluded.due_at ELSE payment_rechecks.due_at END, \
                         reason = excluded.reason, \
                         updated_at = CASE WHEN excluded.updated_at > payment_rechecks.updated_at \
                             THEN excluded.updated_at ELSE payment_rechecks.updated_at + 1 END",
                    )
                    .bind(r.payment_id.as_str())
                    .bind(millis(r.due_at))
                    .bind(&r.reason)
                    .bind(millis(r.now))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

        async fn insert_event(
            tx: &mut sqlx::Transaction<'_, $db>,
            e: &NewEvent,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO payment_events (id, payment_id, kind, from_status, to_status, actor, \
                 reason, data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(e.id.as_str())
            .bind(e.payment_id.as_str())
            .bind(&e.kind)
            .bind(e.from_status.map(|s| s.as_str()))
            .bind(e.to_status.map(|s| s.as_str()))
            .bind(e.actor.as_str())
            .bind(&e.reason)
            .bind(e.data.to_string())
            .bind(millis(e.created_at))
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
    };
}

pub(crate) use impl_store;
