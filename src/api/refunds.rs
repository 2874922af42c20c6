//! `POST /v1/payments/{id}/refunds`. A refund is first reserved (a pending row written under the
//! payment's compare-and-set guard, so concurrent refunds can never exceed the payment), then
//! sent to the provider, then settled with the payment's status change in one transaction.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::MerchantAuth;
use super::extract::{ApiPath, JsonBody};
use super::idempotency;
use super::payments::{load_payment, provider_error};
use crate::domain::{
    truncate_to_millis, Actor, Change, EventId, NewEvent, NewOutboxMessage, Payment, PaymentStatus,
    Refund, RefundId, RefundStatus,
};
use crate::error::{ApiError, FieldError};
use crate::lifecycle::{status_change, CAS_ATTEMPTS};
use crate::money::{Currency, Money};
use crate::providers::{Provider, ProviderError, RefundOutcome, RefundPolicy};
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Minor units; omit to refund everything not yet refunded.
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefundResource {
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: RefundStatus,
    pub reason: Option<String>,
    pub created_at: String,
}

impl RefundResource {
    fn new(r: &Refund, currency: Currency) -> Self {
        RefundResource {
            id: r.id.to_string(),
            payment_id: r.payment_id.to_string(),
            amount: r.amount_minor,
            currency,
            status: r.status,
            reason: r.reason.clone(),
            created_at: r
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

fn refund_event(
    payment: &Payment,
    kind: &str,
    refund: &RefundId,
    amount: i64,
    actor: Actor,
    now: DateTime<Utc>,
) -> NewEvent {
    NewEvent {
        id: EventId::generate(),
        payment_id: payment.id.clone(),
        kind: kind.to_owned(),
        from_status: None,
        to_status: None,
        actor,
        reason: None,
        data: serde_json::json!({ "refund_id": refund.as_str(), "amount": amount }),
        created_at: now,
    }
}

/// Sum of refunds that are not failed (pending ones hold their amount).
async fn refunded_or_reserved(state: &AppState, payment: &Payment) -> Result<i64, ApiError> {
    let refunds = state.store.list_refunds(&payment.id).await?;
    Ok(refunds
        .iter()
        .filter(|r| r.status != RefundStatus::Failed)
        .map(|r| r.amount_minor)
        .sum())
}

/// Writes the pending refund of `requested` (or of the rest of the payment), holding its amount.
async fn reserve(
    state: &AppState,
    payment: &Payment,
    requested: Option<i64>,
    min: i64,
    reason: Option<String>,
) -> Result<Refund, ApiError> {
    let remaining = payment.amount.minor() - refunded_or_reserved(state, payment).await?;
    let amount = requested.unwrap_or(remaining);
    let exceeds = |remaining: i64| {
        ApiError::unprocessable(
            "refund_exceeds_payment",
            format!("at most {remaining} minor units of this payment can still be refunded"),
        )
    };
    if amount <= 0 {
        return Err(exceeds(remaining.max(0)));
    }
    // Before the ledger check: a request below the provider's minimum is refused as such,
    // whatever is left to refund.
    if amount < min {
        return Err(ApiError::unprocessable(
            "refund_below_minimum",
            format!("{} refunds start at {min} minor units", payment.provider),
        ));
    }
    if amount > remaining {
        return Err(exceeds(remaining.max(0)));
    }
    let now = truncate_to_millis(state.now());
    let refund = Refund {
        id: RefundId::generate(),
        payment_id: payment.id.clone(),
        amount_minor: amount,
        status: RefundStatus::Pending,
        external_id: None,
        reason,
        created_at: now,
        updated_at: now,
    };
    let change = Change {
        events: vec![refund_event(
            payment,
            "refund.created",
            &refund.id,
            amount,
            Actor::Merchant,
            now,
        )],
        insert_refund: Some(refund.clone()),
        ..Change::default()
    };
    match state.store.apply(&change).await {
        Ok(()) => Ok(refund),
        Err(StoreError::Conflict(_)) => Err(not_refundable(state, payment.id.as_str()).await),
        Err(StoreError::LimitExceeded(_)) => {
            let fresh = load_payment(state, payment.id.as_str()).await?;
            Err(exceeds(
                fresh.amount.minor() - refunded_or_reserved(state, &fresh).await?,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn not_refundable(state: &AppState, id: &str) -> ApiError {
    match load_payment(state, id).await {
        Ok(p) => ApiError::conflict(
            "payment_not_refundable",
            format!("a {} payment cannot be refunded", p.status),
        ),
        Err(e) => e,
    }
}

/// Records the provider's verdict on a pending refund: succeeded (the payment becomes
/// partially refunded or refunded) or failed (its amount is free again); the merchant hears
/// of it. `actor` is who learned the verdict: the merchant's request or reconciliation.
pub(crate) async fn settle(
    state: &AppState,
    payment_id: &str,
    refund: &Refund,
    outcome: Result<Option<String>, ()>,
    actor: Actor,
) -> Result<Refund, ApiError> {
    for _ in 0..CAS_ATTEMPTS {
        let payment = load_payment(state, payment_id).await?;
        tokio::task::yield_now().await;
        let now = truncate_to_millis(state.now());
        let (status, kind) = match outcome {
            Ok(_) => (RefundStatus::Succeeded, "refund.succeeded"),
            Err(()) => (RefundStatus::Failed, "refund.failed"),
        };
        let mut change = if status == RefundStatus::Succeeded {
            let settled: i64 = state
                .store
                .list_refunds(&payment.id)
                .await?
                .iter()
                .filter(|r| r.status == RefundStatus::Succeeded || r.id == refund.id)
                .map(|r| r.amount_minor)
                .sum();
            let to = if settled >= payment.amount.minor() {
                PaymentStatus::Refunded
            } else {
                PaymentStatus::PartiallyRefunded
            };
            status_change(&payment, to, actor, refund.reason.clone(), now)
                .map_err(|t| ApiError::conflict("payment_not_refundable", t.to_string()))?
        } else {
            Change::default()
        };
        change.update_refund = Some((
            refund.id.clone(),
            status,
            outcome.clone().ok().flatten(),
            now,
        ));
        let event = refund_event(&payment, kind, &refund.id, refund.amount_minor, actor, now);
        // The merchant hears of the settled refund too, not only of the payment's new status.
        change.outbox.push(NewOutboxMessage {
            event_id: event.id.clone(),
            payment_id: payment.id.clone(),
            event_type: kind.to_owned(),
            payload: serde_json::json!({
                "id": event.id.as_str(),
                "type": kind,
                "created_at": now.to_rfc3339(),
                "data": {
                    "id": refund.id.as_str(),
                    "payment_id": payment.id.as_str(),
                    "amount": refund.amount_minor,
                    "currency": payment.amount.currency(),
                    "status": status,
                }
            }),
            created_at: now,
        });
        change.events.push(event);
        match state.store.apply(&change).await {
            Ok(()) => {
                return Ok(Refund {
                    status,
                    updated_at: now,
                    ..refund.clone()
                });
            }
            Err(StoreError::Conflict("payment")) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the payment is being changed; retry",
    ))
}

/// Refund a paid payment, fully or partly.
#[utoipa::path(post, path = "/v1/payments/{id}/refunds", tag = "payments",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Option<RefundRequest>),
    responses((status = 201, body = RefundResource), (status = 400, body = crate::error::Problem),
        (status = 202, description = "pending: the provider is still working, or refunded and reconciliation will record it", body = RefundResource),
        (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 502, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<RefundRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let hash =
        idempotency::request_hash(&format!("POST /v1/payments/{id}/refunds"), &body.canonical);
    let RefundRequest { amount, reason } = body.value;
    let mut errors = Vec::new();
    if amount.is_some_and(|a| a <= 0) {
        errors.push(FieldError {
            field: "amount".into(),
            message: "must be a positive integer of minor units".into(),
        });
    }
    if let Some(Err(m)) = reason.as_deref().map(|r| super::text::free_text(r, 500)) {
        errors.push(FieldError {
            field: "reason".into(),
            message: m,
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let payment = load_payment(&state, &id).await?;
    idempotency::run_once(&state, &auth.scope, key, hash, move |state| async move {
        if !matches!(
            payment.status,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
        ) {
            return Err(not_refundable(&state, &id).await);
        }
        let provider = state.providers.get(payment.provider).ok_or_else(|| {
            ApiError::unprocessable("provider_disabled", "the payment's provider is not enabled")
        })?;
        let policy = provider.refund_policy();
        if let RefundPolicy::Elsewhere(how) = policy {
            return Err(ApiError::unprocessable("refund_not_supported", how));
        }
        if policy == RefundPolicy::FullOnly {
            let remaining = payment.amount.minor() - refunded_or_reserved(&state, &payment).await?;
            // Nothing left (a pending refund holds it all): said as such, whatever was asked.
            if remaining > 0 && amount.is_some_and(|a| a != remaining) {
                return Err(ApiError::unprocessable(
                    "partial_refund_not_supported",
                    format!(
                        "{} refunds only the whole payment; omit amount or send {remaining}",
                        payment.provider
                    ),
                ));
            }
        }
        let refund = reserve(
            &state,
            &payment,
            amount,
            provider.min_refund_minor(),
            reason,
        )
        .await?;
        let money = Money::from_minor(refund.amount_minor, payment.amount.currency())
            .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        // A provider slower than the request may be is answered `202 pending` at 90 % of the
        // request timeout (never the server's 503 "retry": a retry would make a second
        // refund), and the refund goes on to be recorded in its own task.
        let pending = answer(StatusCode::ACCEPTED, &refund, payment.amount.currency());
        let work = send(state.clone(), id, payment, provider, refund, money);
        crate::providers::answer_in_time(&state, "refund", work, Ok(pending)).await
    })
    .await
}

/// The refund as the merchant is answered it, with `status` (201 settled, 202 pending).
fn answer(
    status: StatusCode,
    refund: &Refund,
    currency: Currency,
) -> (StatusCode, serde_json::Value) {
    let body = serde_json::to_value(RefundResource::new(refund, currency)).unwrap_or_default();
    (status, body)
}

/// The reserved `refund` at the provider, and what its answer means for it.
async fn send(
    state: AppState,
    id: String,
    payment: Payment,
    provider: Arc<dyn Provider>,
    refund: Refund,
    money: Money,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    match provider.refund(&payment, money, &refund.id).await {
        Ok(RefundOutcome::Succeeded { external_id }) => {
            match settle(&state, &id, &refund, Ok(external_id), Actor::Merchant).await {
                Ok(settled) => Ok(answer(
                    StatusCode::CREATED,
                    &settled,
                    payment.amount.currency(),
                )),
                // The provider has moved the money; only recording it failed. An error
                // here would free the Idempotency-Key, and a retry would refund again
                // under a new id. The refund is pending in the store, holding its
                // amount, and reconciliation settles it: answer that.
                Err(e) => {
                    tracing::error!(error = %e.detail, cause = ?e.source, refund_id = %refund.id,
                        "the provider refunded but recording it failed; left pending for reconciliation");
                    Ok(answer(
                        StatusCode::ACCEPTED,
                        &refund,
                        payment.amount.currency(),
                    ))
                }
            }
        }
        Ok(RefundOutcome::Pending { .. }) => Ok(answer(
            StatusCode::ACCEPTED,
            &refund,
            payment.amount.currency(),
        )),
        // A refusal is final. A timeout or garbled answer is not: the provider may have
        // moved the money, so the refund stays pending (holding its amount), and a retry
        // with the same Idempotency-Key gets this answer again rather than a second refund
        // under a new id, which the provider could not tell from a new request.
        // So is an operation that was never sent (its token or lookup failed first).
        Err(
            e @ (ProviderError::Rejected { .. }
            | ProviderError::Unsupported(..)
            | ProviderError::NotSent(..)),
        ) => {
            settle(&state, &id, &refund, Err(()), Actor::Merchant).await?;
            Err(provider_error(e))
        }
        Err(e) => {
            let e = provider_error(e);
            Err(ApiError {
                detail: format!(
                    "{}; refund {} stays pending and holds its amount",
                    e.detail, refund.id
                ),
                ..e
            }
            .replayed_on_retry())
        }
    }
}
