//! A stand-in for Halyk ePay, mounted at /sandbox/epay in sandbox mode (the default
//! `epay.oauth_url`/`api_url` there): the token endpoint (payment-scoped and general tokens),
//! check-status, refunds, and a payer who "pays on the payment page" with the published test
//! cards and triggers the postLink (or failurePostLink) like ePay does.

use crate::api::auth::same_secret;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::extract::{ApiPath, JsonBody};
use crate::domain::{PaymentId, ProviderKind};
use crate::error::ApiError;
use crate::money::{Currency, Money};
use crate::state::AppState;

/// Published test cards that pay (atmos-epay.md B9) and the locked ones that are declined.
pub const GOOD_CARDS: [&str; 2] = ["4405639704015096", "5522042705066736"];
pub const DECLINED_CARDS: [&str; 2] = ["4003032704547597", "5578342710750560"];

pub struct Invoice {
    amount: Money,
    post_link: String,
    failure_post_link: String,
    secret_hash: String,
    status: &'static str,
    reason_code: i64,
    txn_id: String,
    card_mask: String,
    refunded: i64,
    refund_ids: HashSet<String>,
}

#[derive(Default)]
pub struct Sim {
    tokens: HashSet<String>,
    invoices: HashMap<String, Invoice>,
}

type Shared = Arc<Mutex<Sim>>;

pub fn router() -> Router<AppState> {
    let sim: Shared = Arc::default();
    let (a, b, c, d, e) = (sim.clone(), sim.clone(), sim.clone(), sim.clone(), sim);
    Router::new()
        .route(
            "/sandbox/epay/oauth2/token",
            post(
                move |s: State<AppState>, f: Form<HashMap<String, String>>| token(s, f, a.clone()),
            ),
        )
        .route(
            "/sandbox/epay/api/check-status/payment/transaction/{invoice}",
            get(move |h: HeaderMap, p: ApiPath<String>| check_status(h, p, b.clone())),
        )
        .route("/sandbox/epay/payform/{payment_id}", get(payform))
        .route(
            "/sandbox/epay/api/operation/{id}/{op}",
            post(move |h: HeaderMap, p: ApiPath<(String, String)>| operation(h, p, e.clone())),
        )
        .route(
            "/sandbox/epay/api/operation/{id}/refund",
            post(
                move |h: HeaderMap, p: ApiPath<String>, q: Query<HashMap<String, String>>| {
                    refund(h, p, q, c.clone())
                },
            ),
        )
        .route(
            "/sandbox/epay/{payment_id}/pay",
            post(
                move |s: State<AppState>, p: ApiPath<String>, b: JsonBody<PayBody>| {
                    pay(s, p, b, d.clone())
                },
            ),
        )
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
        .collect()
}

async fn token(
    State(state): State<AppState>,
    Form(f): Form<HashMap<String, String>>,
    sim: Shared,
) -> (StatusCode, Json<Value>) {
    let e = &state.settings.epay;
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials"
        || field("client_id") != e.client_id
        || !same_secret(
            field("client_secret").as_bytes(),
            e.client_secret.expose_secret().as_bytes(),
        )
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        );
    }
    let token = random_hex(32);
    let Ok(mut s) = sim.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    if let Some(invoice) = f.get("invoiceID") {
        let Ok(amount) = Money::parse_major(field("amount"), Currency::Kzt) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "code": 470, "message": "invalid amount" })),
            );
        };
        if field("terminal") != e.terminal_id || field("currency") != "KZT" {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "code": 106, "message": "incorrect terminal or currency" })),
            );
        }
        s.invoices.insert(
            invoice.clone(),
            Invoice {
                amount,
                post_link: field("postLink").to_owned(),
                failure_post_link: field("failurePostLink").to_owned(),
                secret_hash: field("secret_hash").to_owned(),
                status: "NEW",
                reason_code: -1,
                txn_id: String::new(),
                card_mask: String::new(),
                refunded: 0,
                refund_ids: HashSet::new(),
            },
        );
    } else {
        s.tokens.insert(token.clone());
    }
    (
        StatusCode::OK,
        Json(
            json!({ "access_token": token, "expires_in": 7200, "refresh_token": "", "scope": field("scope"), "token_type": "Bearer" }),
        ),
    )
}

