//! A stand-in for the ATMOS API, mounted at /sandbox/atmos in sandbox mode (the default
//! `atmos.base_url` there): OAuth token, pay/create, pre-apply, apply (code 111111), get,
//! reverse, otp-resend, and the signed callback to tolov after a successful apply. The test
//! cards of atmos-epay.md A9 behave as documented (SMS not connected, insufficient funds, …).

use crate::api::auth::same_secret;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::providers::atmos::callback::expected_sign;
use crate::state::AppState;

pub const TEST_OTP: &str = "111111";
const SMS_NOT_CONNECTED: &str = "8600493214116133";
const PROCESSING_ERROR: &str = "8600312987000557";
const INSUFFICIENT_FUNDS: &str = "8600312998546358";

#[derive(Default)]
struct SimTx {
    amount: i64,
    account: String,
    card: Option<String>,
    confirmed: bool,
    reversed: bool,
}

#[derive(Default)]
struct Sim {
    next_id: i64,
    tokens: HashSet<String>,
    txs: HashMap<i64, SimTx>,
}

type Shared = Arc<Mutex<Sim>>;

pub fn router() -> Router<AppState> {
    let sim: Shared = Arc::default();
    let route = |path: &str, op: fn(&mut Sim, &Value, &AppState) -> (Value, Option<i64>)| {
        let sim = sim.clone();
        let path = path.to_owned();
        (
            path,
            post(move |s: State<AppState>, h: HeaderMap, b: Json<Value>| {
                merchant(s, h, b, sim.clone(), op)
            }),
        )
    };
    let mut r = Router::new().route(
        "/sandbox/atmos/token",
        post({
            let sim = sim.clone();
            move |s: State<AppState>, h: HeaderMap| token(s, h, sim.clone())
        }),
    );
    for (path, handler) in [
        route("/sandbox/atmos/merchant/pay/create", create),
        route("/sandbox/atmos/merchant/pay/pre-apply", pre_apply),
        route("/sandbox/atmos/merchant/pay/apply", apply),
        route("/sandbox/atmos/merchant/pay/get", get),
        route("/sandbox/atmos/merchant/pay/reverse", reverse),
        route("/sandbox/atmos/merchant/pay/otp-resend", otp_resend),
    ] {
        r = r.route(&path, handler);
    }
    r
}

fn ok(extra: Value) -> Value {
    let mut v = json!({ "result": { "code": "OK", "description": "Нет ошибок" } });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn err(code: &str, description: &str) -> Value {
    json!({ "result": { "code": code, "description": description } })
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    sim: Shared,
) -> (StatusCode, Json<Value>) {
    let a = &state.settings.atmos;
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!(
            "{}:{}",
            a.consumer_key.expose_secret(),
            a.consumer_secret.expose_secret()
        ))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client" })),
        );
    }
    let token: String = (0..32)
        .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
        .collect();
    if let Ok(mut s) = sim.lock() {
        s.tokens.insert(token.clone());
    }
    (
        StatusCode::OK,
        Json(
            json!({ "access_token": token, "scope": "am_application_scope default", "token_type": "Bearer", "expires_in": 3600 }),
        ),
    )
}

async fn merchant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
    sim: Shared,
    op: fn(&mut Sim, &Value, &AppState) -> (Value, Option<i64>),
) -> (StatusCode, Json<Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (answer, callback) = {
        let Ok(mut s) = sim.lock() else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(err("STPIMS-ERR-001", "Внутренняя ошибка")),
            );
        };
        if !s.tokens.contains(bearer) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "fault": { "message": "Invalid Credentials" } })),
            );
        }
        if body["store_id"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| body["store_id"].as_i64().map(|n| n.to_string()))
            .as_deref()
            != Some(state.settings.atmos.store_id.as_str())
        {
            return (
                StatusCode::OK,
                Json(err("STPIMS-ERR-009", "Неверный store_id")),
            );
        }
        let (answer, callback) = op(&mut s, &body, &state);
        let cb = callback.and_then(|id| s.txs.get(&id).map(|t| (id, t.amount, t.account.clone())));
        (answer, cb)
    };
    if let Some((id, amount, account)) = callback {
        tokio::spawn(send_callback(state.clone(), id, amount, account));
    }
    (StatusCode::OK, Json(answer))
}

