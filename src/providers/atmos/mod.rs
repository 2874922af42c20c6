//! ATMOS card payments with an SMS code (atmos-epay.md part A). We call ATMOS: `pay/create` when
//! the payment is created, `pre-apply` with the card (ATMOS sends the SMS), `apply` with the
//! code (this debits), `get` for the authoritative state, `reverse` for refunds. ATMOS calls
//! `POST /v1/atmos/callback`.

pub mod callback;
pub mod card;
pub mod checkout;
pub mod client;
pub mod messages;

use std::sync::Arc;

use async_trait::async_trait;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use self::client::{is_paid, is_reversed, AtmosClient};
use super::{
    Provider, ProviderContext, ProviderError, ProviderStatus, RecheckOutcome, RefundCheck,
    RefundOutcome, RefundPolicy,
};
use crate::api::client_ip::Caller;
use crate::config::AtmosSettings;
use crate::domain::{
    Actor, NewPayment, Payment, PaymentStatus, ProviderKind, Refund, RefundId, Transaction,
    TransactionUpdate, RECHECK_PACE,
};
use crate::money::Money;
use crate::oauth::{ClientCredentials, CredentialsIn, TokenCache};
use crate::state::{AppState, SystemClock};
use crate::store::{Store, StoreError};

/// Transaction states we keep for an ATMOS attempt.
pub const OTP_SENT: &str = "otp_sent";
pub const PAID: &str = "paid";
pub const FAILED: &str = "failed";
pub const REVERSED: &str = "reversed";

pub struct Atmos {
    settings: AtmosSettings,
    client: AtmosClient,
    store: Arc<dyn Store>,
}

impl Atmos {
    pub fn new(ctx: &ProviderContext) -> Self {
        let settings = ctx.settings.atmos.clone();
        let base = if settings.base_url.is_empty() && ctx.settings.is_sandbox() {
            format!("{}/sandbox/atmos", ctx.self_url)
        } else {
            settings.base_url.clone()
        };
        let tokens = TokenCache::new(
            ClientCredentials {
                url: format!("{}/token", base.trim_end_matches('/')),
                client_id: settings.consumer_key.expose_secret().to_owned(),
                client_secret: settings.consumer_secret.clone(),
                credentials_in: CredentialsIn::BasicAuth,
                extra: vec![],
                http: ctx.http.clone(),
            },
            Arc::new(SystemClock),
        );
        let client = AtmosClient {
            base,
            store_id: settings.store_id.clone(),
            tokens,
            http: ctx.http.clone(),
            timeout: std::time::Duration::from_secs(settings.timeout_secs),
            otp_as_integer: settings.otp_as_integer,
        };
        Atmos {
            settings,
            client,
            store: ctx.store.clone(),
        }
    }

    /// The ATMOS transaction id recorded at creation.
    pub fn transaction_id(payment: &Payment) -> Option<i64> {
        payment
            .provider_data
            .get("transaction_id")
            .and_then(Value::as_i64)
    }

    /// The payment's attempt row (recorded when a card was attached), if any.
    async fn stored_attempt(&self, payment: &Payment) -> Result<Option<Transaction>, StoreError> {
        let Some(id) = Self::transaction_id(payment) else {
            return Ok(None);
        };
        self.store
            .get_transaction(ProviderKind::Atmos, &id.to_string())
            .await
    }

    async fn attempt(&self, payment: &Payment) -> Result<Option<Transaction>, ProviderError> {
        self.stored_attempt(payment)
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Atmos, e.into()))
    }
}

