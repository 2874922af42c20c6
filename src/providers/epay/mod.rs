//! Halyk ePay (atmos-epay.md part B): a payment-scoped OAuth token per payment, handed with the
//! widget parameters to the payer's page (`halyk.pay`); ePay calls the postLink; check-status
//! decides; refunds (partial, ≥ 10 KZT) through the operations API.

pub mod client;
pub mod postlink;

use std::sync::Arc;

use async_trait::async_trait;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::Sha256;

use self::client::{interpret, EpayClient, EpayState, InvoiceToken};
use super::{
    Provider, ProviderContext, ProviderError, ProviderStatus, RecheckOutcome, RefundCheck,
    RefundOutcome, RefundPolicy,
};
use crate::config::Settings;
use crate::domain::{
    NewPayment, Payment, PaymentId, PaymentStatus, ProviderKind, Refund, RefundId, RefundStatus,
    RECHECK_PACE,
};
use crate::money::Money;
use crate::oauth::{ClientCredentials, CredentialsIn, TokenCache};
use crate::state::{AppState, SystemClock};
use crate::store::{Store, StoreError};

/// How old the widget's payment token may be when the payer's browser asks for it; reports
/// put its real lifetime near 20 minutes (B2), the docs at two hours.
const TOKEN_FRESH_FOR: chrono::Duration = chrono::Duration::minutes(10);
/// `provider_data` key: when the widget's token was replaced (epoch ms); absent, the token is
/// the one of the payment's creation.
const TOKEN_AT: &str = "widget_token_at";

/// ePay's documented smallest refund, 10 KZT (B3), in tiyn.
pub const MIN_REFUND_MINOR: i64 = 1_000;

pub struct Epay {
    settings: Arc<Settings>,
    client: EpayClient,
    store: Arc<dyn Store>,
}

/// ePay's language codes.
fn language(l: crate::domain::Language) -> &'static str {
    match l {
        crate::domain::Language::En => "eng",
        crate::domain::Language::Ru | crate::domain::Language::Uz => "rus",
    }
}

impl Epay {
    pub fn new(ctx: &ProviderContext) -> Self {
        let e = &ctx.settings.epay;
        let sandbox = ctx.settings.is_sandbox();
        let or_sim = |url: &str, sim: &str| {
            if url.is_empty() && sandbox {
                format!("{}{sim}", ctx.self_url)
            } else {
                url.to_owned()
            }
        };
        let oauth_url = or_sim(&e.oauth_url, "/sandbox/epay/oauth2/token");
        let api_url = or_sim(&e.api_url, "/sandbox/epay/api");
        let tokens = TokenCache::new(
            ClientCredentials {
                url: oauth_url.clone(),
                client_id: e.client_id.clone(),
                client_secret: e.client_secret.clone(),
                credentials_in: CredentialsIn::FormBody,
                extra: vec![
                    ("scope".into(), e.scope.clone()),
                    ("terminal".into(), e.terminal_id.clone()),
                ],
                http: ctx.http.clone(),
            },
            Arc::new(SystemClock),
        );
        let client = EpayClient {
            oauth_url,
            api_url,
            client_id: e.client_id.clone(),
            client_secret: e.client_secret.clone(),
            terminal: e.terminal_id.clone(),
            payment_scope: e.payment_scope.clone(),
            tokens,
            http: ctx.http.clone(),
        };
        Epay {
            settings: ctx.settings.clone(),
            client,
            store: ctx.store.clone(),
        }
    }

