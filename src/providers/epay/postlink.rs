//! The postLink (and failurePostLink) ePay POSTs after the payer acts (atmos-epay.md B5). There
//! is no signature: the per-payment `secret_hash` (constant-time), invoice, amount, currency and
//! terminal must match, and check-status decides what happened. Always HTTP 200; a forged or
//! mismatched call is logged as a security event and changes nothing.

use std::sync::Arc;

use crate::api::auth::same_secret;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

use super::client::EpayState;
use super::Epay;
use crate::domain::{
    Actor, Change, EventId, NewEvent, NewRecheck, Payment, PaymentId, PaymentStatus, PaymentUpdate,
    ProviderKind,
};
use crate::lifecycle::{change_status, lease_held, with_lease, without_lease, LifecycleError};
use crate::money::Money;
use crate::providers::ProviderError;
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Deserialize)]
pub struct PostLinkQuery {
    pub payment_id: Option<String>,
    pub outcome: Option<String>,
}

/// The body as ePay sent it: each field's JSON text, so numbers are never rounded through f64.
type Body = HashMap<String, Box<RawValue>>;

/// A field as text: a JSON string's contents, or a JSON number exactly as written.
fn raw(body: &Body, name: &str) -> Option<String> {
    let text = body.get(name)?.get();
    if text.starts_with('"') {
        serde_json::from_str(text).ok()
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Some(text.to_owned())
    } else {
        None
    }
}

/// The amount field as a plain decimal with its exact value: a JSON number is normalised
/// ("1.5005e3" and "1500.500" are 1500.5, "1500.50000000000001" stays what it is), a JSON
/// string is taken as written and left to `Money::parse_major`'s format rules.
fn amount_text(body: &Body) -> Option<String> {
    let text = body.get("amount")?.get();
    if text.starts_with('"') {
        return serde_json::from_str(text).ok();
    }
    plain_decimal(text)
}

/// A JSON number literal as a plain decimal without exponent or trailing fractional zeros,
/// exactly. `None` when it is not a JSON number or its exponent is beyond any amount.
fn plain_decimal(literal: &str) -> Option<String> {
    let (negative, unsigned) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], unsigned[i + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits_only(int) || !digits_only(frac) || mantissa.ends_with('.') {
        return None;
    }
    if !(-64..=64).contains(&exponent) {
        return None;
    }
    let digits = format!("{int}{frac}");
    // Where the decimal point falls in `digits` once the exponent is applied.
    let point = i64::try_from(int.len()).ok()? + exponent;
    let (whole, fraction) = if point <= 0 {
        let zeros = usize::try_from(-point).ok()?;
        ("0".to_owned(), format!("{}{digits}", "0".repeat(zeros)))
    } else {
        let point = usize::try_from(point).ok()?;
        if point >= digits.len() {
            (
                format!("{digits}{}", "0".repeat(point - digits.len())),
                String::new(),
            )
        } else {
            (digits[..point].to_owned(), digits[point..].to_owned())
        }
    };
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    let fraction = fraction.trim_end_matches('0');
    let sign = if negative { "-" } else { "" };
    Some(if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    })
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
    query: Result<Query<PostLinkQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> &'static str {
    let Ok(Query(q)) = query else {
        return refuse("the query cannot be read");
    };
    // B5: ePay must hear 200 "OK" quickly, even when tolov is slow or fails.
    let work = postlink(state.clone(), epay, q, body);
    crate::providers::answer_in_time(&state, "epay postLink", work, "OK").await
}

async fn postlink(
    state: AppState,
    epay: Arc<Epay>,
    q: PostLinkQuery,
    body: Result<Bytes, BytesRejection>,
) -> &'static str {
    let Some(body) = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Body>(&b).ok())
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
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        return refuse("secret_hash does not match");
    }
    if raw(&body, "invoiceId").as_deref() != Epay::invoice_id(&payment) {
        return refuse("invoiceId does not match");
    }
    let amount_ok = amount_text(&body)
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
    match epay.state_of(payment).await {
        Ok(outcome) => settle_found(state, epay, payment, outcome).await,
        Err(e) => tracing::warn!(error = %e,
            "epay check-status failed; expiry (pending) or reconciliation (processing) asks again"),
    }
}

