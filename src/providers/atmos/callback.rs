//! `POST /v1/atmos/callback` (atmos-epay.md A7). Signed `md5(store_id ‖ transaction_id ‖
//! invoice ‖ amount ‖ callback_key)` over the raw values (sha256 if configured); store, invoice
//! and amount must match the attempt; then `pay/get` decides whether money moved. Always HTTP
//! 200 with `{"status": 1|0, "message"}`; a repeat changes nothing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::api::auth::same_secret;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use md5::{Digest, Md5};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::checkout::{code_check_under_way, mark_paid, Settled};
use super::client::is_paid;
use super::Atmos;
use crate::api::client_ip;
use crate::domain::{Actor, ProviderKind};
use crate::state::AppState;

fn reply(ok: bool, message: &str) -> Json<Value> {
    Json(json!({ "status": i32::from(ok), "message": message }))
}

/// A field as the raw text ATMOS sent (strings as they are, numbers as written).
fn raw(body: &Map<String, Value>, name: &str) -> Option<String> {
    match body.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn expected_sign(algorithm: &str, parts: &[&str], key: &str) -> String {
    let text: String = parts.concat() + key;
    if algorithm == "sha256" {
        hex::encode(Sha256::digest(text.as_bytes()))
    } else {
        hex::encode(Md5::digest(text.as_bytes()))
    }
}

/// ATMOS callback (called by ATMOS): JSON {store_id, transaction_id, transaction_time, amount,
/// invoice, sign}; always HTTP 200 {"status": 1|0, "message"}.
#[utoipa::path(post, path = "/v1/atmos/callback", tag = "providers",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "{status: 1, message: Успешно} or {status: 0, message}", content_type = "application/json")))]
pub fn callback_doc() {}

pub async fn handle(
    State(state): State<AppState>,
    atmos: Arc<Atmos>,
    caller: Option<IpAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Json<Value> {
    let work = callback(state.clone(), atmos, caller, body);
    crate::providers::answer_in_time(
        &state,
        "atmos callback",
        work,
        reply(false, "temporary error"),
    )
    .await
}

async fn callback(
    state: AppState,
    atmos: Arc<Atmos>,
    caller: Option<IpAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Json<Value> {
    if !client_ip::admitted(caller, &state.settings.atmos.callback_allowed_ips) {
        tracing::warn!(security = true, caller = ?caller, "atmos callback from outside atmos.callback_allowed_ips refused");
        return reply(false, "forbidden");
    }
    let parsed: Option<Map<String, Value>> =
        body.ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(body) = parsed else {
        return reply(false, "malformed request");
    };
    let fields = ["store_id", "transaction_id", "amount", "sign"].map(|f| raw(&body, f));
    let invoice = raw(&body, "invoice").or_else(|| raw(&body, "account"));
    let ([Some(store_id), Some(transaction_id), Some(amount), Some(sign)], Some(invoice)) =
        (fields, invoice)
    else {
        return reply(false, "missing fields");
    };
    let settings = &state.settings.atmos;
    let expected = expected_sign(
        &settings.callback_hash,
        &[&store_id, &transaction_id, &invoice, &amount],
        settings.callback_key.expose_secret(),
    );
    let given = sign.to_ascii_lowercase();
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        // Debug-formatted: an unauthenticated caller's text, escaped (no forged log lines).
        tracing::warn!(security = true, transaction_id = ?transaction_id, "atmos callback with an invalid signature refused");
        return reply(false, "invalid sign");
    }
    if store_id != settings.store_id {
        tracing::warn!(security = true, "atmos callback for another store refused");
        return reply(false, "unknown store");
    }
    let tx = match state
        .store
        .get_transaction(ProviderKind::Atmos, &transaction_id)
        .await
    {
        Ok(Some(tx)) => tx,
        Ok(None) => return reply(false, "unknown transaction"),
        Err(e) => {
            tracing::error!(error = %e, "atmos callback: store failure");
            return reply(false, "temporary error");
        }
    };
    tracing::Span::current().record("payment_id", tracing::field::display(&tx.payment_id));
    if tx.data["account"].as_str() != Some(invoice.as_str()) {
        tracing::warn!(
            security = true,
            "atmos callback invoice does not match the attempt"
        );
        return reply(false, "invoice mismatch");
    }
    if amount.parse::<i64>().ok() != Some(tx.amount_minor) {
        tracing::warn!(
            security = true,
            "atmos callback amount does not match the attempt"
        );
        return reply(false, "amount mismatch");
    }
    // The callback itself moves no money: ask ATMOS what actually happened.
    let Ok(atmos_id) = transaction_id.parse::<i64>() else {
        return reply(false, "unknown transaction");
    };
    match atmos.client.get(atmos_id).await {
        Ok(t) if is_paid(&t) => {
            match mark_paid(
                &state,
                &atmos,
                &tx.payment_id,
                &transaction_id,
                Actor::Provider,
                "atmos callback, confirmed by pay/get",
            )
            .await
            {
                Ok(Settled::Paid | Settled::Reversed) => reply(true, "Успешно"),
                // The debit on a closed payment is not reversed yet (another call is at it, or
                // it failed): "temporary error", so ATMOS calls again and the next try finds it
                // reversed or reverses it.
                Ok(Settled::NeedsReversal | Settled::BeingReversed) => {
                    reply(false, "temporary error")
                }
                Err(e) => {
                    tracing::error!(error = %e, "atmos callback: could not record the payment");
                    reply(false, "temporary error")
                }
            }
        }
        // Not debited (yet): a pre-debit check, where status 1 allows the debit. Allowed only
        // while the payment is open (past its deadline, for a code sent in time and still being
        // checked); otherwise ATMOS would take money that must go back.
        Ok(_) => match state.store.get_payment(&tx.payment_id).await {
            Ok(Some(p))
                if p.status.is_open()
                    && (p.expires_at > state.now() || code_check_under_way(&tx, state.now())) =>
            {
                reply(true, "Успешно")
            }
            Ok(_) => {
                tracing::info!("atmos pre-debit callback for a closed payment refused");
                reply(false, "payment closed")
            }
            Err(e) => {
                tracing::error!(error = %e, "atmos callback: store failure");
                reply(false, "temporary error")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "atmos callback: pay/get failed; asking ATMOS to retry");
            reply(false, "temporary error")
        }
    }
}