    /// The per-payment `secret_hash` ePay echoes on postLink: an HMAC of the payment id under
    /// `api.client_secret_key`, so it is unique per payment and nothing needs storing.
    pub fn secret_hash(settings: &Settings, id: &PaymentId) -> String {
        let key = settings.api.client_secret_key.expose_secret().as_bytes();
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
        mac.update(b"epay.secret_hash:");
        mac.update(id.as_str().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    pub fn invoice_id(payment: &Payment) -> Option<&str> {
        payment
            .provider_data
            .get("invoice_id")
            .and_then(Value::as_str)
    }

    /// The payment token for the payer's widget (B2): one invoice, its amount in tenge, its
    /// postLinks and `secret_hash`.
    async fn payer_token(
        &self,
        id: &PaymentId,
        invoice: &str,
        amount: &str,
    ) -> Result<Value, ProviderError> {
        let secret = Self::secret_hash(&self.settings, id);
        let (post_link, failure_post_link) = self.post_links(id);
        self.client
            .payment_token(&InvoiceToken {
                invoice_id: invoice,
                amount,
                post_link: &post_link,
                failure_post_link: &failure_post_link,
                secret_hash: &secret,
            })
            .await
    }

    fn post_links(&self, id: &PaymentId) -> (String, String) {
        let base = self.settings.server.public_url.trim_end_matches('/');
        (
            format!("{base}/v1/epay/callback?payment_id={id}"),
            format!("{base}/v1/epay/callback?payment_id={id}&outcome=failure"),
        )
    }

    async fn state_of(&self, payment: &Payment) -> Result<EpayState, ProviderError> {
        let invoice = Self::invoice_id(payment).ok_or_else(|| {
            ProviderError::Malformed(ProviderKind::Epay, "payment without invoice_id".into())
        })?;
        let body = self.client.check_status(invoice).await?;
        let found = interpret(&body)?;
        if matches!(found, EpayState::Paid { .. } | EpayState::Authorized { .. }) {
            same_money(&body["transaction"], payment)?;
        }
        Ok(found)
    }
}

/// B5 check 3 for check-status: money ePay reports for the invoice is this payment's only in
/// its amount and currency, for its account (tolov sends the order id as `accountId`) and
/// not from before the payment existed (`createdDate`, a day's margin for ePay's clock and
/// time zone). Anything else is an invoice id ePay knows from elsewhere (an earlier database
/// on the same terminal), never a payment of this one. A field the answer lacks (or a date in
/// another format) is taken as it is.
fn same_money(transaction: &Value, payment: &Payment) -> Result<(), ProviderError> {
    let account = transaction["accountID"]
        .as_str()
        .or(transaction["accountId"].as_str())
        .filter(|a| !a.is_empty());
    if let Some(account) = account.filter(|a| *a != payment.order_id) {
        return Err(not_this_payment(
            payment,
            format!("check-status names account {account:?}"),
        ));
    }
    let created = transaction["createdDate"]
        .as_str()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok());
    if let Some(created) = created.filter(|c| *c < payment.created_at - chrono::Duration::days(1)) {
        return Err(not_this_payment(
            payment,
            format!("check-status dates the transaction {created}"),
        ));
    }
    let amount = match &transaction["amount"] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    let amount_ok = amount.as_deref().is_none_or(|a| {
        Money::parse_major(a, payment.amount.currency()).ok() == Some(payment.amount)
    });
    let currency_ok = transaction["currency"]
        .as_str()
        .is_none_or(|c| c == payment.amount.currency().to_string());
    if amount_ok && currency_ok {
        return Ok(());
    }
    Err(not_this_payment(
        payment,
        format!(
            "check-status reports {} {} (the payment is {})",
            amount.unwrap_or_default(),
            transaction["currency"].as_str().unwrap_or(""),
            payment.amount.to_major_string(),
        ),
    ))
}

/// B3: ePay's `description` holds at most 125 bytes; a longer one is cut at a character
/// boundary (the payment keeps the whole text).
fn widget_description(text: &str) -> &str {
    const MAX_BYTES: usize = 125;
    if text.len() <= MAX_BYTES {
        return text;
    }
    let mut end = MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn not_this_payment(payment: &Payment, what: String) -> ProviderError {
    ProviderError::Malformed(
        ProviderKind::Epay,
        format!(
            "{what} for invoice {}, not payment {}: an invoice id ePay knows from elsewhere?",
            Epay::invoice_id(payment).unwrap_or(""),
            payment.id
        ),
    )
}

/// How long a payer may still be paying in the widget after the deadline: the payment token's
/// lifetime.
const PAYER_GRACE: chrono::Duration = chrono::Duration::hours(2);
/// When a closed payment's payer can no longer pay (its token is dead), with a margin for a
/// late postLink (B5: 1–3 minutes).
fn payer_deadline(payment: &Payment) -> DateTime<Utc> {
    payment.expires_at + PAYER_GRACE + RECHECK_PACE
}

/// How long past the deadline a check-status that does not answer keeps a pending payment open.
const LOOKUP_GRACE: chrono::Duration = chrono::Duration::hours(24);

#[async_trait]
impl Provider for Epay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Epay
    }

    /// A payer may still pay in the widget after the payment closed, until its token runs out,
    /// and the postLink saying so can be lost (B5): ePay is asked once the token is dead.
    async fn recheck_after_close(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(Some(now.max(payer_deadline(payment))))
    }

