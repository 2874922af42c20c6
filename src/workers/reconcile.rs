//! Reconciliation: payments stuck in `processing` (and `pending` ones at a provider whose payer
//! pays on its own page, ePay: B5's fallback for a lost postLink) are checked against the
//! provider's authoritative status and moved accordingly, with an event saying reconciliation
//! did it; so are refunds left `pending` because the provider did not answer.

use chrono::{DateTime, Utc};

use crate::domain::{Actor, Payment, PaymentStatus, Refund, RefundId, RefundStatus};
use crate::lifecycle::{settle_with_provider, LifecycleError};
use crate::providers::{ProviderError, ProviderStatus, RefundCheck};
use crate::state::AppState;
use crate::store::StoreError;

use super::{Pages, PAGE};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    pub succeeded: usize,
    /// Pending payments the provider reports authorized (now `processing`, to capture or void).
    pub authorized: usize,
    pub reopened: usize,
    /// Payments the provider reports voided by the merchant (a void whose answer was lost, or
    /// one made at the provider): now `canceled`.
    pub canceled: usize,
    pub unchanged: usize,
    pub unavailable: usize,
    /// Refunds left pending (the provider did not answer) that the provider says happened.
    pub refunds_settled: usize,
    /// Refunds left pending that the provider says never happened: their amount is free again.
    pub refunds_failed: usize,
    /// Refunds pending for over [`REFUND_OVERDUE`] that the provider still cannot decide about
    /// (logged as errors: a person should check them at the provider).
    pub refunds_overdue: usize,
    /// Closed payments asked about again (due rechecks), and how many of them are done.
    pub rechecked: usize,
    pub rechecks_done: usize,
    /// Payments, refunds and rechecks whose change the database refused this pass (logged;
    /// the next pass tries again), so one cannot hold up the rest.
    pub failed: usize,
}

/// A recheck whose provider keeps saying "ask again" ends after this many attempts (two per
/// pass: about half a day at the claim's pace), with an error saying to look by hand.
const RECHECK_ATTEMPTS: i64 = 150;

/// One pass over every unsettled payment ([`crate::store::Store::list_stale_unsettled`]) whose
/// last change (for a pending one, its creation) is before `stuck_since`, then over every
/// refund left `pending` as long, oldest change first, page after page.
pub async fn reconcile_once(
    state: &AppState,
    stuck_since: DateTime<Utc>,
) -> Result<ReconcileReport, StoreError> {
    let mut report = ReconcileReport::default();
    let mut pages = Pages::new();
    while let Some(after) = pages.cursor() {
        let page = state
            .store
            .list_stale_unsettled(stuck_since, after, PAGE)
            .await?;
        for p in pages.read(page) {
            if let Err(e) = reconcile_one(state, &p, &mut report).await {
                // The database is down: the rest would fail alike.
                if e.is_unavailable() {
                    return Err(e);
                }
                tracing::error!(payment_id = %p.id, error = %e, "reconciliation of this payment failed; the next pass tries again");
                report.failed += 1;
            }
        }
    }
    // A refund younger than its longest provider call (token fetches and the call, well under
    // REFUND_IN_FLIGHT) may still be under way: deciding it now could fail one the provider
    // is making, whatever `stuck_since` was asked for.
    let refunds_since = stuck_since.min(state.now() - REFUND_IN_FLIGHT);
    let mut pages = Pages::new();
    while let Some(after) = pages.cursor() {
        let page = state
            .store
            .list_stale_pending_refunds(refunds_since, after, PAGE)
            .await?;
        for r in pages.read(page) {
            if let Err(e) = reconcile_refund(state, &r, &mut report).await {
                // The database is down: the rest would fail alike.
                if e.is_unavailable() {
                    return Err(e);
                }
                tracing::error!(refund_id = %r.id, payment_id = %r.payment_id, error = %e, "reconciliation of this refund failed; the next pass tries again");
                report.failed += 1;
            }
        }
    }
    recheck_closed_payments(state, &mut report).await?;
    Ok(report)
}

