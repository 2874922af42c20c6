//! Reconciliation: payments stuck in `processing` are checked against the provider's
//! authoritative status and moved accordingly, with an event saying reconciliation did it.

use chrono::{DateTime, Utc};

use crate::domain::{Actor, PaymentStatus};
use crate::lifecycle::{settle_with_provider, LifecycleError};
use crate::providers::{ProviderError, ProviderStatus};
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    pub succeeded: usize,
    pub reopened: usize,
    pub unchanged: usize,
    pub unavailable: usize,
}

/// One pass over payments in `processing` whose last change is before `stuck_since`.
pub async fn reconcile_once(
    state: &AppState,
    stuck_since: DateTime<Utc>,
) -> Result<ReconcileReport, StoreError> {
    let mut report = ReconcileReport::default();
    for p in state.store.list_stale_processing(stuck_since, 100).await? {
        report.checked += 1;
        let Some(provider) = state.providers.get(p.provider) else {
            report.unavailable += 1;
            continue;
        };
        let target = match provider.fetch_status(&p).await {
            Ok(ProviderStatus::Succeeded) => PaymentStatus::Succeeded,
            // The attempt ended without money: the payment is payable again (or expires).
            Ok(ProviderStatus::Failed { .. } | ProviderStatus::Canceled) => PaymentStatus::Pending,
            Ok(ProviderStatus::Pending | ProviderStatus::Refunded { .. })
            | Err(ProviderError::Unsupported(..)) => {
                report.unchanged += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(payment_id = %p.id, error = %e, "reconciliation: provider unavailable");
                report.unavailable += 1;
                continue;
            }
        };
        let why = format!("reconciled with {}", p.provider);
        match settle_with_provider(
            state.store.as_ref(),
            Some(provider.as_ref()),
            &p.id,
            target,
            Actor::Reconciliation,
            Some(why),
            state.now(),
        )
        .await
        {
            Ok(_) if target == PaymentStatus::Succeeded => report.succeeded += 1,
            Ok(_) => report.reopened += 1,
            Err(LifecycleError::Transition(_) | LifecycleError::NotFound) => report.unchanged += 1,
            Err(LifecycleError::Store(e)) => return Err(e),
        }
    }
    Ok(report)
}
