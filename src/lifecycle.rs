//! Status changes of a payment as the whole application performs them: the domain decides
//! whether the change is allowed, and the change is stored together with its audit event and
//! merchant-webhook outbox row in one compare-and-set transaction.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::{
    transition, Actor, Change, NewEvent, NewOutboxMessage, NewRecheck, Payment, PaymentId,
    PaymentStatus, PaymentUpdate, TransitionError,
};
use crate::providers::Provider;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("payment not found")]
    NotFound,
    /// Another writer changed the payment after the decision was made (see
    /// [`settle_with_provider`]).
    #[error("the payment changed after the decision; decide again")]
    Moved,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many times a status change is re-evaluated after losing a compare-and-set race. Each
/// round has a winner, so this bounds the contention a change survives, not its correctness.
pub const CAS_ATTEMPTS: usize = 64;

/// Builds the [`Change`] that moves `payment` to `to`: the guarded update, its event and its
/// outbox message. Callers add their own rows (a provider transaction, a refund) before applying.
pub fn status_change(
    payment: &Payment,
    to: PaymentStatus,
    actor: Actor,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Change, TransitionError> {
    let to = transition(payment.status, to)?;
    let event = NewEvent::status_changed(&payment.id, payment.status, to, actor, reason, now);
    let outbox = NewOutboxMessage {
        event_id: event.id.clone(),
        payment_id: payment.id.clone(),
        event_type: event.kind.clone(),
        payload: json!({
            "id": event.id.as_str(),
            "type": event.kind,
            "created_at": now.to_rfc3339(),
            "data": {
                "id": payment.id.as_str(),
                "order_id": payment.order_id,
                "provider": payment.provider,
                "amount": payment.amount.minor(),
                "currency": payment.amount.currency(),
                "status": to,
                "previous_status": payment.status,
            }
        }),
        created_at: now,
    };
    Ok(Change {
        payment: Some(PaymentUpdate {
            id: payment.id.clone(),
            expected_version: payment.version,
            status: to,
            provider_data: None,
            now,
        }),
        events: vec![event],
        outbox: vec![outbox],
        ..Change::default()
    })
}

/// Moves a payment to `to`, re-reading and re-checking if another writer got there first.
/// Returns the payment as stored afterwards.
pub async fn change_status(
    store: &dyn Store,
    id: &PaymentId,
    to: PaymentStatus,
    actor: Actor,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Payment, LifecycleError> {
    settle(store, None, id, None, to, actor, reason, now).await
}

/// [`change_status`] for a change the merchant asked for: a cancel ends the provider's attempt
/// row as the provider says ([`Provider::attempt_settlement_on_merchant_cancel`]), and when it
/// closes the payment, the closing change schedules what `provider` wants asked again later
/// ([`Provider::recheck_after_close`]). With `only_version`, it applies only to that version
/// of the payment (what the provider's check before it saw), else [`LifecycleError::Moved`].
pub async fn merchant_status_change(
    store: &dyn Store,
    provider: Option<&dyn Provider>,
    id: &PaymentId,
    only_version: Option<i64>,
    to: PaymentStatus,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Payment, LifecycleError> {
    settle(
        store,
        provider,
        id,
        only_version,
        to,
        Actor::Merchant,
        reason,
        now,
    )
    .await
}

/// [`change_status`] on a provider's word (reconciliation, expiry) about `decided_on`, the
/// payment as read when the decision was made; the provider's attempt row (when the provider is
/// enabled) is settled in the same transaction. A decision that the payment was abandoned
/// (`expired`, or `pending` again) holds only for the version it was made on: if another
/// writer changed the payment since (a new attempt, a callback), this is
/// [`LifecycleError::Moved`] and the next pass decides again. Any other outcome (money arrived)
/// applies to whatever the payment has become, so late money is never dropped.
pub async fn settle_with_provider(
    store: &dyn Store,
    provider: Option<&dyn Provider>,
    decided_on: &Payment,
    to: PaymentStatus,
    actor: Actor,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Payment, LifecycleError> {
    let only_version =
        matches!(to, PaymentStatus::Expired | PaymentStatus::Pending).then_some(decided_on.version);
    settle(
        store,
        provider,
        &decided_on.id,
        only_version,
        to,
        actor,
        reason,
        now,
    )
    .await
}

/// With `provider`, the change settles the provider's attempt row (by whose word: the merchant's,
/// or the provider's own through reconciliation and expiry) and schedules its recheck.
#[allow(clippy::too_many_arguments)]
async fn settle(
    store: &dyn Store,
    provider: Option<&dyn Provider>,
    id: &PaymentId,
    only_version: Option<i64>,
    to: PaymentStatus,
    actor: Actor,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<Payment, LifecycleError> {
    for _ in 0..CAS_ATTEMPTS {
        let payment = store
            .get_payment(id)
            .await?
            .ok_or(LifecycleError::NotFound)?;
        if only_version.is_some_and(|v| v != payment.version) {
            return Err(LifecycleError::Moved);
        }
        let mut change = status_change(&payment, to, actor, reason.clone(), now)?;
        change.update_transaction = match provider {
            Some(p) if actor == Actor::Merchant && to == PaymentStatus::Canceled => {
                p.attempt_settlement_on_merchant_cancel(&payment, now)
                    .await?
            }
            Some(_) if actor == Actor::Merchant => None,
            Some(p) => p.attempt_settlement(&payment, to, now).await?,
            None => None,
        };
        if let (Some(provider), true) = (provider, to.is_closed()) {
            change.recheck = provider
                .recheck_after_close(&payment, now)
                .await?
                .map(|due_at| NewRecheck {
                    payment_id: payment.id.clone(),
                    due_at,
                    reason: format!("{} may still move money after {to}", payment.provider),
                    now,
                });
        }
        match store.apply(&change).await {
            Ok(()) => {
                tracing::info!(payment_id = %id, from = %payment.status, to = %to, actor = actor.as_str(), "payment status changed");
                return store.get_payment(id).await?.ok_or(LifecycleError::NotFound);
            }
            Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict("payment").into())
}

/// Leases: a mark in a row's JSON data (`key`: held until, in epoch milliseconds) that one
/// caller sets with a compare-and-set while it talks to a provider, so racing callers leave the
/// call to it; it runs out by itself should that process die. These three read, set and drop it.
pub fn lease_held(data: &serde_json::Value, key: &str, now: DateTime<Utc>) -> bool {
    data[key]
        .as_i64()
        .is_some_and(|until| until > now.timestamp_millis())
}

/// `data` with the lease `key` held for `for_ms` from `now`.
pub fn with_lease(
    data: &serde_json::Value,
    key: &str,
    now: DateTime<Utc>,
    for_ms: i64,
) -> serde_json::Value {
    let mut data = data.clone();
    data[key] = json!(now.timestamp_millis() + for_ms);
    data
}

/// `data` without the lease `key`.
pub fn without_lease(data: &serde_json::Value, key: &str) -> serde_json::Value {
    let mut data = data.clone();
    if let Some(map) = data.as_object_mut() {
        map.remove(key);
    }
    data
}
