//! The seam between the gateway and the payment providers. The merchant API only talks to
//! [`Provider`]; each provider module translates to its own wire protocol and mounts its own
//! callback routes, so a provider plugs in here without touching `api/`.

pub mod atmos;
pub mod click;
pub mod epay;
pub mod payme;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use tracing::Instrument;

use crate::config::Settings;
use chrono::{DateTime, Utc};

use crate::domain::{
    NewPayment, Payment, PaymentStatus, ProviderKind, Refund, RefundId, TransactionUpdate,
};
use crate::money::Money;
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0} does not support {1}")]
    Unsupported(ProviderKind, &'static str),
    /// The payment cannot be expressed in this provider's protocol (e.g. a character the
    /// provider's link format cannot carry).
    #[error("{field}: {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    /// The provider answered and said no (a business error with its own code).
    #[error("{provider} refused: {code}: {message}")]
    Rejected {
        provider: ProviderKind,
        code: String,
        message: String,
    },
    /// We could not reach the provider or it failed (timeout, 5xx).
    #[error("{0} is unavailable")]
    Unavailable(ProviderKind, #[source] anyhow::Error),
    /// The provider answered something we cannot interpret.
    #[error("{0} sent a malformed answer: {1}")]
    Malformed(ProviderKind, String),
    /// The operation was never asked of the provider: what it needs first (a token, the
    /// transaction to act on) could not be had. Unlike `Unavailable`, it certainly did not
    /// happen, so nothing waits on it (a refund fails and frees its amount).
    #[error("{0} was not asked: {1}")]
    NotSent(ProviderKind, #[source] anyhow::Error),
}

/// The `Rejected` codes of a cancel refused because the provider already took the money
/// (ePay and Click: charged; ATMOS: debited).
pub const ALREADY_CHARGED: &str = "already_charged";
pub const ALREADY_DEBITED: &str = "already_debited";

impl ProviderError {
    /// The provider refused because the money already moved: what the payment is at the
    /// provider is worth asking again and recording now.
    pub fn money_moved(&self) -> bool {
        matches!(self, ProviderError::Rejected { code, .. }
            if code == ALREADY_CHARGED || code == ALREADY_DEBITED)
    }

    /// This error, met before the operation itself was sent: whatever went wrong, the
    /// operation did not happen. A refusal stays a refusal.
    pub fn before_sending(self) -> Self {
        match self {
            ProviderError::Unavailable(p, e) => ProviderError::NotSent(p, e),
            ProviderError::Malformed(p, what) => ProviderError::NotSent(p, anyhow::anyhow!(what)),
            other => other,
        }
    }
}

/// A token that could not be had (credentials refused, endpoint down): the provider cannot be
/// used right now, whatever the request was.
pub fn oauth_error(provider: ProviderKind, e: crate::oauth::OAuthError) -> ProviderError {
    ProviderError::NotSent(provider, e.into())
}

/// The provider's authoritative view of a payment (for reconciliation and callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Pending,
    /// Funds blocked (two-step): the merchant captures or voids them.
    Authorized,
    Succeeded,
    Failed {
        reason: String,
    },
    Canceled,
    /// The merchant released the funds blocked for the payment at the provider (a void whose
    /// answer tolov did not get, or one made in the provider's cabinet): the payment is
    /// canceled, not payable again.
    Voided,
    Refunded {
        amount_minor: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundPolicy {
    /// Not through tolov: the text tells the merchant where a refund is made instead.
    Elsewhere(&'static str),
    /// Only the whole (remaining) amount at once, e.g. Click's payment reversal.
    FullOnly,
    Partial,
}

/// What a provider says became of a refund it did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCheck {
    /// The money went back.
    Refunded { external_id: Option<String> },
    /// Nothing was refunded: the refund can be marked failed and its amount freed.
    NotRefunded,
    /// The provider's answer does not tell (yet).
    Unknown,
}

/// What asking a provider again about a closed payment ([`Provider::recheck_closed`]) left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecheckOutcome {
    /// Nothing (more) can move at the provider for this payment, or what did is settled.
    Done,
    /// Ask again at this time (the provider did not answer, money is still to go back, or the
    /// payer may still pay).
    Again(DateTime<Utc>),
}

/// What a provider reports after a refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded { external_id: Option<String> },
    Pending { external_id: Option<String> },
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// Prepares a new payment before it is stored: returns the `provider_data` the payer's
    /// frontend needs (checkout URL, widget parameters, provider transaction id). Failing here
    /// stores nothing.
    async fn start(&self, payment: &NewPayment) -> Result<serde_json::Value, ProviderError>;

    /// Called before the merchant's cancel of an open payment is recorded.
    async fn cancel(&self, _payment: &Payment) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Captures an authorized (two-step) payment in full.
    async fn capture(&self, _payment: &Payment) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(self.kind(), "capture"))
    }

    /// The smallest refund the provider accepts, in minor units.
    fn min_refund_minor(&self) -> i64 {
        1
    }

    /// Which refunds [`Provider::refund`] can do; checked before a refund is reserved.
    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy::Elsewhere("refunds through this provider are not supported")
    }

    async fn refund(
        &self,
        _payment: &Payment,
        _amount: Money,
        _refund_id: &RefundId,
    ) -> Result<RefundOutcome, ProviderError> {
        Err(ProviderError::Unsupported(self.kind(), "refunds"))
    }

    /// [`Self::fetch_status`] for an open payment past its deadline at `now` (expiry): the
    /// payer's checkout routes are closed by then, so a provider whose attempts only the payer
    /// can complete may call an unfinished one over.
    async fn status_past_deadline(
        &self,
        payment: &Payment,
        _now: DateTime<Utc>,
    ) -> Result<ProviderStatus, ProviderError> {
        self.fetch_status(payment).await
    }

    async fn fetch_status(&self, _payment: &Payment) -> Result<ProviderStatus, ProviderError> {
        Err(ProviderError::Unsupported(self.kind(), "status checks"))
    }

    /// What became of `refund`, which the provider did not answer (reconciliation); `others`
    /// are the payment's other refunds. Only a definite answer settles it.
    async fn refund_status(
        &self,
        _payment: &Payment,
        _refund: &Refund,
        _others: &[Refund],
    ) -> Result<RefundCheck, ProviderError> {
        Ok(RefundCheck::Unknown)
    }

    /// What the payer's browser gets as `provider_data` at `now`, when the stored one would no
    /// longer do (ePay: a widget token grown old); `None` keeps it. The caller stores it.
    async fn refresh_payer_data(
        &self,
        _payment: &Payment,
        _now: DateTime<Utc>,
    ) -> Result<Option<serde_json::Value>, ProviderError> {
        Ok(None)
    }

    /// When `payment` closes (canceled, expired, failed) at `now`: whether the provider may
    /// still move money for it without tolov hearing of it, and when to ask it again (see
    /// [`crate::domain::Recheck`]); the recheck is scheduled in the closing change.
    async fn recheck_after_close(
        &self,
        _payment: &Payment,
        _now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(None)
    }

    /// Asks the provider again about a closed payment whose recheck is due, and settles what
    /// it finds (money that landed is recorded, or returned).
    async fn recheck_closed(&self, _state: &AppState, _payment: &Payment) -> RecheckOutcome {
        RecheckOutcome::Done
    }

    /// When reconciliation or expiry moves `payment` to `to` on the provider's word, the change
    /// to the provider's own attempt row that goes with it (same transaction), if any.
    async fn attempt_settlement(
        &self,
        _payment: &Payment,
        _to: PaymentStatus,
        _now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        Ok(None)
    }

    /// The change to the provider's attempt row that goes with the merchant's cancel (same
    /// transaction), if any; a capture never changes it. Most providers end attempts on their
    /// own word only; Payme ends a transaction whose 12 hours ran out, ATMOS one awaiting a code.
    async fn attempt_settlement_on_merchant_cancel(
        &self,
        _payment: &Payment,
        _now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        Ok(None)
    }

    /// Provider-facing routes (callbacks), merged into the app router.
    fn routes(self: Arc<Self>) -> Router<AppState> {
        Router::new()
    }
}

