//! Sandbox Click: a payer that plays Click's side of SHOP-API (prepare then complete, correctly
//! signed) against tolov's own routes, and a stand-in for the Click Merchant API (payment status,
//! reversal) that answers from what those calls established.

use crate::api::auth::same_secret;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::api::auth::MerchantAuth;
use crate::api::extract::{ApiPath, JsonBody};
use crate::domain::{PaymentId, ProviderKind};
use crate::error::ApiError;
use crate::providers::click::shop::{CANCELLED, CONFIRMED, PREPARED};
use crate::providers::click::sign::{expected_sign, Form};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    let reversed: Reversed = Arc::new(Mutex::new(HashSet::new()));
    let (r1, r2) = (reversed.clone(), reversed);
    Router::new()
        .route("/sandbox/click/{id}/pay", post(pay))
        .route(
            "/sandbox/click/api/payment/status/{service_id}/{payment_id}",
            get(
                move |s: State<AppState>, h: HeaderMap, p: ApiPath<(String, String)>| {
                    status(s, h, p, r1.clone())
                },
            ),
        )
        .route(
            "/sandbox/click/api/payment/reversal/{service_id}/{payment_id}",
            delete(
                move |s: State<AppState>, h: HeaderMap, p: ApiPath<(String, String)>| {
                    reversal(s, h, p, r2.clone())
                },
            ),
        )
        .route(
            "/sandbox/click/api/payment/status_by_mti/{service_id}/{merchant_trans_id}/{date}",
            get(status_by_mti),
        )
}

type Reversed = Arc<Mutex<HashSet<String>>>;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// Click's `error` on Complete: 0 pays, a negative code (e.g. -5017, insufficient funds) cancels.
    pub error: Option<i64>,
}

async fn post_form(
    state: &AppState,
    path: &str,
    fields: &[(&str, String)],
) -> Result<Value, ApiError> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let res = state
        .http
        .post(format!("{}{path}", state.self_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            ApiError::internal(
                anyhow::anyhow!(e).context("sandbox Click payer could not reach tolov"),
            )
        })?;
    res.json().await.map_err(|e| {
        ApiError::internal(anyhow::anyhow!(e).context("sandbox Click payer got no JSON"))
    })
}

fn signed(
    state: &AppState,
    mut fields: Vec<(&'static str, String)>,
) -> Vec<(&'static str, String)> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let sign = Form::parse(body.as_bytes())
        .map(|f| expected_sign(&f, state.settings.click.secret_key.expose_secret()))
        .unwrap_or_default();
    fields.push(("sign_string", sign));
    fields
}

/// Sandbox only: pays (or, with `{"error": -5017}`, fails) a Click payment as Click would:
/// Prepare, then Complete with the merchant_prepare_id Prepare returned.
#[utoipa::path(post, path = "/sandbox/click/{id}/pay", tag = "sandbox", params(("id" = String, Path)),
    responses((status = 200, description = "the prepare and complete calls and their answers"),
        (status = 401, body = crate::error::Problem),
        (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, description = "tolov's Click endpoint answered an error")),
    security(("api_key" = [])))]
pub async fn pay(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<PayBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = PaymentId::parse(&id).ok_or_else(|| ApiError::not_found("payment"))?;
    let payment = match state.store.get_payment(&id).await? {
        Some(p) if p.provider == ProviderKind::Click => p,
        Some(_) => {
            return Err(ApiError::conflict(
                "wrong_provider",
                "this payment is not a Click payment",
            ))
        }
        None => return Err(ApiError::not_found("payment")),
    };
    let click_trans_id = rand::thread_rng().gen_range(1_000_000_000i64..9_000_000_000);
    let sign_time = state.now().format("%Y-%m-%d %H:%M:%S").to_string();
    let common = |action: &str, error: i64, extra: Option<i64>| {
        let mut f = vec![
            ("click_trans_id", click_trans_id.to_string()),
            ("service_id", state.settings.click.service_id.clone()),
            ("click_paydoc_id", (click_trans_id + 7).to_string()),
            ("merchant_trans_id", payment.id.to_string()),
            ("amount", payment.amount.to_major_string()),
            ("action", action.to_owned()),
            ("error", error.to_string()),
            (
                "error_note",
                if error == 0 {
                    "Success".to_owned()
                } else {
                    "Insufficient funds".to_owned()
                },
            ),
            ("sign_time", sign_time.clone()),
        ];
        if let Some(prepare_id) = extra {
            f.push(("merchant_prepare_id", prepare_id.to_string()));
        }
        signed(&state, f)
    };
    let prepared = post_form(&state, "/v1/click/prepare", &common("0", 0, None)).await?;
    let mut calls = vec![json!({ "endpoint": "prepare", "answer": prepared })];
    if prepared["error"] != 0 {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "payment_id": payment.id.as_str(), "calls": calls })),
        ));
    }
    let prepare_id = prepared["merchant_prepare_id"].as_i64();
    let completed = post_form(
        &state,
        "/v1/click/complete",
        &common("1", body.value.error.unwrap_or(0), prepare_id),
    )
    .await?;
    let ok = completed["error"] == 0;
    calls.push(json!({ "endpoint": "complete", "answer": completed }));
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        status,
        Json(
            json!({ "payment_id": payment.id.as_str(), "click_trans_id": click_trans_id, "calls": calls }),
        ),
    ))
}

