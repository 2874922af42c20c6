//! The payments and provider transactions this process wrote or read last, as they were then.
//!
//! A hot provider flow changes the rows it just wrote: Payme's PerformTransaction follows its
//! CreateTransaction within seconds, which followed the payment's creation. Reading them back
//! before each compare-and-set write costs a database round trip per call, the largest single
//! item in tools/sql_ablation.sh. These copies may be stale (another instance, a worker or a
//! merchant may have changed the row since), so they are only ever the *expected* state of a
//! compare-and-set change: a stale copy makes the change fail on its version guard and the
//! caller decides again from a fresh read. Nothing is answered from them directly.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use hashlink::LruCache;

use crate::domain::{
    truncate_to_millis, Change, Payment, PaymentId, ProviderKind, Transaction, TransactionId,
};

/// Rows per kind, bounded so memory stays flat however many payments pass through. A copy
/// pays off within seconds (Payme sends Create right after Check, Perform right after Create);
/// 2048 covers that window at hundreds of payments per second in a few MB.
const CAPACITY: usize = 2048;

pub(crate) struct RecentRows {
    inner: Mutex<Inner>,
}

struct Inner {
    payments: LruCache<PaymentId, Payment>,
    transactions: LruCache<(ProviderKind, String), Transaction>,
    /// Transaction updates name the row by id; this finds its key above.
    transaction_keys: LruCache<TransactionId, (ProviderKind, String)>,
}

impl Default for RecentRows {
    fn default() -> Self {
        Self::with_capacity(NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN))
    }
}

