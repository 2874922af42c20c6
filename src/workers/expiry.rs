//! Expiry: open payments past `expires_at` become `expired` — unless the provider may still
//! complete them. A live Payme transaction (state 1, younger than Payme's 12 hours) is left to
//! Payme's own timeout; other providers are asked for their status first, also about a
//! `pending` payment where the payer pays on the provider's page (ePay).

use crate::domain::{Actor, Payment, PaymentStatus, ProviderKind};
use crate::lifecycle::{settle_with_provider, LifecycleError};
use crate::providers::payme::rpc::holds_order;
use crate::providers::ProviderStatus;
use crate::state::AppState;
use crate::store::StoreError;

use super::{Pages, PAGE};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    pub expired: usize,
    /// Payments whose provider reports the block released by the merchant (a void whose
    /// answer was lost): canceled, as reconciliation would.
    pub canceled: usize,
    pub kept: usize,
    pub succeeded: usize,
    /// Payments whose change the database refused this pass (logged; the next pass tries
    /// again), so one cannot hold up the rest.
    pub failed: usize,
}

enum Decision {
    Expire,
    Cancel,
    Keep,
    /// Kept, and recorded as authorized: the merchant captures or voids it.
    Authorized,
    Succeeded(String),
}

async fn decide(state: &AppState, p: &Payment) -> Result<Decision, StoreError> {
    if p.status == PaymentStatus::Pending && !p.provider.pending_may_be_paid() {
        return Ok(Decision::Expire);
    }
    let now_ms = state.now().timestamp_millis();
    if p.provider == ProviderKind::Payme {
        let txs = state.store.list_transactions(&p.id).await?;
        let live = txs.iter().any(|t| holds_order(t, now_ms));
        return Ok(if live {
            Decision::Keep
        } else {
            Decision::Expire
        });
    }
    // A provider switched off cannot be asked, and money may still move at it (a payer in
    // ePay's widget, an ATMOS code sent): kept until it is on again or the merchant cancels, as
    // reconciliation keeps it.
    let Some(provider) = state.providers.get(p.provider) else {
        tracing::warn!(payment_id = %p.id, provider = %p.provider, "expiry: provider is not enabled; keeping the payment");
        return Ok(Decision::Keep);
    };
    Ok(match provider.status_past_deadline(p, state.now()).await {
        Ok(ProviderStatus::Succeeded) => {
            Decision::Succeeded(format!("{} reports the payment succeeded", p.provider))
        }
        Ok(ProviderStatus::Pending) => Decision::Keep,
        Ok(ProviderStatus::Authorized) if p.status == PaymentStatus::Pending => {
            Decision::Authorized
        }
        Ok(ProviderStatus::Authorized) => Decision::Keep,
        Ok(
            ProviderStatus::Failed { .. }
            | ProviderStatus::Canceled
            | ProviderStatus::Refunded { .. },
        ) => Decision::Expire,
        Ok(ProviderStatus::Voided) => Decision::Cancel,
        Err(crate::providers::ProviderError::Unsupported(..)) => Decision::Expire,
        Err(e) => {
            tracing::warn!(payment_id = %p.id, error = %e, "expiry: provider status unavailable; keeping the payment");
            Decision::Keep
        }
    })
}

/// One pass over every overdue open payment, by deadline, page after page.
pub async fn expire_once(state: &AppState) -> Result<ExpiryReport, StoreError> {
    let mut report = ExpiryReport::default();
    let now = state.now();
    let mut pages = Pages::new();
    while let Some(after) = pages.cursor() {
        let page = state
            .store
            .list_expired_open_payments(now, after, PAGE)
            .await?;
        for p in pages.read(page) {
            if let Err(e) = expire_one(state, &p, &mut report).await {
                // The database is down: the rest would fail alike.
                if e.is_unavailable() {
                    return Err(e);
                }
                tracing::error!(payment_id = %p.id, error = %e, "expiry of this payment failed; the next pass tries again");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

async fn expire_one(
    state: &AppState,
    p: &Payment,
    report: &mut ExpiryReport,
) -> Result<(), StoreError> {
    let (to, actor, reason) = match decide(state, p).await? {
        Decision::Keep => {
            report.kept += 1;
            return Ok(());
        }
        // Kept open, and recorded as authorized.
        Decision::Authorized => (
            PaymentStatus::Processing,
            Actor::Reconciliation,
            format!(
                "{} reports the funds blocked; capture or cancel",
                p.provider
            ),
        ),
        Decision::Expire => (PaymentStatus::Expired, Actor::System, "expired".to_owned()),
        Decision::Cancel => (
            PaymentStatus::Canceled,
            Actor::Reconciliation,
            format!("{} reports the blocked funds released", p.provider),
        ),
        Decision::Succeeded(why) => (PaymentStatus::Succeeded, Actor::Reconciliation, why),
    };
    let provider = state.providers.get(p.provider);
    let settled = settle_with_provider(
        state.store.as_ref(),
        provider.as_deref(),
        p,
        to,
        actor,
        Some(reason),
        state.now(),
    )
    .await;
    match settled {
        Err(LifecycleError::Store(e)) => return Err(e),
        // Kept whether or not another writer moved it first.
        _ if to == PaymentStatus::Processing => report.kept += 1,
        Ok(_) if to == PaymentStatus::Expired => report.expired += 1,
        Ok(_) if to == PaymentStatus::Canceled => report.canceled += 1,
        Ok(_) => report.succeeded += 1,
        // Someone else moved it first (paid, canceled): nothing to do; or changed it after
        // this pass read it: the next pass decides again.
        Err(LifecycleError::Transition(_) | LifecycleError::NotFound | LifecycleError::Moved) => {}
    }
    Ok(())
}
