//! The postLink (and failurePostLink) ePay POSTs after the payer acts (atmos-epay.md B5). There
//! is no signature: the per-payment `secret_hash` (constant-time), invoice, amount, currency and
//! terminal must match, and check-status decides what happened. Always HTTP 200; a forged or
//! mismatched call is logged as a security event and changes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::client::EpayState;
use super::Epay;
use crate::domain::{Actor, Payment, PaymentId, PaymentStatus, ProviderKind};
use crate::lifecycle::{change_status, LifecycleError};
use crate::money::Money;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct PostLinkQuery {
    pub payment_id: Option<String>,
    pub outcome: Option<String>,
}

fn raw(body: &Map<String, Value>, name: &str) -> Option<String> {
    match body.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn refuse(why: &str) -> &'static str {
    tracing::warn!(security = true, why, "epay postLink refused");
    "OK"
}

/// ePay postLink / failurePostLink (called by ePay): JSON body per ePay; the URL carries
/// `payment_id` (and `outcome=failure` for the failure link). Always HTTP 200 "OK".
#[utoipa::path(post, path = "/v1/epay/callback", tag = "providers",
    params(("payment_id" = String, Query), ("outcome" = Option<String>, Query)),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "OK", content_type = "text/plain")))]
pub fn postlink_doc() {}

pub async fn handle(
    State(state): State<AppState>,
    epay: Arc<Epay>,
    Query(q): Query<PostLinkQuery>,
    body: Result<Bytes, BytesRejection>,
) -> &'static str {
    let Some(body) = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
    else {
        return refuse("body is not a JSON object");
    };
    let Some(id) = q.payment_id.as_deref().and_then(PaymentId::parse) else {
        return refuse("no payment in the postLink");
    };
    let payment = match state.store.get_payment(&id).await {
        Ok(Some(p)) if p.provider == ProviderKind::Epay => p,
        Ok(_) => return refuse("unknown payment"),
        Err(e) => {
            tracing::error!(error = %e, "epay postLink: store failure");
            return "OK";
        }
    };
    tracing::Span::current().record("payment_id", tracing::field::display(&payment.id));
    let expected = Epay::secret_hash(&state.settings, &payment.id);
    let given = raw(&body, "secret_hash").unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return refuse("secret_hash does not match");
    }
    if raw(&body, "invoiceId").as_deref() != Epay::invoice_id(&payment) {
        return refuse("invoiceId does not match");
    }
    let amount_ok = raw(&body, "amount")
        .and_then(|a| Money::parse_major(&a, payment.amount.currency()).ok())
        == Some(payment.amount);
    if !amount_ok {
        return refuse("amount does not match");
    }
    if raw(&body, "currency").as_deref() != Some("KZT")
        || raw(&body, "terminal").as_deref() != Some(state.settings.epay.terminal_id.as_str())
    {
        return refuse("currency or terminal does not match");
    }
    tracing::info!(
        outcome = q.outcome.as_deref().unwrap_or("success"),
        code = raw(&body, "code").as_deref().unwrap_or(""),
        "epay postLink accepted; checking status"
    );
    settle(&state, &epay, &payment).await;
    "OK"
}

/// Asks ePay what happened to the payment's invoice and records it (idempotent).
pub async fn settle(state: &AppState, epay: &Epay, payment: &Payment) {
    let outcome = match epay.state_of(payment).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "epay check-status failed; reconciliation will retry");
            return;
        }
    };
    let (to, why) = match outcome {
        EpayState::Paid { status_name, .. } => (
            PaymentStatus::Succeeded,
            format!("epay {status_name}, confirmed by check-status"),
        ),
        EpayState::InProgress => (
            PaymentStatus::Processing,
            "epay payment in progress".to_owned(),
        ),
        EpayState::Authorized { .. } => (
            PaymentStatus::Processing,
            "epay AUTH: funds blocked; capture or cancel".to_owned(),
        ),
        EpayState::Declined { reason } if payment.status == PaymentStatus::Processing => {
            (PaymentStatus::Pending, format!("epay declined: {reason}"))
        }
        EpayState::Declined { .. } | EpayState::NotFound | EpayState::Refunded => return,
    };
    if payment.status == to
        || (to == PaymentStatus::Processing && payment.status != PaymentStatus::Pending)
    {
        return;
    }
    match change_status(
        state.store.as_ref(),
        &payment.id,
        to,
        Actor::Provider,
        Some(why),
        state.now(),
    )
    .await
    {
        Ok(_) | Err(LifecycleError::Transition(_)) => {}
        Err(e) => tracing::error!(error = %e, "epay: could not record the status"),
    }
}
