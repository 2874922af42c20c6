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
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use self::merchant_api::{MerchantApi, PAYMENT_SUCCESSFUL};
use self::shop::{Endpoint, Request};
use self::sign::Form;
use super::{
    Provider, ProviderContext, ProviderError, ProviderStatus, RefundCheck, RefundOutcome,
    RefundPolicy,
};
use crate::config::ClickSettings;
use crate::domain::{
    Change, NewPayment, Payment, PaymentStatus, ProviderKind, Refund, RefundId, Transaction,
    TransactionUpdate,
};
use crate::money::Money;
use crate::state::AppState;
use crate::store::{Store, StoreError};

pub struct Click {
    settings: ClickSettings,
    api: MerchantApi,
    store: Arc<dyn Store>,
    clock: Arc<dyn crate::state::Clock>,
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
            clock: ctx.clock.clone(),
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

    /// The payment's attempts in `state`.
    async fn attempts_in(
        &self,
        payment: &Payment,
        state: &str,
    ) -> Result<Vec<Transaction>, ProviderError> {
        Ok(self
            .store
            .list_transactions(&payment.id)
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Click, e.into()))?
            .into_iter()
            .filter(|t| t.state == state)
            .collect())
    }

    /// The open attempt Click reports successful, if any.
    async fn paid_open_attempt(
        &self,
        payment: &Payment,
    ) -> Result<Option<Transaction>, ProviderError> {
        for t in self.attempts_in(payment, shop::PREPARED).await? {
            if self.api.payment_status(&t.external_id).await? == PAYMENT_SUCCESSFUL {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// For a refund of a payment recorded paid without its attempt: the attempt Click says it
    /// paid, recorded confirmed before the reversal, so an unanswered reversal can later be
    /// looked up by it (`refund_status`) and a late Complete of it hears -4. Decided like such
    /// a Complete (`shop`): on the payment as it is now, guarded on its version, so a Complete
    /// naming another attempt at the same time cannot have both kept.
    async fn name_the_paid_attempt(
        &self,
        payment: &Payment,
    ) -> Result<Option<String>, ProviderError> {
        let unavailable = |e: StoreError| ProviderError::Unavailable(ProviderKind::Click, e.into());
        let fresh = self
            .store
            .get_payment(&payment.id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                ProviderError::Malformed(ProviderKind::Click, "payment vanished".into())
            })?;
        if let Some(id) = self.confirmed_click_id(&fresh).await? {
            return Ok(Some(id));
        }
        let Some(t) = self.paid_open_attempt(&fresh).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let at = Some(now.timestamp_millis());
        let change = Change {
            update_transaction: Some(shop::attempt_update(
                &t,
                shop::CONFIRMED,
                at,
                None,
                None,
                now,
            )),
            ..shop::touch(&fresh, now)
        };
        self.store.apply(&change).await.map_err(unavailable)?;
        Ok(Some(t.external_id))
    }

    async fn confirmed_click_id(&self, payment: &Payment) -> Result<Option<String>, ProviderError> {
        Ok(self
            .attempts_in(payment, shop::CONFIRMED)
            .await?
            .into_iter()
            .next()
            .map(|t| t.external_id))
    }
}

async fn endpoint(
    state: AppState,
    click: Arc<Click>,
    which: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Json<Value> {
    let Some(form) = body.ok().and_then(|b| Form::parse(&b)) else {
        return Json(shop::garbled(which));
    };
    // Click must hear its protocol even when tolov is slow: -7, "failed to update", which it
    // retries.
    let late = Json(shop::unavailable(which, &form));
    let st = state.clone();
    let work = async move { answer(&st, &click, which, form).await };
    super::answer_in_time(&state, "click", work, late).await
}

async fn answer(state: &AppState, click: &Click, which: Endpoint, form: Form) -> Json<Value> {
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

/// Click's `payment_status` (§2.9: < 0 error, 0 created, 1 processing, 2 successful).
fn status_of(payment_status: i64) -> ProviderStatus {
    match payment_status {
        PAYMENT_SUCCESSFUL => ProviderStatus::Succeeded,
        s if s < 0 => ProviderStatus::Failed {
            reason: format!("click payment_status {s}"),
        },
        _ => ProviderStatus::Pending,
    }
}

#[async_trait]
impl Provider for Click {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Click
    }

    async fn start(&self, payment: &NewPayment) -> Result<Value, ProviderError> {
        Ok(json!({ "checkout_url": self.pay_url(payment) }))
    }

    /// Click may have charged a prepared attempt whose Complete never came; canceled, the
    /// payment would never be looked at again (reconciliation reads `processing` ones). So each
    /// prepared attempt is asked about first: charged refuses the cancel, like ATMOS and ePay.
    async fn cancel(&self, payment: &Payment) -> Result<(), ProviderError> {
        if let Some(charged) = self.paid_open_attempt(payment).await? {
            return Err(ProviderError::Rejected {
                provider: ProviderKind::Click,
                code: super::ALREADY_CHARGED.into(),
                message: format!(
                    "Click charged attempt {}; it is recorded as paid shortly, refund it then",
                    charged.external_id
                ),
            });
        }
        Ok(())
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
        let click_id = match self
            .confirmed_click_id(payment)
            .await
            .map_err(ProviderError::before_sending)?
        {
            Some(id) => Some(id),
            // Reconciliation may have recorded the payment paid without naming the attempt
            // (Click did not answer the second question): Click names it now.
            None => self
                .name_the_paid_attempt(payment)
                .await
                .map_err(ProviderError::before_sending)?,
        }
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

    /// Click is asked about each attempt by its own id (`click_trans_id`, Click's payment id),
    /// never about "the payment" as a whole: with several attempts open, the answer must name
    /// the one that paid, which [`Self::attempt_settlement`] then confirms in the same change.
    /// Paid as soon as one attempt is; failed only when every open attempt failed; an attempt
    /// Click cannot answer about decides nothing. Without an attempt Click could complete,
    /// nothing was or will be paid.
    async fn fetch_status(&self, payment: &Payment) -> Result<ProviderStatus, ProviderError> {
        if let Some(click_id) = self.confirmed_click_id(payment).await? {
            return Ok(status_of(self.api.payment_status(&click_id).await?));
        }
        let open = self.attempts_in(payment, shop::PREPARED).await?;
        if open.is_empty() {
            return Ok(ProviderStatus::Canceled);
        }
        let (mut failed, mut pending, mut unknown) = (None, false, None);
        for t in &open {
            match self.api.payment_status(&t.external_id).await.map(status_of) {
                Ok(ProviderStatus::Succeeded) => return Ok(ProviderStatus::Succeeded),
                Ok(f @ ProviderStatus::Failed { .. }) => failed = Some(f),
                Ok(_) => pending = true,
                Err(e) => unknown = Some(e),
            }
        }
        if let Some(e) = unknown {
            return Err(e);
        }
        Ok(match failed {
            Some(f) if !pending => f,
            _ => ProviderStatus::Pending,
        })
    }

    /// A reversal Click did not answer: Click's `payment_status` of the confirmed payment tells
    /// whether it happened (negative: cancelled, so reversed; still 2: not reversed).
    async fn refund_status(
        &self,
        payment: &Payment,
        _refund: &Refund,
        _others: &[Refund],
    ) -> Result<RefundCheck, ProviderError> {
        let Some(click_id) = self.confirmed_click_id(payment).await? else {
            return Ok(RefundCheck::Unknown);
        };
        Ok(match self.api.payment_status(&click_id).await? {
            s if s < 0 => RefundCheck::Refunded {
                external_id: Some(click_id),
            },
            PAYMENT_SUCCESSFUL => RefundCheck::NotRefunded,
            _ => RefundCheck::Unknown,
        })
    }

    /// Reconciliation and expiry act on Click's word about an attempt ([`Self::fetch_status`]):
    /// that attempt ends with the payment, confirmed when Click says paid (so a refund finds
    /// it and a late Complete hears -4) and cancelled when it says failed (so it no longer
    /// counts as live). With several attempts open, Click is asked which one it means.
    async fn attempt_settlement(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        let paid = match to {
            PaymentStatus::Succeeded => true,
            PaymentStatus::Pending
            | PaymentStatus::Expired
            | PaymentStatus::Failed
            | PaymentStatus::Canceled => false,
            _ => return Ok(None),
        };
        let open: Vec<Transaction> = self
            .store
            .list_transactions(&payment.id)
            .await?
            .into_iter()
            .filter(|t| t.state == shop::PREPARED)
            .collect();
        let tx = match open.as_slice() {
            [] => return Ok(None),
            [one] => one.clone(),
            several => {
                let says_so = |s: i64| if paid { s == PAYMENT_SUCCESSFUL } else { s < 0 };
                let mut meant = None;
                for t in several {
                    match self.api.payment_status(&t.external_id).await {
                        Ok(s) if says_so(s) => {
                            meant = Some(t.clone());
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(click_trans_id = %t.external_id, error = %e,
                            "click: status of an open attempt unavailable; left as it is"),
                    }
                }
                let Some(t) = meant else { return Ok(None) };
                t
            }
        };
        let at = Some(now.timestamp_millis());
        Ok(Some(if paid {
            shop::attempt_update(&tx, shop::CONFIRMED, at, None, None, now)
        } else {
            shop::attempt_update(&tx, shop::CANCELLED, None, at, None, now)
        }))
    }

    fn routes(self: Arc<Self>) -> Router<AppState> {
        let (prepare, complete) = (self.clone(), self);
        Router::new()
            .route(
                "/v1/click/prepare",
                post(
                    move |State(state): State<AppState>, body: Result<Bytes, BytesRejection>| {
                        let click = prepare.clone();
                        endpoint(state, click, Endpoint::Prepare, body)
                    },
                ),
            )
            .route(
                "/v1/click/complete",
                post(
                    move |State(state): State<AppState>, body: Result<Bytes, BytesRejection>| {
                        let click = complete.clone();
                        endpoint(state, click, Endpoint::Complete, body)
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

#[cfg(test)]
mod tests {
    use super::{status_of, ProviderStatus};

    #[test]
    fn payment_status_maps_by_sign() {
        assert_eq!(status_of(2), ProviderStatus::Succeeded);
        assert_eq!(status_of(0), ProviderStatus::Pending);
        assert_eq!(status_of(1), ProviderStatus::Pending);
        assert!(matches!(status_of(-1), ProviderStatus::Failed { .. }));
    }
}
