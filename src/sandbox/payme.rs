//! The Payme payer: plays Payme's side of a payment against tolov's own `/v1/payme`, with the
//! configured key, exactly as Payme would call it (Check → Create → Perform, or Cancel).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::api::auth::MerchantAuth;
use crate::api::extract::{ApiPath, JsonBody};
use crate::domain::{PaymentId, ProviderKind};
use crate::error::ApiError;
use crate::providers::payme::rpc::{STATE_CREATED, STATE_PERFORMED};
use crate::providers::payme::LOGIN;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandbox/payme/{id}/pay", post(pay))
        .route("/sandbox/payme/{id}/cancel", post(cancel))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Payme cancel reason; default 3 before perform, 5 (refund) after.
    pub reason: Option<i64>,
}

struct Caller<'a> {
    state: &'a AppState,
    key: SecretString,
    steps: Vec<Value>,
}

impl<'a> Caller<'a> {
    /// Payme knows the key it last set; this process does too, unless ChangePassword ran before
    /// a restart (only the digest is stored), where the payer says so and calls nothing.
    async fn new(state: &'a AppState) -> Result<Caller<'a>, ApiError> {
        let key = state
            .payme_key
            .presentable(state.store.as_ref(), state.now())
            .await?
            .ok_or_else(|| {
                ApiError::conflict(
                    "payme_key_changed",
                    "ChangePassword replaced the Payme key and this process knows only its \
                     digest: set payme.key to the new key and restart",
                )
            })?;
        Ok(Caller {
            state,
            key,
            steps: Vec::new(),
        })
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value, ApiError> {
        let auth = STANDARD.encode(format!("{LOGIN}:{}", self.key.expose_secret()));
        let id = self.steps.len() + 1;
        let res = self
            .state
            .http
            .post(format!("{}/v1/payme", self.state.self_url))
            .header("authorization", format!("Basic {auth}"))
            .header("content-type", "text/json; charset=UTF-8")
            .json(&json!({ "method": method, "params": params, "id": id }))
            .send()
            .await
            .map_err(|e| {
                ApiError::internal(
                    anyhow::anyhow!(e).context("sandbox payer could not reach /v1/payme"),
                )
            })?;
        let answer: Value = res.json().await.map_err(|e| {
            ApiError::internal(anyhow::anyhow!(e).context("sandbox payer got no JSON"))
        })?;
        self.steps
            .push(json!({ "method": method, "params": params, "answer": answer }));
        if let Some(err) = answer.get("error") {
            let code = err["code"].as_i64().unwrap_or(0);
            let text = err["message"]["en"].as_str().unwrap_or("").to_owned();
            return Err(ApiError::unprocessable(
                "payme_refused",
                format!("{method} answered {code}: {text}"),
            ));
        }
        Ok(answer["result"].clone())
    }

    fn report(&self, payment_id: &PaymentId) -> Json<Value> {
        Json(json!({ "payment_id": payment_id.as_str(), "calls": self.steps }))
    }
}

async fn payme_payment(state: &AppState, id: &str) -> Result<crate::domain::Payment, ApiError> {
    let id = PaymentId::parse(id).ok_or_else(|| ApiError::not_found("payment"))?;
    match state.store.get_payment(&id).await? {
        Some(p) if p.provider == ProviderKind::Payme => Ok(p),
        Some(_) => Err(ApiError::conflict(
            "wrong_provider",
            "this payment is not a Payme payment",
        )),
        None => Err(ApiError::not_found("payment")),
    }
}

/// Sandbox only: pays a Payme payment as Payme would (CheckPerformTransaction,
/// CreateTransaction, PerformTransaction, CheckTransaction against `/v1/payme`). On a refusal the
/// answer is 422 with every call made so far.
#[utoipa::path(post, path = "/sandbox/payme/{id}/pay", tag = "sandbox", params(("id" = String, Path)),
    responses((status = 200, description = "paid; the calls made and their answers"),
        (status = 401, body = crate::error::Problem),
        (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, description = "Payme's rules refused a call")),
    security(("api_key" = [])))]
pub async fn pay(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let payment = payme_payment(&state, &id).await?;
    let account = json!({ state.settings.payme.account_field.clone(): payment.id.as_str() });
    let payme_id: String = (0..24)
        .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
        .collect();
    let mut caller = Caller::new(&state).await?;
    let amount = payment.amount.minor();
    let outcome = async {
        caller
            .call(
                "CheckPerformTransaction",
                json!({ "amount": amount, "account": account }),
            )
            .await?;
        let time = state.now().timestamp_millis();
        caller
            .call(
                "CreateTransaction",
                json!({ "id": payme_id, "time": time, "amount": amount, "account": account }),
            )
            .await?;
        caller
            .call("PerformTransaction", json!({ "id": payme_id }))
            .await?;
        caller
            .call("CheckTransaction", json!({ "id": payme_id }))
            .await
    }
    .await;
    match outcome {
        Ok(_) => Ok((StatusCode::OK, caller.report(&payment.id))),
        Err(e) => Ok((
            e.status,
            Json(
                json!({ "error": e.problem(), "payment_id": payment.id.as_str(), "calls": caller.steps }),
            ),
        )),
    }
}

/// Sandbox only: cancels the payment's live or performed Payme transaction as Payme would
/// (reason 3 before perform, 5 after, or the body's `reason`).
#[utoipa::path(post, path = "/sandbox/payme/{id}/cancel", tag = "sandbox", params(("id" = String, Path)),
    responses((status = 200, description = "cancelled; the call made and its answer"),
        (status = 401, body = crate::error::Problem),
        (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, description = "Payme's rules refused the call")),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<CancelBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let payment = payme_payment(&state, &id).await?;
    let txs = state.store.list_transactions(&payment.id).await?;
    let tx = txs
        .iter()
        .rev()
        .find(|t| t.state == STATE_CREATED || t.state == STATE_PERFORMED)
        .ok_or_else(|| {
            ApiError::conflict(
                "nothing_to_cancel",
                "this payment has no live or performed Payme transaction",
            )
        })?;
    let reason = body
        .value
        .reason
        .unwrap_or(if tx.state == STATE_PERFORMED { 5 } else { 3 });
    let mut caller = Caller::new(&state).await?;
    match caller
        .call(
            "CancelTransaction",
            json!({ "id": tx.external_id, "reason": reason }),
        )
        .await
    {
        Ok(_) => Ok((StatusCode::OK, caller.report(&payment.id))),
        Err(e) => Ok((
            e.status,
            Json(json!({ "error": e.problem(), "calls": caller.steps })),
        )),
    }
}