/// [`settle`] with check-status already asked: records `outcome`, or returns late money.
pub(super) async fn settle_found(
    state: &AppState,
    epay: &Epay,
    payment: &Payment,
    outcome: EpayState,
) {
    if let Some(kind) = return_confirmed(payment, &outcome) {
        return record_confirmed_return(state, payment, kind, outcome).await;
    }
    if late_money(payment, &outcome) {
        return return_late_money(state, epay, payment, outcome).await;
    }
    let found = outcome.clone();
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
        EpayState::Voided => (
            PaymentStatus::Canceled,
            "epay CANCEL: the block was released".to_owned(),
        ),
        EpayState::Declined { .. } | EpayState::NotFound | EpayState::Refunded { .. } => return,
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
        Ok(_) => {}
        // The payment closed after it was read (a merchant cancel, expiry): money ePay holds
        // for it goes back, as for a postLink that came after.
        Err(LifecycleError::Transition(_)) => match state.store.get_payment(&payment.id).await {
            Ok(Some(now_closed)) if late_money(&now_closed, &found) => {
                return_late_money(state, epay, &now_closed, found).await
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "epay: could not re-read the payment"),
        },
        Err(e) => tracing::error!(error = %e, "epay: could not record the status"),
    }
}

/// The mark in `provider_data` of a payment whose late money went back (see
/// [`return_late_money`]).
pub(super) const LATE_MONEY_RETURNED: &str = "late_money_returned";

/// The mark of a payment whose late money tolov asked ePay to return without hearing the
/// answer (a timeout, a 5xx): which return (the event it records) check-status may confirm.
pub(super) const LATE_MONEY_TRIED: &str = "late_money_tried";

/// The return of late money that check-status now shows done (REFUND after the refund, CANCEL
/// after the void) for a payment whose return tolov tried without hearing the answer; `None`
/// once it is recorded, or when tolov tried nothing (a CANCEL is then the merchant's own void).
pub(super) fn return_confirmed(payment: &Payment, found: &EpayState) -> Option<&'static str> {
    if payment.provider_data.get(LATE_MONEY_RETURNED).is_some() {
        return None;
    }
    let kind = match found {
        EpayState::Refunded { .. } => "payment.late_charge_refunded",
        EpayState::Voided => "payment.late_authorization_voided",
        _ => return None,
    };
    (payment.provider_data.get(LATE_MONEY_TRIED) == Some(&serde_json::json!(kind))).then_some(kind)
}

/// Records the return [`return_confirmed`] found, as a return that was answered is recorded.
async fn record_confirmed_return(
    state: &AppState,
    payment: &Payment,
    kind: &'static str,
    found: EpayState,
) {
    let transaction_id = match found {
        EpayState::Refunded { transaction_id } => transaction_id,
        _ => String::new(),
    };
    tracing::warn!(status = %payment.status, kind, "epay: a return of late money whose answer was lost is confirmed by check-status");
    record_return(
        state,
        payment,
        payment,
        payment.provider_data.clone(),
        kind,
        &transaction_id,
        "ePay took the money after the payment was closed; its return is confirmed by check-status",
    )
    .await;
}

/// Marks `base` (the payment as last written) returned, no longer tried, and adds the event,
/// in one change.
async fn record_return(
    state: &AppState,
    payment: &Payment,
    base: &Payment,
    mut data: serde_json::Value,
    kind: &str,
    transaction_id: &str,
    reason: &str,
) {
    let now = state.now();
    if let Some(map) = data.as_object_mut() {
        map.remove(LATE_MONEY_TRIED);
    }
    data[LATE_MONEY_RETURNED] = serde_json::json!(kind);
    let change = Change {
        payment: Some(PaymentUpdate::keeping_status(base, Some(data), now)),
        events: vec![NewEvent {
            id: EventId::generate(),
            payment_id: payment.id.clone(),
            kind: kind.to_owned(),
            from_status: Some(payment.status),
            to_status: Some(payment.status),
            actor: Actor::Provider,
            reason: Some(reason.to_owned()),
            data: serde_json::json!({
                "transaction_id": transaction_id,
                "amount": payment.amount.minor(),
            }),
            created_at: now,
        }],
        ..Change::default()
    };
    match state.store.apply(&change).await {
        // The claim holds the payment: a conflict would be a change made after it expired (or,
        // for a confirmation, another one recorded it first).
        Ok(()) | Err(StoreError::Conflict(_)) => {}
        Err(e) => tracing::error!(error = %e, "epay: could not record the returned money"),
    }
}

/// Whether money ePay reports for `payment` must go back: it is closed for good, or expired
/// with a block nobody is left to capture or void (an expired payment's charge is recorded).
fn late_money(payment: &Payment, found: &EpayState) -> bool {
    matches!(
        payment.status,
        PaymentStatus::Canceled | PaymentStatus::Failed
    ) || (payment.status == PaymentStatus::Expired && matches!(found, EpayState::Authorized { .. }))
}