/// Closed payments whose provider may still move money (see [`crate::domain::Recheck`]): each
/// due one is taken (its due time moved on, so one worker asks), its provider asked and what
/// it found settled; done, it is deleted, else it is due again when the provider says.
async fn recheck_closed_payments(
    state: &AppState,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    let now = state.now();
    for due in state.store.due_rechecks(now, PAGE).await? {
        if let Err(e) = recheck_one(state, &due, now, report).await {
            // The database is down: the rest would fail alike.
            if e.is_unavailable() {
                return Err(e);
            }
            tracing::error!(payment_id = %due.payment_id, error = %e, "recheck of this payment failed; it is due again later");
            report.failed += 1;
        }
    }
    Ok(())
}

async fn recheck_one(
    state: &AppState,
    due: &crate::domain::Recheck,
    now: DateTime<Utc>,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    // Held for one pace (its due time moves there first, so another worker does not ask
    // too); then it is due again should this worker have died.
    let claim_until = now + crate::domain::RECHECK_PACE;
    let payment = state.store.get_payment(&due.payment_id).await?;
    let provider = payment
        .as_ref()
        .and_then(|p| state.providers.get(p.provider));
    // A provider switched off cannot be asked: its rechecks wait for it, one pace at a
    // time, without counting towards giving up.
    let counted = payment.is_none() || provider.is_some();
    let Some(taken) = state
        .store
        .postpone_recheck(due, claim_until, now, counted)
        .await?
    else {
        return Ok(());
    };
    let (Some(payment), Some(provider)) = (payment, provider) else {
        if counted {
            state.store.finish_recheck(&taken).await?;
        }
        return Ok(());
    };
    report.rechecked += 1;
    let outcome = provider.recheck_closed(state, &payment).await;
    match outcome {
        crate::providers::RecheckOutcome::Done => {
            state.store.finish_recheck(&taken).await?;
            report.rechecks_done += 1;
        }
        crate::providers::RecheckOutcome::Again(_) if taken.attempts >= RECHECK_ATTEMPTS => {
            tracing::error!(payment_id = %payment.id, reason = %taken.reason, attempts = taken.attempts,
                "recheck of a closed payment gave up; check the provider by hand");
            state.store.finish_recheck(&taken).await?;
        }
        crate::providers::RecheckOutcome::Again(at) => {
            // Not before the claim runs out: that is the pace of asking.
            state
                .store
                .postpone_recheck(&taken, at.max(claim_until), state.now(), true)
                .await?;
        }
    }
    Ok(())
}

/// A pending refund the provider cannot decide about is reported from this age on.
const REFUND_OVERDUE: chrono::Duration = chrono::Duration::days(1);

/// How long a refund request may still be talking to its provider.
const REFUND_IN_FLIGHT: chrono::Duration = chrono::Duration::minutes(5);