fn tx_id(body: &Value) -> i64 {
    body["transaction_id"]
        .as_i64()
        .or_else(|| body["transaction_id"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn create(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    let (Some(amount), Some(account)) = (body["amount"].as_i64(), body["account"].as_str()) else {
        return (err("STPIMS-ERR-009", "Неверные параметры"), None);
    };
    if amount <= 0 || account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
        return (err("STPIMS-ERR-009", "Неверные параметры"), None);
    }
    s.next_id += 1;
    let id = 1_000_000 + s.next_id;
    s.txs.insert(
        id,
        SimTx {
            amount,
            account: account.to_owned(),
            ..SimTx::default()
        },
    );
    (
        ok(
            json!({ "transaction_id": id, "store_transaction": { "trans_id": id, "amount": amount, "account": account, "confirmed": false } }),
        ),
        None,
    )
}

fn pre_apply(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    let id = tx_id(body);
    let Some(t) = s.txs.get_mut(&id) else {
        return (err("STPIMS-ERR-092", "Транзакция закрыта"), None);
    };
    if t.confirmed {
        return (err("STPIMS-ERR-092", "Транзакция закрыта"), None);
    }
    let card = body["card_number"].as_str().unwrap_or("");
    let expiry = body["expiry"].as_str().unwrap_or("");
    if card.len() != 16 || expiry.len() != 4 {
        return (err("STPIMS-ERR-009", "Неверные данные карты"), None);
    }
    match card {
        SMS_NOT_CONNECTED => {
            return (
                err("STPIMS-ERR-013", "SMS-информирование не подключено"),
                None,
            )
        }
        PROCESSING_ERROR => return (err("STPIMS-ERR-001", "Внутренняя ошибка"), None),
        _ => {}
    }
    t.card = Some(card.to_owned());
    (ok(json!({ "transaction_id": id })), None)
}

fn store_transaction(id: i64, t: &SimTx) -> Value {
    json!({
        "trans_id": id,
        "success_trans_id": if t.confirmed { json!(id + 500_000) } else { Value::Null },
        "account": t.account,
        "amount": t.amount,
        "total": t.amount,
        "confirmed": t.confirmed,
        "status_code": if t.reversed { "-20" } else if t.confirmed { "0" } else { "1" },
        "status_message": if t.reversed { "Canceled" } else { "Success" },
    })
}

fn apply(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    let id = tx_id(body);
    let Some(t) = s.txs.get_mut(&id) else {
        return (err("STPIMS-ERR-092", "Транзакция закрыта"), None);
    };
    if t.confirmed {
        return (
            ok(json!({ "store_transaction": store_transaction(id, t) })),
            None,
        );
    }
    let Some(card) = t.card.clone() else {
        return (err("STPIMS-ERR-009", "Карта не привязана"), None);
    };
    let otp = body["otp"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| body["otp"].as_i64().map(|n| n.to_string()))
        .unwrap_or_default();
    if otp != TEST_OTP {
        return (err("STPIMS-ERR-044", "Неверный код"), None);
    }
    if card == INSUFFICIENT_FUNDS {
        return (err("STPIMS-ERR-112", "Недостаточно средств"), None);
    }
    t.confirmed = true;
    (
        ok(
            json!({ "store_transaction": store_transaction(id, t), "ofd_url": "https://ofd.example/receipt" }),
        ),
        Some(id),
    )
}

fn get(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    let id = tx_id(body);
    match s.txs.get(&id) {
        Some(t) => (
            ok(json!({ "store_transaction": store_transaction(id, t) })),
            None,
        ),
        None => (err("STPIMS-ERR-092", "Транзакция закрыта"), None),
    }
}

fn reverse(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    let id = tx_id(body);
    match s.txs.get_mut(&id) {
        Some(t) if t.confirmed && !t.reversed => {
            t.reversed = true;
            (ok(json!({ "transaction_id": id })), None)
        }
        Some(_) => (
            err("STPIMS-ERR-092", "Транзакция не может быть отменена"),
            None,
        ),
        None => (err("STPIMS-ERR-092", "Транзакция закрыта"), None),
    }
}

fn otp_resend(s: &mut Sim, body: &Value, _: &AppState) -> (Value, Option<i64>) {
    match s.txs.get(&tx_id(body)) {
        Some(t) if t.card.is_some() && !t.confirmed => (ok(json!({})), None),
        _ => (err("STPIMS-ERR-092", "Транзакция закрыта"), None),
    }
}

/// What ATMOS does after a debit: a signed callback to the merchant.
async fn send_callback(state: AppState, id: i64, amount: i64, account: String) {
    let a = &state.settings.atmos;
    let (store_id, tid, amount) = (a.store_id.clone(), id.to_string(), amount.to_string());
    let sign = expected_sign(
        &a.callback_hash,
        &[&store_id, &tid, &account, &amount],
        a.callback_key.expose_secret(),
    );
    let body = json!({
        "store_id": store_id, "transaction_id": tid, "transaction_time": state.now().timestamp_millis().to_string(),
        "amount": amount, "invoice": account, "sign": sign,
    });
    let sent = state
        .http
        .post(format!("{}/v1/atmos/callback", state.self_url))
        .json(&body)
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sandbox atmos: callback not delivered");
    }
}