/// Runs a provider callback's work in its own task and answers with its result, unless that
/// takes past 90 % of `server.request_timeout_secs` from the request's arrival (when the
/// server-wide timeout would answer
/// `503` problem+json, which no provider reads) or panics: then `late`, in the provider's own
/// protocol, is the answer, and the work goes on to finish. Each change it makes is one
/// compare-and-set, so finishing late records what the provider did; a provider retry gets the
/// idempotent answer.
pub async fn answer_in_time<T: Send + 'static>(
    state: &AppState,
    what: &'static str,
    work: impl Future<Output = T> + Send + 'static,
    late: T,
) -> T {
    // From the request's arrival, as the server-wide timeout counts: reading the body and the
    // checks before the work come off the time it has.
    let deadline = tokio::time::Instant::from_std(crate::telemetry::arrived())
        + Duration::from_secs(state.settings.server.request_timeout_secs) * 9 / 10;
    let task = tokio::spawn(work.instrument(tracing::Span::current()));
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failed)) => {
            tracing::error!(what, error = %failed, "callback work failed; answered as a temporary failure");
            late
        }
        Err(_) => {
            tracing::error!(
                what,
                "callback work outlasted the request; answered now, it finishes in the background"
            );
            late
        }
    }
}

/// What a provider may need when it is built.
pub struct ProviderContext {
    pub settings: Arc<Settings>,
    pub http: reqwest::Client,
    pub store: Arc<dyn crate::store::Store>,
    /// Where this process is reachable (sandbox simulators are mounted here).
    pub self_url: String,
    /// The application's clock (a manual one in tests), for deadlines providers keep.
    pub clock: Arc<dyn crate::state::Clock>,
    /// The key Payme's calls are checked against, shared with the sandbox payer.
    pub payme_key: Arc<payme::key::PaymeKey>,
}

/// The enabled providers, built once from the settings.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: HashMap<ProviderKind, Arc<dyn Provider>>,
}

impl ProviderRegistry {
    pub fn from_context(ctx: &ProviderContext) -> Self {
        let settings = &ctx.settings;
        let mut reg = ProviderRegistry::default();
        if settings.payme.enabled {
            reg.register(Arc::new(payme::Payme::new(ctx)));
        }
        if settings.click.enabled {
            reg.register(Arc::new(click::Click::new(ctx)));
        }
        if settings.atmos.enabled {
            reg.register(Arc::new(atmos::Atmos::new(ctx)));
        }
        if settings.epay.enabled {
            reg.register(Arc::new(epay::Epay::new(ctx)));
        }
        reg
    }

    pub fn register(&mut self, provider: Arc<dyn Provider>) {
        self.providers.insert(provider.kind(), provider);
    }

    pub fn get(&self, kind: ProviderKind) -> Option<Arc<dyn Provider>> {
        self.providers.get(&kind).cloned()
    }

    pub fn routes(&self) -> Router<AppState> {
        self.providers
            .values()
            .fold(Router::new(), |r, p| r.merge(p.clone().routes()))
    }
}