fn authorized(headers: &HeaderMap, s: &Sim) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| s.tokens.contains(t))
}

/// ePay sends amounts as JSON numbers (tenge with decimals).
fn number(m: Money) -> Value {
    serde_json::Number::from_str(&m.to_major_string())
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

async fn check_status(
    headers: HeaderMap,
    ApiPath(invoice): ApiPath<String>,
    sim: Shared,
) -> (StatusCode, Json<Value>) {
    let Ok(s) = sim.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    if !authorized(&headers, &s) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        );
    }
    match s.invoices.get(&invoice) {
        Some(i) if i.status != "NEW" => (
            StatusCode::OK,
            Json(json!({
                "resultCode": "100",
                "resultMessage": "Success",
                "transaction": {
                    "id": i.txn_id, "invoiceID": invoice, "amount": number(i.amount), "currency": "KZT",
                    "statusName": i.status, "reasonCode": i.reason_code, "cardMask": i.card_mask,
                }
            })),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "resultCode": "102", "resultMessage": "invoice not found" })),
        ),
    }
}

async fn refund(
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    Query(q): Query<HashMap<String, String>>,
    sim: Shared,
) -> (StatusCode, Json<Value>) {
    let Ok(mut s) = sim.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    if !authorized(&headers, &s) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        );
    }
    let Some(inv) = s.invoices.values_mut().find(|i| i.txn_id == id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "code": 1, "message": "operation not found" })),
        );
    };
    let external = q.get("externalID").cloned().unwrap_or_default();
    if !external.is_empty() && inv.refund_ids.contains(&external) {
        return (StatusCode::OK, Json(Value::Null));
    }
    let amount = match q.get("amount") {
        Some(a) => Money::parse_major(a, Currency::Kzt)
            .map(|m| m.minor())
            .unwrap_or(0),
        None => inv.amount.minor() - inv.refunded,
    };
    if !matches!(inv.status, "CHARGE" | "REFUND")
        || amount < 1_000
        || inv.refunded + amount > inv.amount.minor()
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "code": 2, "message": "refund not allowed" })),
        );
    }
    inv.refunded += amount;
    inv.refund_ids.insert(external);
    // B6: REFUND means "refunded (full or partial)".
    inv.status = "REFUND";
    (StatusCode::OK, Json(Value::Null))
}

/// `operation/{id}/charge` (AUTH → CHARGE) and `operation/{id}/cancel` (AUTH → CANCEL).
async fn operation(
    headers: HeaderMap,
    ApiPath((id, op)): ApiPath<(String, String)>,
    sim: Shared,
) -> (StatusCode, Json<Value>) {
    let Ok(mut s) = sim.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    };
    if !authorized(&headers, &s) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        );
    }
    let Some(inv) = s.invoices.values_mut().find(|i| i.txn_id == id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "code": 1, "message": "operation not found" })),
        );
    };
    match (op.as_str(), inv.status) {
        ("charge", "AUTH") => inv.status = "CHARGE",
        ("cancel", "AUTH") => inv.status = "CANCEL",
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({ "code": 3, "message": format!("{op} is not allowed in {}", inv.status) }),
                ),
            )
        }
    }
    (StatusCode::OK, Json(Value::Null))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// A test card; default 4405639704015096 (pays). 4003032704547597 is declined.
    pub card: Option<String>,
    /// Play a two-step terminal: the payment stops at AUTH until charged or cancelled.
    pub two_step: Option<bool>,
}

/// Sandbox only: the payer pays the payment's invoice on ePay's page with a test card; ePay then
/// calls the postLink (success) or failurePostLink (decline).
#[utoipa::path(post, path = "/sandbox/epay/{payment_id}/pay", tag = "sandbox", params(("payment_id" = String, Path)),
    responses((status = 200, description = "ePay's outcome and the postLink answer"),
        (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem)))]