/// A refund the provider did not answer (it stays pending, holding its amount): settled when
/// the provider says for certain what became of it, left alone otherwise.
async fn reconcile_refund(
    state: &AppState,
    refund: &Refund,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    let Some(payment) = state.store.get_payment(&refund.payment_id).await? else {
        return Ok(());
    };
    let Some(provider) = state.providers.get(payment.provider) else {
        return Ok(());
    };
    let others: Vec<Refund> = state
        .store
        .list_refunds(&payment.id)
        .await?
        .into_iter()
        .filter(|r| r.id != refund.id)
        .collect();
    let outcome = match provider.refund_status(&payment, refund, &others).await {
        Ok(RefundCheck::Refunded { external_id }) => Ok(external_id),
        Ok(RefundCheck::NotRefunded) => Err(()),
        Ok(RefundCheck::Unknown) => {
            if refund.created_at < state.now() - REFUND_OVERDUE {
                report.refunds_overdue += 1;
                tracing::error!(payment_id = %payment.id, refund_id = %refund.id,
                    "refund pending for over a day and the provider cannot say whether it happened; check it at the provider");
            }
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(payment_id = %payment.id, refund_id = %refund.id, error = %e,
                "reconciliation: refund status unavailable");
            return Ok(());
        }
    };
    // The provider's answer was about the refunds there were when it was asked: a refund made
    // meanwhile could be the one it saw (ePay's REFUND does not say which), so it decides
    // nothing this pass.
    let live_others = |refunds: &[Refund]| -> Vec<(RefundId, RefundStatus)> {
        refunds
            .iter()
            .filter(|r| r.id != refund.id && r.status != RefundStatus::Failed)
            .map(|r| (r.id.clone(), r.status))
            .collect()
    };
    if live_others(&state.store.list_refunds(&payment.id).await?) != live_others(&others) {
        return Ok(());
    }
    let refunded = outcome.is_ok();
    match crate::api::refunds::settle(
        state,
        payment.id.as_str(),
        refund,
        outcome,
        Actor::Reconciliation,
    )
    .await
    {
        Ok(_) if refunded => report.refunds_settled += 1,
        Ok(_) => report.refunds_failed += 1,
        Err(e) => tracing::warn!(payment_id = %payment.id, refund_id = %refund.id, code = e.code,
            "reconciliation: could not settle the refund; next pass"),
    }
    Ok(())
}

/// Asks the provider about one payment now, out of turn, and settles what it says as
/// reconciliation would: after a provider refused a merchant cancel because the money already
/// moved, so the payment is recorded paid (and refundable) now instead of at the next pass or
/// its deadline. Best effort: a provider that does not answer leaves it to those.
pub async fn reconcile_now(state: &AppState, p: &Payment) {
    let mut report = ReconcileReport::default();
    if let Err(e) = reconcile_one(state, p, &mut report).await {
        tracing::warn!(payment_id = %p.id, error = %e, "reconciliation out of turn failed; the next pass asks again");
    }
}

async fn reconcile_one(
    state: &AppState,
    p: &Payment,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    report.checked += 1;
    let Some(provider) = state.providers.get(p.provider) else {
        report.unavailable += 1;
        return Ok(());
    };
    let target = match provider.fetch_status(p).await {
        Ok(ProviderStatus::Succeeded) => PaymentStatus::Succeeded,
        // A block the payer made on the provider's page: the merchant captures or voids it.
        Ok(ProviderStatus::Authorized) if p.status == PaymentStatus::Pending => {
            PaymentStatus::Processing
        }
        // The attempt ended without money: the payment is payable again (or expires).
        Ok(ProviderStatus::Failed { .. } | ProviderStatus::Canceled) => PaymentStatus::Pending,
        Ok(ProviderStatus::Voided) => PaymentStatus::Canceled,
        Ok(
            ProviderStatus::Pending | ProviderStatus::Authorized | ProviderStatus::Refunded { .. },
        )
        | Err(ProviderError::Unsupported(..)) => {
            report.unchanged += 1;
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(payment_id = %p.id, error = %e, "reconciliation: provider unavailable");
            report.unavailable += 1;
            return Ok(());
        }
    };
    let why = format!("reconciled with {}", p.provider);
    match settle_with_provider(
        state.store.as_ref(),
        Some(provider.as_ref()),
        p,
        target,
        Actor::Reconciliation,
        Some(why),
        state.now(),
    )
    .await
    {
        Ok(_) if target == PaymentStatus::Succeeded => report.succeeded += 1,
        Ok(_) if target == PaymentStatus::Processing => report.authorized += 1,
        Ok(_) if target == PaymentStatus::Canceled => report.canceled += 1,
        Ok(_) => report.reopened += 1,
        Err(LifecycleError::Transition(_) | LifecycleError::NotFound | LifecycleError::Moved) => {
            report.unchanged += 1
        }
        Err(LifecycleError::Store(e)) => return Err(e),
    }
    Ok(())
}