#[async_trait]
impl Provider for Atmos {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Atmos
    }

    /// `pay/create` with a numeric account (ATMOS wants digits) from a counter.
    async fn start(&self, payment: &NewPayment) -> Result<Value, ProviderError> {
        let account = self
            .store
            .next_number("atmos.account")
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Atmos, e.into()))?
            .to_string();
        let transaction_id = self
            .client
            .create(payment.amount.minor(), &account, payment.language.as_str())
            .await?;
        Ok(
            json!({ "transaction_id": transaction_id, "account": account, "store_id": self.settings.store_id, "form": "card" }),
        )
    }

    /// Once an SMS code went to ATMOS it may have been applied with an outcome tolov never
    /// heard (a timeout): ATMOS is asked first, and a debit it confirms refuses the cancel
    /// (reconciliation records the payment paid; refund it then). Before any code nothing can
    /// have been debited, and a debit landing after the cancel is reversed (`mark_paid`).
    async fn cancel(&self, payment: &Payment) -> Result<(), ProviderError> {
        // An attempt written before this record existed counts as "maybe sent".
        let code_sent = self
            .attempt(payment)
            .await?
            .is_some_and(|t| !matches!(t.data.get(checkout::CODE_SENT), Some(Value::Bool(false))));
        if !code_sent {
            return Ok(());
        }
        match self.fetch_status(payment).await? {
            ProviderStatus::Succeeded => Err(ProviderError::Rejected {
                provider: ProviderKind::Atmos,
                code: super::ALREADY_DEBITED.into(),
                message:
                    "ATMOS debited this payment; it is recorded as paid shortly, refund it then"
                        .into(),
            }),
            // Not debited (yet), reversed, or closed by ATMOS: nothing left to take back.
            _ => Ok(()),
        }
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
        let id = Self::transaction_id(payment).ok_or_else(|| ProviderError::Rejected {
            provider: ProviderKind::Atmos,
            code: "no_transaction".into(),
            message: "the payment has no ATMOS transaction".into(),
        })?;
        self.client.reverse(id, "refund").await?;
        Ok(RefundOutcome::Succeeded {
            external_id: Some(id.to_string()),
        })
    }

    async fn fetch_status(&self, payment: &Payment) -> Result<ProviderStatus, ProviderError> {
        let Some(id) = Self::transaction_id(payment) else {
            return Ok(ProviderStatus::Pending);
        };
        if self.attempt(payment).await?.is_none() {
            // No card was ever attached: nothing can have been debited.
            return Ok(ProviderStatus::Canceled);
        }
        match self.client.get(id).await {
            Ok(t) if is_paid(&t) => Ok(ProviderStatus::Succeeded),
            Ok(t) if is_reversed(&t) => Ok(ProviderStatus::Refunded {
                amount_minor: payment.amount.minor(),
            }),
            // A10: "status_message Canceled → cancelled/expired".
            Ok(t) if t["status_message"] == "Canceled" => Ok(ProviderStatus::Canceled),
            Ok(_) => Ok(ProviderStatus::Pending),
            Err(ProviderError::Rejected { code, .. }) if code.ends_with("ERR-092") => {
                Ok(ProviderStatus::Canceled)
            }
            Err(e) => Err(e),
        }
    }

    /// Past the deadline the checkout routes refuse every call, so an attempt ATMOS has not
    /// confirmed can still be debited only by a code check already under way (marked until its
    /// call's limit). Without one the payer abandoned it after the SMS: over, and the payment
    /// expires (a debit that lands anyway is recorded by the callback or reconciliation).
    async fn status_past_deadline(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<ProviderStatus, ProviderError> {
        let status = self.fetch_status(payment).await?;
        if status != ProviderStatus::Pending {
            return Ok(status);
        }
        let checking = self
            .attempt(payment)
            .await?
            .is_some_and(|t| checkout::code_check_under_way(&t, now));
        Ok(if checking {
            ProviderStatus::Pending
        } else {
            ProviderStatus::Canceled
        })
    }

    /// A reverse ATMOS did not answer: `merchant/pay/get` shows status_code -20 once the
    /// debit is reversed, and a confirmed debit without it is not reversed.
    async fn refund_status(
        &self,
        payment: &Payment,
        _refund: &Refund,
        _others: &[Refund],
    ) -> Result<RefundCheck, ProviderError> {
        let Some(id) = Self::transaction_id(payment) else {
            return Ok(RefundCheck::Unknown);
        };
        let t = self.client.get(id).await?;
        Ok(if is_reversed(&t) {
            RefundCheck::Refunded {
                external_id: Some(id.to_string()),
            }
        } else if is_paid(&t) {
            RefundCheck::NotRefunded
        } else {
            RefundCheck::Unknown
        })
    }

    /// An SMS code was sent: a code check under way when the payment closed (the merchant
    /// canceled it, it expired) can still debit the card, and its answer (or ATMOS's callback)
    /// can be lost. ATMOS is asked once such a check has surely ended (the pace is beyond one
    /// call's `atmos.timeout_secs`, which is below the request timeout).
    async fn recheck_after_close(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let open_attempt = self.stored_attempt(payment).await?.is_some_and(|t| {
            t.state == OTP_SENT
                && !matches!(t.data.get(checkout::CODE_SENT), Some(Value::Bool(false)))
        });
        Ok(open_attempt.then(|| now + RECHECK_PACE))
    }

    /// A debit ATMOS reports for the closed payment is reversed (or, for an expired payment,
    /// recorded), as for a late callback; a failed reversal is tried again.
    async fn recheck_closed(&self, state: &AppState, payment: &Payment) -> RecheckOutcome {
        let again = RecheckOutcome::Again(state.now() + RECHECK_PACE);
        let tx = match self.stored_attempt(payment).await {
            Ok(Some(tx)) if tx.state != REVERSED => tx,
            Ok(_) => return RecheckOutcome::Done,
            Err(_) => return again,
        };
        let status = self.fetch_status(payment).await;
        let debit_to_settle = match &status {
            Ok(ProviderStatus::Succeeded) => true,
            // Reversed at ATMOS by a reverse of tolov's whose answer was lost, not yet recorded:
            // the same path records it (its reverse is refused, and `pay/get` shows it done).
            Ok(ProviderStatus::Refunded { .. }) => matches!(
                payment.status,
                PaymentStatus::Canceled | PaymentStatus::Failed
            ),
            _ => false,
        };
        match status {
            _ if debit_to_settle => match checkout::mark_paid(
                state,
                self,
                &payment.id,
                &tx.external_id,
                Actor::Reconciliation,
                "atmos debited the payment after it closed",
            )
            .await
            {
                Ok(checkout::Settled::Paid | checkout::Settled::Reversed) => RecheckOutcome::Done,
                Ok(checkout::Settled::NeedsReversal | checkout::Settled::BeingReversed)
                | Err(_) => again,
            },
            // Not debited, and no code check can still be running this long after the close.
            Ok(_) => RecheckOutcome::Done,
            Err(e) => {
                tracing::warn!(payment_id = %payment.id, error = %e, "atmos recheck: pay/get failed; asking again later");
                again
            }
        }
    }

    /// An attempt still waiting for its SMS code ends with the payment: paid when ATMOS
    /// confirmed the debit, failed otherwise. Settled attempts are left as they are.
    async fn attempt_settlement(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        let Some(tx) = self.stored_attempt(payment).await? else {
            return Ok(None);
        };
        if tx.state != OTP_SENT {
            return Ok(None);
        }
        let state = match to {
            PaymentStatus::Succeeded => PAID,
            PaymentStatus::Pending
            | PaymentStatus::Expired
            | PaymentStatus::Failed
            | PaymentStatus::Canceled => FAILED,
            _ => return Ok(None),
        };
        Ok(Some(checkout::update(&tx, state, tx.data.clone(), now)))
    }

    /// A merchant cancel ends an attempt awaiting its SMS code, in the cancel's own change and
    /// guarded on the attempt's version: a code the payer sends afterwards finds no attempt to
    /// check, and one reserved meanwhile makes the cancel read the attempt again, see that the
    /// code may be at ATMOS, and schedule the recheck ([`Provider::recheck_after_close`]).
    async fn attempt_settlement_on_merchant_cancel(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        self.attempt_settlement(payment, PaymentStatus::Canceled, now)
            .await
    }

    fn routes(self: Arc<Self>) -> Router<AppState> {
        let (a, b, c, d) = (self.clone(), self.clone(), self.clone(), self);
        Router::new()
            .route(
                "/v1/atmos/callback",
                post(move |s, Caller(caller): Caller, body| {
                    callback::handle(s, a.clone(), caller, body)
                }),
            )
            .route(
                "/v1/checkout/{id}/atmos/pre-apply",
                post(move |s, p, h, body| checkout::pre_apply(s, b.clone(), p, h, body))
                    .options(crate::checkout::preflight)
                    .layer(crate::checkout::cors()),
            )
            .route(
                "/v1/checkout/{id}/atmos/confirm",
                post(move |s, p, h, body| checkout::confirm(s, c.clone(), p, h, body))
                    .options(crate::checkout::preflight)
                    .layer(crate::checkout::cors()),
            )
            .route(
                "/v1/checkout/{id}/atmos/resend-otp",
                post(move |s, p, h| checkout::resend(s, d.clone(), p, h))
                    .options(crate::checkout::preflight)
                    .layer(crate::checkout::cors()),
            )
    }
}