pub async fn pay(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<PayBody>,
    sim: Shared,
) -> Result<Json<Value>, ApiError> {
    let id = PaymentId::parse(&id).ok_or_else(|| ApiError::not_found("payment"))?;
    let payment = match state.store.get_payment(&id).await? {
        Some(p) if p.provider == ProviderKind::Epay => p,
        Some(_) => {
            return Err(ApiError::conflict(
                "wrong_provider",
                "this payment is not an ePay payment",
            ))
        }
        None => return Err(ApiError::not_found("payment")),
    };
    let invoice = payment.provider_data["invoice_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let two_step = body.value.two_step.unwrap_or(false);
    let card = body.value.card.unwrap_or_else(|| GOOD_CARDS[0].to_owned());
    let approved = GOOD_CARDS.contains(&card.as_str());
    if !approved && !DECLINED_CARDS.contains(&card.as_str()) {
        return Err(ApiError::unprocessable(
            "unknown_test_card",
            format!("use one of {GOOD_CARDS:?} or {DECLINED_CARDS:?}"),
        ));
    }
    let (link, post) = {
        let Ok(mut s) = sim.lock() else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "simulator state poisoned"
            )));
        };
        let Some(inv) = s.invoices.get_mut(&invoice) else {
            return Err(ApiError::conflict(
                "unknown_invoice",
                "ePay has no token for this invoice",
            ));
        };
        if matches!(inv.status, "CHARGE" | "REFUND" | "AUTH") {
            return Err(ApiError::conflict("already_paid", "this invoice is paid"));
        }
        inv.txn_id = format!("{}-{}", random_hex(8), random_hex(12));
        inv.card_mask = format!("{}...{}", &card[..6], &card[card.len() - 4..]);
        inv.status = match (approved, two_step) {
            (true, true) => "AUTH",
            (true, false) => "CHARGE",
            (false, _) => "REJECT",
        };
        inv.reason_code = if approved { 0 } else { 465 };
        let body = json!({
            "id": inv.txn_id, "invoiceId": invoice, "amount": number(inv.amount), "currency": "KZT",
            "terminal": state.settings.epay.terminal_id, "accountId": payment.order_id,
            "cardMask": inv.card_mask, "cardType": if card.starts_with('4') { "VISA" } else { "MC" },
            "code": if approved { "ok" } else { "error" }, "reasonCode": inv.reason_code,
            "reason": if approved { "success" } else { "card is blocked" }, "secret_hash": inv.secret_hash,
            "dateTime": state.now().to_rfc3339(),
        });
        (
            if approved {
                inv.post_link.clone()
            } else {
                inv.failure_post_link.clone()
            },
            body,
        )
    };
    // The links point at the public URL; the simulator reaches this process directly.
    let path = link
        .split_once("/v1/")
        .map(|(_, p)| format!("{}/v1/{p}", state.self_url))
        .unwrap_or(link);
    let answer = state
        .http
        .post(&path)
        .json(&post)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    Ok(Json(
        json!({ "payment_id": payment.id.as_str(), "invoice_id": invoice, "approved": approved, "post_link_status": answer }),
    ))
}

/// Sandbox only: a stand-in for ePay's payment page: one button per published test card;
/// pressing one pays (or is declined) exactly as `POST /sandbox/epay/{payment_id}/pay` does.
#[utoipa::path(get, path = "/sandbox/epay/payform/{payment_id}", tag = "sandbox", params(("payment_id" = String, Path)),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub async fn payform(ApiPath(id): ApiPath<String>) -> axum::response::Html<String> {
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let buttons: String = GOOD_CARDS
        .iter()
        .map(|c| (c, "pays"))
        .chain(DECLINED_CARDS.iter().map(|c| (c, "is declined")))
        .map(|(c, what)| {
            format!("<p><button onclick=\"pay('{c}')\">Card {c} ({what})</button></p>")
        })
        .collect();
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ePay sandbox</title></head><body>\
         <h1>Halyk ePay (sandbox)</h1><p>Payment {id}</p>{buttons}<pre id=\"out\"></pre>\
         <script>async function pay(card) {{\
           const r = await fetch('/sandbox/epay/{id}/pay', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{card}})}});\
           document.getElementById('out').textContent = JSON.stringify(await r.json(), null, 2);\
         }}</script></body></html>"
    ))
}