    /// Money ePay took for the closed payment goes back (or, for an expired payment's charge,
    /// is recorded), as for a late postLink; while the payer may still pay, ask again later.
    async fn recheck_closed(&self, state: &AppState, payment: &Payment) -> RecheckOutcome {
        let again = RecheckOutcome::Again(state.now() + RECHECK_PACE);
        let found = match self.state_of(payment).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(payment_id = %payment.id, error = %e, "epay recheck: check-status failed; asking again later");
                return again;
            }
        };
        // Money ePay holds, or the return of late money tolov asked for without an answer now
        // shown done: recorded (or returned) as a postLink would.
        let to_settle = matches!(found, EpayState::Paid { .. } | EpayState::Authorized { .. })
            || postlink::return_confirmed(payment, &found).is_some();
        match found {
            _ if to_settle => {
                postlink::settle_found(state, self, payment, found).await;
                match state.store.get_payment(&payment.id).await {
                    Ok(Some(p))
                        if p.status.is_paid()
                            || p.provider_data.get(postlink::LATE_MONEY_RETURNED).is_some() =>
                    {
                        RecheckOutcome::Done
                    }
                    _ => again,
                }
            }
            _ if state.now() < payer_deadline(payment) => {
                RecheckOutcome::Again(payer_deadline(payment))
            }
            // Not final (B6: NEW, FINGERPRINT, 454 "sum may be blocked"): money may still
            // move, so asked again, for as long as expiry would wait for ePay.
            EpayState::InProgress if state.now() < payment.expires_at + LOOKUP_GRACE => again,
            EpayState::InProgress => {
                tracing::error!(payment_id = %payment.id,
                    "epay recheck: the payment is still not final at ePay a day past its deadline; check it at ePay");
                RecheckOutcome::Done
            }
            _ => RecheckOutcome::Done,
        }
    }

    /// A new invoice number (digits, from a counter, 6 or more) and the payment token bound to
    /// it; `provider_data.widget` is the object for `halyk.pay(...)`.
    async fn start(&self, p: &NewPayment) -> Result<Value, ProviderError> {
        // A fresh database starts at a random 6-digit number, not at 000001: invoice ids must be
        // unique at ePay (also in their last 6 digits, B3), and ePay still knows the invoices of
        // an earlier database on the same terminal (or of everyone on the shared test terminal).
        let first = rand::thread_rng().gen_range(100_000..900_000);
        let n = self
            .store
            .next_number_from("epay.invoice", first)
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Epay, e.into()))?;
        let invoice = format!("{n:06}");
        let amount = p.amount.to_major_string();
        let (post_link, failure_post_link) = self.post_links(&p.id);
        let token = self.payer_token(&p.id, &invoice, &amount).await?;
        let back = p.return_url.clone().unwrap_or_else(|| {
            format!(
                "{}/pay/{}",
                self.settings.server.public_url.trim_end_matches('/'),
                p.id
            )
        });
        Ok(json!({
            "invoice_id": invoice,
            "widget_js": self.settings.epay.widget_url,
            "widget": {
                "invoiceId": invoice,
                "backLink": back,
                "failureBackLink": back,
                "postLink": post_link,
                "failurePostLink": failure_post_link,
                "language": language(p.language),
                "description": widget_description(p.description.as_deref().unwrap_or_default()),
                "accountId": p.order_id,
                "terminal": self.settings.epay.terminal_id,
                // A decimal string, never a float: the widget form-encodes every value anyway.
                "amount": amount,
                "currency": "KZT",
                "auth": token,
            }
        }))
    }

    /// Past the deadline a payer still in the widget (NEW, 3-D Secure) is waited for while the
    /// payment token may still be used (two hours), and an ePay that cannot answer for a day;
    /// then the payment expires. A charge or block that lands later is still recorded or
    /// returned by its postLink.
    async fn status_past_deadline(
        &self,
        payment: &Payment,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<ProviderStatus, ProviderError> {
        let overdue = now - payment.expires_at;
        match self.fetch_status(payment).await {
            Ok(ProviderStatus::Pending) if overdue >= PAYER_GRACE => Ok(ProviderStatus::Canceled),
            Err(e) if overdue >= LOOKUP_GRACE => {
                tracing::warn!(payment_id = %payment.id, error = %e,
                    "epay: check-status has not answered for a day past the deadline; expiring the payment");
                Ok(ProviderStatus::Canceled)
            }
            other => other,
        }
    }

    /// A widget token older than [`TOKEN_FRESH_FOR`] is replaced (B2: ePay's payment tokens
    /// are short-lived) by a fresh one for the same invoice, amount and postLinks, while the
    /// payment is pending and before its deadline. The deadline bound also keeps
    /// [`PAYER_GRACE`] true: no token outlives the deadline by more than its two hours.
    async fn refresh_payer_data(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<Value>, ProviderError> {
        if payment.status != PaymentStatus::Pending || now >= payment.expires_at {
            return Ok(None);
        }
        let obtained = payment.provider_data[TOKEN_AT]
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(payment.created_at);
        let Some(invoice) = payment.provider_data["invoice_id"].as_str() else {
            return Ok(None);
        };
        if now - obtained < TOKEN_FRESH_FOR || payment.provider_data["widget"].is_null() {
            return Ok(None);
        }
        let amount = payment.amount.to_major_string();
        let token = self.payer_token(&payment.id, invoice, &amount).await?;
        let mut data = payment.provider_data.clone();
        data["widget"]["auth"] = token;
        data[TOKEN_AT] = json!(now.timestamp_millis());
        Ok(Some(data))
    }

    /// A merchant cancel of an authorized payment voids the block at ePay; of an unpaid one
    /// needs nothing; of a captured one is refused (refund it instead).
    async fn cancel(&self, payment: &Payment) -> Result<(), ProviderError> {
        match self.state_of(payment).await? {
            EpayState::Authorized { transaction_id } => {
                self.client.operation(&transaction_id, "cancel").await
            }
            EpayState::Paid { .. } => Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: super::ALREADY_CHARGED.into(),
                message: "ePay already captured this payment; refund it instead".into(),
            }),
            EpayState::InProgress
            | EpayState::Declined { .. }
            | EpayState::Voided
            | EpayState::NotFound
            | EpayState::Refunded { .. } => Ok(()),
        }
    }

    async fn capture(&self, payment: &Payment) -> Result<(), ProviderError> {
        match self.state_of(payment).await? {
            EpayState::Authorized { transaction_id } => {
                self.client.operation(&transaction_id, "charge").await
            }
            EpayState::Paid { .. } => Ok(()),
            other => Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: "not_authorized".into(),
                message: format!("nothing to capture: ePay reports {other:?}"),
            }),
        }
    }

    fn min_refund_minor(&self) -> i64 {
        MIN_REFUND_MINOR
    }

    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy::Partial
    }

    async fn refund(
        &self,
        payment: &Payment,
        amount: Money,
        refund_id: &RefundId,
    ) -> Result<RefundOutcome, ProviderError> {
        // After a partial refund ePay reports REFUND; whether more may be refunded is ePay's
        // call (tolov already checked its own ledger), so the request goes to ePay.
        let txn = match self
            .state_of(payment)
            .await
            .map_err(ProviderError::before_sending)?
        {
            EpayState::Paid { transaction_id, .. } | EpayState::Refunded { transaction_id }
                if !transaction_id.is_empty() =>
            {
                transaction_id
            }
            other => {
                return Err(ProviderError::Rejected {
                    provider: ProviderKind::Epay,
                    code: "not_charged".into(),
                    message: format!("ePay reports {other:?}"),
                })
            }
        };
        self.client
            .refund(&txn, &amount.to_major_string(), refund_id.as_str())
            .await?;
        Ok(RefundOutcome::Succeeded {
            external_id: Some(txn),
        })
    }

    async fn fetch_status(&self, payment: &Payment) -> Result<ProviderStatus, ProviderError> {
        Ok(match self.state_of(payment).await? {
            EpayState::Paid { .. } => ProviderStatus::Succeeded,
            EpayState::Authorized { .. } => ProviderStatus::Authorized,
            EpayState::InProgress => ProviderStatus::Pending,
            EpayState::Declined { reason } => ProviderStatus::Failed { reason },
            EpayState::Voided => ProviderStatus::Voided,
            EpayState::Refunded { .. } => ProviderStatus::Refunded {
                amount_minor: payment.amount.minor(),
            },
            EpayState::NotFound => ProviderStatus::Canceled,
        })
    }

    /// A refund ePay did not answer. check-status says REFUND for a full or a partial refund
    /// alike (B6), so it decides only while this is the payment's one refund: REFUND means it
    /// happened, CHARGE that it did not.
    async fn refund_status(
        &self,
        payment: &Payment,
        _refund: &Refund,
        others: &[Refund],
    ) -> Result<RefundCheck, ProviderError> {
        if others.iter().any(|r| r.status != RefundStatus::Failed) {
            return Ok(RefundCheck::Unknown);
        }
        Ok(match self.state_of(payment).await? {
            EpayState::Refunded { transaction_id } => RefundCheck::Refunded {
                external_id: Some(transaction_id),
            },
            EpayState::Paid { .. } => RefundCheck::NotRefunded,
            _ => RefundCheck::Unknown,
        })
    }

    fn routes(self: Arc<Self>) -> Router<AppState> {
        Router::new().route(
            "/v1/epay/callback",
            post(move |s, q, body| postlink::handle(s, self.clone(), q, body)),
        )
    }
}