fn click_error(code: i64, note: &str) -> Json<Value> {
    Json(json!({ "error_code": code, "error_note": note }))
}

/// The Merchant API's Auth header: `merchant_user_id:sha1(timestamp + secret):timestamp`.
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(auth) = headers.get("auth").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let parts: Vec<&str> = auth.split(':').collect();
    let [user, digest, ts] = parts.as_slice() else {
        return false;
    };
    let c = &state.settings.click;
    let expected = hex::encode(Sha1::digest(format!(
        "{ts}{}",
        c.secret_key.expose_secret()
    )));
    *user == c.merchant_user_id && same_secret(digest.as_bytes(), expected.as_bytes())
}

/// The Merchant API's Auth check, then the state of the Click payment (our attempt) it names.
async fn authorized_attempt(
    state: &AppState,
    headers: &HeaderMap,
    payment_id: &str,
) -> Result<Option<String>, (StatusCode, Json<Value>)> {
    if !authorized(state, headers) {
        return Err((
            StatusCode::UNAUTHORIZED,
            click_error(-500, "Authorization failed"),
        ));
    }
    let tx = state
        .store
        .get_transaction(ProviderKind::Click, payment_id)
        .await
        .ok()
        .flatten();
    Ok(tx.map(|t| t.state))
}

async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((_service, payment_id)): ApiPath<(String, String)>,
    reversed: Reversed,
) -> (StatusCode, Json<Value>) {
    let tx_state = match authorized_attempt(&state, &headers, &payment_id).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let is_reversed = reversed
        .lock()
        .map(|r| r.contains(&payment_id))
        .unwrap_or(false);
    let code = match tx_state.as_deref() {
        _ if is_reversed => -2,
        Some(CONFIRMED) => 2,
        Some(PREPARED) => 1,
        Some(CANCELLED) => -1,
        _ => return (StatusCode::OK, click_error(-5, "Payment not found")),
    };
    (
        StatusCode::OK,
        Json(
            json!({ "error_code": 0, "error_note": "Success", "payment_id": payment_id.parse::<i64>().unwrap_or(0), "payment_status": code }),
        ),
    )
}

async fn reversal(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((_service, payment_id)): ApiPath<(String, String)>,
    reversed: Reversed,
) -> (StatusCode, Json<Value>) {
    let tx_state = match authorized_attempt(&state, &headers, &payment_id).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    if tx_state.as_deref() != Some(CONFIRMED) {
        return (
            StatusCode::OK,
            click_error(-5, "Payment not found or not successful"),
        );
    }
    let Ok(mut set) = reversed.lock() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            click_error(-1, "simulator state poisoned"),
        );
    };
    if !set.insert(payment_id.clone()) {
        return (StatusCode::OK, click_error(-4, "Payment already reversed"));
    }
    (
        StatusCode::OK,
        Json(
            json!({ "error_code": 0, "error_note": "Success", "payment_id": payment_id.parse::<i64>().unwrap_or(0) }),
        ),
    )
}

async fn status_by_mti(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((_service, merchant_trans_id, _date)): ApiPath<(String, String, String)>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            click_error(-500, "Authorization failed"),
        );
    }
    let Some(id) = PaymentId::parse(&merchant_trans_id) else {
        return (StatusCode::OK, click_error(-5, "Payment not found"));
    };
    let txs = state.store.list_transactions(&id).await.unwrap_or_default();
    match txs.iter().rev().find(|t| t.provider == ProviderKind::Click) {
        Some(t) => (
            StatusCode::OK,
            Json(json!({ "error_code": 0, "error_note": "Success",
            "payment_id": t.external_id.parse::<i64>().unwrap_or(0), "merchant_trans_id": merchant_trans_id })),
        ),
        None => (StatusCode::OK, click_error(-5, "Payment not found")),
    }
}