/// The payer paid after the payment was closed (the payment token in the widget stays valid
/// for two hours after a merchant cancel): ePay holds money tolov will never deliver an order
/// for, so it goes back (a captured charge is refunded in full, a 2-step block is voided) and
/// the payment's events say so, once. One postLink at a time may ask ePay: it first claims the
/// payment (a compare-and-set of `provider_data.late_money_claim_until`, which expires by
/// itself should this process die), so twenty racing postLinks make one request, whatever ePay
/// does with a repeated `externalID` (fixed per payment all the same). The record is marked in
/// `provider_data.late_money_returned`.
async fn return_late_money(state: &AppState, epay: &Epay, payment: &Payment, outcome: EpayState) {
    const MARK: &str = LATE_MONEY_RETURNED;
    const CLAIM: &str = "late_money_claim_until";
    if payment.provider_data.get(MARK).is_some() {
        return;
    }
    let now = state.now();
    if lease_held(&payment.provider_data, CLAIM, now) {
        return;
    }
    if !matches!(
        &outcome,
        EpayState::Paid { transaction_id, .. } | EpayState::Authorized { transaction_id }
            if !transaction_id.is_empty()
    ) {
        return;
    }
    // Beyond one ePay call's 20 s limit, token fetch included.
    let claim = PaymentUpdate::keeping_status(
        payment,
        Some(with_lease(&payment.provider_data, CLAIM, now, 60_000)),
        now,
    );
    let claimed = claim.applied_to(payment);
    match state
        .store
        .apply(&Change {
            payment: Some(claim),
            ..Change::default()
        })
        .await
    {
        Ok(()) => {}
        // Another postLink claimed it first.
        Err(StoreError::Conflict(_)) => return,
        Err(e) => {
            tracing::error!(error = %e, "epay: could not claim the late money's return; ePay's next postLink retries");
            return;
        }
    }
    let (returned, kind, transaction_id) = match outcome {
        EpayState::Paid { transaction_id, .. } => (
            epay.client
                .refund(
                    &transaction_id,
                    &payment.amount.to_major_string(),
                    &format!("late_{}", payment.id),
                )
                .await,
            "payment.late_charge_refunded",
            transaction_id,
        ),
        EpayState::Authorized { transaction_id } => (
            epay.client.operation(&transaction_id, "cancel").await,
            "payment.late_authorization_voided",
            transaction_id,
        ),
        _ => return,
    };
    let mut data = without_lease(&claimed.provider_data, CLAIM);
    if let Err(e) = returned {
        tracing::error!(status = %payment.status, error = %e,
            "epay took money for a closed payment and returning it failed; tried again in 10 minutes (or by ePay's next postLink)");
        // An unanswered call may have been done: check-status then shows it, and says so.
        if !matches!(
            e,
            ProviderError::Rejected { .. } | ProviderError::NotSent(..)
        ) {
            data[LATE_MONEY_TRIED] = serde_json::json!(kind);
        }
        let now = state.now();
        let release = Change {
            payment: Some(PaymentUpdate::keeping_status(&claimed, Some(data), now)),
            recheck: Some(NewRecheck::soon(
                &payment.id,
                "epay: returning late money failed",
                now,
            )),
            ..Change::default()
        };
        if let Err(e) = state.store.apply(&release).await {
            tracing::warn!(error = %e, "epay: could not release the claim; it expires by itself");
        }
        return;
    }
    tracing::warn!(status = %payment.status, kind, "epay took money for a closed payment; returned it");
    record_return(
        state,
        payment,
        &claimed,
        data,
        kind,
        &transaction_id,
        "ePay took the money after the payment was closed",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::plain_decimal;

    #[test]
    fn json_numbers_become_exact_plain_decimals() {
        for (literal, plain) in [
            ("1500", "1500"),
            ("1500.5", "1500.5"),
            ("1500.50", "1500.5"),
            ("1500.500", "1500.5"),
            ("1.5005e3", "1500.5"),
            ("1.5005E+3", "1500.5"),
            ("150050e-2", "1500.5"),
            ("0.5", "0.5"),
            ("5e-1", "0.5"),
            ("0", "0"),
            ("-1500.5", "-1500.5"),
            ("1e3", "1000"),
            // What a binary double would round to 1500.5 keeps its real value.
            ("1500.50000000000001", "1500.50000000000001"),
            ("1500.4999999999999999", "1500.4999999999999999"),
        ] {
            assert_eq!(plain_decimal(literal).as_deref(), Some(plain), "{literal}");
        }
        for refused in [
            "", "-", "1.", ".5", "1e", "1e999", "1.5.0", "abc", "true", "1,5",
        ] {
            assert_eq!(plain_decimal(refused), None, "{refused}");
        }
    }
}
