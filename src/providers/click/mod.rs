//! Click SHOP-API: Click calls `POST /v1/click/prepare` and `/v1/click/complete` (form-encoded,
//! md5 `sign_string`); the payer pays at my.click.uz through the pay link built here; refunds
//! and status checks go through the Click Merchant API.

pub mod merchant_api;
pub mod shop;
pub mod sign;

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use self::merchant_api::{MerchantApi, PAYMENT_SUCCESSFUL};
use self::shop::{Endpoint, Request};
use self::sign::Form;
use super::{
    Provider, ProviderContext, ProviderError, ProviderStatus, RefundOutcome, RefundPolicy,
};
use crate::config::ClickSettings;
use crate::domain::{NewPayment, Payment, ProviderKind, RefundId};
use crate::money::Money;
use crate::state::AppState;
use crate::store::Store;

pub struct Click {
    settings: ClickSettings,
    api: MerchantApi,
    store: Arc<dyn Store>,
}

impl Click {
    pub fn new(ctx: &ProviderContext) -> Self {
        let settings = ctx.settings.click.clone();
        let base = if settings.api_url.is_empty() && ctx.settings.is_sandbox() {
            format!("{}/sandbox/click/api", ctx.self_url)
        } else {
            settings.api_url.clone()
        };
        let api = MerchantApi {
            base,
            service_id: settings.service_id.clone(),
            merchant_user_id: settings.merchant_user_id.clone(),
            secret: settings.secret_key.clone(),
            http: ctx.http.clone(),
        };
        Click {
            settings,
            api,
            store: ctx.store.clone(),
        }
    }

    fn secret(&self) -> &str {
        self.settings.secret_key.expose_secret()
    }

    /// The pay link of §2.8, every value URL-encoded.
    fn pay_url(&self, p: &NewPayment) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("service_id", &self.settings.service_id)
            .append_pair("merchant_id", &self.settings.merchant_id)
            .append_pair("amount", &p.amount.to_major_string())
            .append_pair("transaction_param", p.id.as_str());
        if !self.settings.merchant_user_id.is_empty() {
            q.append_pair("merchant_user_id", &self.settings.merchant_user_id);
        }
        if let Some(r) = &p.return_url {
            q.append_pair("return_url", r);
        }
        format!("{}?{}", self.settings.pay_url, q.finish())
    }

    async fn confirmed_click_id(&self, payment: &Payment) -> Result<Option<String>, ProviderError> {
        let txs = self
            .store
            .list_transactions(&payment.id)
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Click, e.into()))?;
        Ok(txs
            .into_iter()
            .find(|t| t.state == shop::CONFIRMED)
            .map(|t| t.external_id))
    }
}

async fn endpoint(
    state: &AppState,
    click: &Click,
    which: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Json<Value> {
    let Some(form) = body.ok().and_then(|b| Form::parse(&b)) else {
        return Json(shop::garbled(which));
    };
    let req = Request {
        state,
        click,
        form: &form,
        endpoint: which,
    };
    let outcome = match which {
        Endpoint::Prepare => req.prepare().await,
        Endpoint::Complete => req.complete().await,
    };
    let answer = shop::reply(which, Some(&form), outcome);
    tracing::info!(
        error = answer["error"].as_i64().unwrap_or(0),
        "click answered"
    );
    Json(answer)
}

#[async_trait]
impl Provider for Click {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Click
    }

    async fn start(&self, payment: &NewPayment) -> Result<Value, ProviderError> {
        Ok(json!({ "checkout_url": self.pay_url(payment) }))
    }

    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy::FullOnly
    }

    async fn refund(
        &self,
        payment: &Payment,
        _amount: Money,
        _refund_id: &RefundId,
    ) -> Result<RefundOutcome, ProviderError> {
        let click_id =
            self.confirmed_click_id(payment)
                .await?
                .ok_or_else(|| ProviderError::Rejected {
                    provider: ProviderKind::Click,
                    code: "no_confirmed_payment".into(),
                    message: "no confirmed Click payment to reverse".into(),
                })?;
        self.api.reversal(&click_id).await?;
        Ok(RefundOutcome::Succeeded {
            external_id: Some(click_id),
        })
    }

    async fn fetch_status(&self, payment: &Payment) -> Result<ProviderStatus, ProviderError> {
        let click_id = match self.confirmed_click_id(payment).await? {
            Some(id) => id,
            None => {
                let date = payment.created_at.format("%Y-%m-%d").to_string();
                match self
                    .api
                    .status_by_merchant_trans_id(payment.id.as_str(), &date)
                    .await?
                {
                    Some(id) => id.to_string(),
                    None => return Ok(ProviderStatus::Pending),
                }
            }
        };
        let status = self.api.payment_status(&click_id).await?;
        Ok(match status {
            PAYMENT_SUCCESSFUL => ProviderStatus::Succeeded,
            s if s < 0 => ProviderStatus::Failed {
                reason: format!("click payment_status {s}"),
            },
            _ => ProviderStatus::Pending,
        })
    }

    fn routes(self: Arc<Self>) -> Router<AppState> {
        let (prepare, complete) = (self.clone(), self);
        Router::new()
            .route(
                "/v1/click/prepare",
                post(
                    move |State(state): State<AppState>, body: Result<Bytes, BytesRejection>| {
                        let click = prepare.clone();
                        async move { endpoint(&state, &click, Endpoint::Prepare, body).await }
                    },
                ),
            )
            .route(
                "/v1/click/complete",
                post(
                    move |State(state): State<AppState>, body: Result<Bytes, BytesRejection>| {
                        let click = complete.clone();
                        async move { endpoint(&state, &click, Endpoint::Complete, body).await }
                    },
                ),
            )
    }
}

/// Click SHOP-API Prepare (called by Click): form fields click_trans_id, service_id,
/// click_paydoc_id, merchant_trans_id (= payment id), amount (soums), action=0, error, error_note,
/// sign_time, sign_string. Answers HTTP 200 JSON {click_trans_id, merchant_trans_id,
/// merchant_prepare_id, error, error_note}.
#[utoipa::path(post, path = "/v1/click/prepare", tag = "providers",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Click answer with `error` 0 or -1..-9", content_type = "application/json")))]
pub fn prepare_doc() {}

/// Click SHOP-API Complete (called by Click): the Prepare fields plus merchant_prepare_id, action=1.
/// Answers HTTP 200 JSON {click_trans_id, merchant_trans_id, merchant_confirm_id, error, error_note}.
#[utoipa::path(post, path = "/v1/click/complete", tag = "providers",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Click answer with `error` 0 or -1..-9", content_type = "application/json")))]
pub fn complete_doc() {}