impl RecentRows {
    pub(crate) fn with_capacity(capacity: NonZeroUsize) -> Self {
        let n = capacity.get();
        RecentRows {
            inner: Mutex::new(Inner {
                payments: LruCache::new(n),
                transactions: LruCache::new(n),
                transaction_keys: LruCache::new(n),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps hold copies only; one left half-updated by a panicking thread is still
        // safe to use (a wrong copy fails its version guard).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn payment(&self, id: &PaymentId) -> Option<Payment> {
        self.lock().payments.get(id).cloned()
    }

    pub(crate) fn transaction_with_payment(
        &self,
        provider: ProviderKind,
        external_id: &str,
    ) -> Option<(Transaction, Payment)> {
        let mut inner = self.lock();
        let tx = inner
            .transactions
            .get(&(provider, external_id.to_owned()))
            .cloned()?;
        // Kept as recent in both maps, so the id that finds this copy again after a change
        // (`applied`, `refused`) is not evicted before the copy itself.
        inner.transaction_keys.get(&tx.id);
        let payment = inner.payments.get(&tx.payment_id).cloned()?;
        Some((tx, payment))
    }

    /// Keeps `p` unless a newer version of it is already here.
    pub(crate) fn remember_payment(&self, p: &Payment) {
        let mut inner = self.lock();
        if inner
            .payments
            .get(&p.id)
            .is_none_or(|known| known.version <= p.version)
        {
            inner.payments.insert(p.id.clone(), p.clone());
        }
    }

    /// Keeps `t` unless a newer version of it is already here.
    pub(crate) fn remember_transaction(&self, t: &Transaction) {
        self.lock().remember_transaction(t);
    }

    /// The rows as a committed change left them: its updates applied to the copies they were
    /// computed from. A copy at another version than the change expected is dropped instead,
    /// since this process does not know the row the change was applied to.
    pub(crate) fn applied(&self, c: &Change) {
        let mut inner = self.lock();
        if let Some(u) = &c.payment {
            match inner.payments.get_mut(&u.id) {
                Some(p) if p.version == u.expected_version => *p = u.applied_to(p),
                Some(_) => {
                    inner.payments.remove(&u.id);
                }
                None => {}
            }
        }
        if let Some(r) = &c.insert_refund {
            // A refund bumps its payment's version under the row lock without a PaymentUpdate.
            inner.payments.remove(&r.payment_id);
        }
        if let Some(t) = &c.insert_transaction {
            inner.remember_transaction(&as_inserted(t));
        }
        if let Some(u) = &c.update_transaction {
            let key = inner.transaction_keys.get(&u.id).cloned();
            if let Some(key) = key {
                match inner.transactions.get_mut(&key) {
                    Some(t) if t.version == u.expected_version => *t = u.applied_to(t),
                    Some(_) => {
                        inner.transactions.remove(&key);
                    }
                    None => {}
                }
            }
        }
    }

    /// Drops the copies a refused change was computed from: at least one of them is stale.
    pub(crate) fn refused(&self, c: &Change) {
        let mut inner = self.lock();
        if let Some(u) = &c.payment {
            inner.payments.remove(&u.id);
        }
        if let Some(t) = &c.insert_transaction {
            inner.payments.remove(&t.payment_id);
        }
        if let Some(u) = &c.update_transaction {
            if let Some(key) = inner.transaction_keys.remove(&u.id) {
                inner.transactions.remove(&key);
            }
        }
    }
}

/// The row the store writes for an inserted transaction: a fresh version, stamped once.
fn as_inserted(t: &Transaction) -> Transaction {
    let at = truncate_to_millis(t.created_at);
    Transaction {
        created_at: at,
        updated_at: at,
        version: 0,
        ..t.clone()
    }
}

impl Inner {
    fn remember_transaction(&mut self, t: &Transaction) {
        let key = (t.provider, t.external_id.clone());
        if self
            .transactions
            .get(&key)
            .is_none_or(|known| known.version <= t.version)
        {
            self.transaction_keys.insert(t.id.clone(), key.clone());
            self.transactions.insert(key, t.clone());
        } else {
            // The newer copy stays, and was just used: so is the id that finds it.
            self.transaction_keys.get(&t.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::domain::{Language, PaymentStatus, PaymentUpdate, TransactionUpdate};
    use crate::money::{Currency, Money};

    fn payment(version: i64) -> Payment {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .expect("time");
        Payment {
            id: PaymentId::parse("pay_01M847VF8DHH70HJZ12PAWSCJR").expect("id"),
            order_id: "o-1".into(),
            provider: ProviderKind::Payme,
            amount: Money::from_minor(150_000, Currency::Uzs).expect("money"),
            status: PaymentStatus::Pending,
            description: None,
            return_url: None,
            language: Language::Ru,
            metadata: json!({}),
            provider_data: json!({"checkout_url": "https://checkout.test.paycom.uz/x"}),
            client_secret_hash: "ab".repeat(32),
            expires_at: t,
            created_at: t,
            updated_at: t,
            version,
        }
    }

    fn transaction(p: &Payment, version: i64) -> Transaction {
        Transaction {
            id: TransactionId::parse("txn_01M847VS113EVMQJYMP8VVYPGV").expect("id"),
            payment_id: p.id.clone(),
            provider: ProviderKind::Payme,
            external_id: "5e730e8e0b852a417aa49ceb".into(),
            state: "1".into(),
            amount_minor: 150_000,
            provider_time: Some(1),
            create_time: Some(2),
            perform_time: None,
            cancel_time: None,
            reason: None,
            masked_card: None,
            raw_status: None,
            data: json!({}),
            created_at: p.created_at,
            updated_at: p.created_at,
            version,
        }
    }

    fn to_processing(p: &Payment, expected_version: i64) -> Change {
        Change {
            payment: Some(PaymentUpdate {
                id: p.id.clone(),
                expected_version,
                status: PaymentStatus::Processing,
                provider_data: None,
                now: p.created_at + chrono::Duration::nanoseconds(1_500_000_123),
            }),
            ..Change::default()
        }
    }

    fn perform(t: &Transaction, now: chrono::DateTime<Utc>) -> TransactionUpdate {
        TransactionUpdate {
            id: t.id.clone(),
            expected_version: t.version,
            state: "2".into(),
            perform_time: Some(9),
            cancel_time: None,
            reason: None,
            masked_card: None,
            raw_status: None,
            data: json!({}),
            now,
        }
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        let rows = RecentRows::default();
        rows.remember_payment(&payment(3));
        rows.remember_payment(&payment(2));
        assert_eq!(rows.payment(&payment(0).id).map(|p| p.version), Some(3));
        rows.remember_payment(&payment(4));
        assert_eq!(rows.payment(&payment(0).id).map(|p| p.version), Some(4));
    }

    #[test]
    fn a_committed_change_moves_the_copies_it_was_computed_from() {
        let rows = RecentRows::default();
        let p = payment(0);
        rows.remember_payment(&p);
        let mut change = to_processing(&p, 0);
        change.insert_transaction = Some(transaction(&p, 7));
        rows.applied(&change);
        let (t, moved) = rows
            .transaction_with_payment(ProviderKind::Payme, "5e730e8e0b852a417aa49ceb")
            .expect("both known");
        assert_eq!(moved.status, PaymentStatus::Processing);
        assert_eq!(moved.version, 1);
        assert_eq!(
            moved.updated_at.timestamp_subsec_nanos(),
            500_000_000,
            "stored to the millisecond"
        );
        assert_eq!(t.version, 0, "an inserted row starts at version 0");

        rows.applied(&Change {
            update_transaction: Some(perform(&t, p.created_at)),
            ..Change::default()
        });
        let (t, _) = rows
            .transaction_with_payment(ProviderKind::Payme, &t.external_id)
            .expect("known");
        assert_eq!(
            (t.state.as_str(), t.perform_time, t.version),
            ("2", Some(9), 1)
        );
    }

    #[test]
    fn a_copy_at_another_version_than_the_change_expected_is_dropped() {
        let rows = RecentRows::default();
        let p = payment(5);
        rows.remember_payment(&p);
        rows.applied(&to_processing(&p, 4));
        assert!(rows.payment(&p.id).is_none());
    }

    #[test]
    fn a_refused_change_drops_its_copies() {
        let rows = RecentRows::default();
        let p = payment(0);
        rows.remember_payment(&p);
        rows.remember_transaction(&transaction(&p, 0));
        let mut change = to_processing(&p, 0);
        change.update_transaction = Some(perform(&transaction(&p, 0), p.created_at));
        rows.refused(&change);
        assert!(rows.payment(&p.id).is_none());
        assert!(rows
            .transaction_with_payment(ProviderKind::Payme, "5e730e8e0b852a417aa49ceb")
            .is_none());
    }

    /// A copy read often stays, and so does the id that finds it again: a change refused for
    /// it still drops it (the two maps once evicted in different orders, leaving it behind).
    #[test]
    fn a_copy_kept_by_reading_it_is_still_dropped_when_its_change_is_refused() {
        let rows = RecentRows::with_capacity(NonZeroUsize::new(2).expect("2"));
        let p = payment(0);
        rows.remember_payment(&p);
        let txs: Vec<Transaction> = (0..3)
            .map(|n| Transaction {
                id: TransactionId::generate(),
                external_id: format!("ext-{n}"),
                ..transaction(&p, 0)
            })
            .collect();
        rows.remember_transaction(&txs[0]);
        rows.remember_transaction(&txs[1]);
        assert!(rows
            .transaction_with_payment(ProviderKind::Payme, "ext-0")
            .is_some());
        rows.remember_transaction(&txs[2]);
        rows.refused(&Change {
            update_transaction: Some(perform(&txs[0], p.created_at)),
            ..Change::default()
        });
        rows.remember_payment(&p);
        assert!(rows
            .transaction_with_payment(ProviderKind::Payme, "ext-0")
            .is_none());
    }

    #[test]
    fn memory_is_bounded_by_dropping_the_least_recently_used() {
        let rows = RecentRows::with_capacity(NonZeroUsize::new(2).expect("2"));
        let ids: Vec<PaymentId> = (0..3).map(|_| PaymentId::generate()).collect();
        for id in &ids {
            rows.remember_payment(&Payment {
                id: id.clone(),
                ..payment(0)
            });
        }
        assert!(rows.payment(&ids[0]).is_none());
        assert!(rows.payment(&ids[1]).is_some() && rows.payment(&ids[2]).is_some());
    }
}
