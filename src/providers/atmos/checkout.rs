//! The payer's browser drives the card flow (client-secret auth, `X-Client-Secret`):
//! pre-apply (card → SMS), confirm (SMS code → debit), resend-otp. Card data goes to ATMOS
//! and nowhere else; only the masked PAN is stored.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::card::{self, CardProblem};
use super::client::{is_paid, is_reversed};
use super::messages;
use super::{Atmos, FAILED, OTP_SENT, PAID, REVERSED};
use crate::api::extract::{ApiPath, JsonBody};
use crate::checkout::verify_client_secret;
use crate::domain::{
    Actor, Change, EventId, NewEvent, NewRecheck, Payment, PaymentId, PaymentStatus, PaymentUpdate,
    ProviderKind, Transaction, TransactionUpdate,
};
use crate::error::{ApiError, Localized};
use crate::lifecycle::{lease_held, status_change, with_lease, without_lease, CAS_ATTEMPTS};
use crate::providers::ProviderError;
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreApplyBody {
    pub card_number: String,
    /// MM/YY
    pub expiry: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    pub otp: String,
}

async fn payer_payment(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
) -> Result<Payment, ApiError> {
    let pid = PaymentId::parse(id).ok_or_else(|| ApiError::not_found("payment"))?;
    let payment = state
        .store
        .get_payment(&pid)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    let presented = headers
        .get("x-client-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify_client_secret(&payment, presented) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client_secret",
            "X-Client-Secret does not match this payment",
        ));
    }
    if payment.provider != ProviderKind::Atmos {
        return Err(ApiError::conflict(
            "wrong_provider",
            "this payment is not an ATMOS payment",
        ));
    }
    tracing::Span::current().record("payment_id", tracing::field::display(&payment.id));
    Ok(payment)
}

fn payer_error(
    payment: &Payment,
    status: StatusCode,
    code: &'static str,
    text: Localized,
) -> ApiError {
    ApiError::for_payer(status, code, text, payment.language)
}

/// A provider failure as the payer sees it; refusals carry ATMOS's code in the log only.
fn provider_error(payment: &Payment, e: ProviderError) -> ApiError {
    match e {
        ProviderError::Rejected { code, message, .. } => {
            tracing::info!(atmos_code = %code, atmos_message = %message, "atmos refused");
            let (c, text) = messages::for_code(&code);
            payer_error(payment, StatusCode::UNPROCESSABLE_ENTITY, c, text)
        }
        other => {
            tracing::warn!(error = %other, "atmos unavailable");
            payer_error(
                payment,
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                messages::UNAVAILABLE,
            )
        }
    }
}

/// A transition the payment's current status no longer allows (it closed meanwhile), in the
/// payer's language; the transition error goes to the log.
fn closed_by(payment: &Payment, t: &impl std::fmt::Display) -> ApiError {
    tracing::info!(payment_id = %payment.id, refused = %t, "atmos: payment closed meanwhile");
    payer_error(
        payment,
        StatusCode::CONFLICT,
        "payment_closed",
        messages::CLOSED,
    )
}

/// No card attached, or its code already checked: the payer attaches a card first.
fn no_otp_pending(payment: &Payment) -> ApiError {
    payer_error(
        payment,
        StatusCode::CONFLICT,
        "no_otp_pending",
        messages::NO_OTP_PENDING,
    )
}

fn open_for_card(state: &AppState, payment: &Payment) -> Result<(), ApiError> {
    if payment.status.is_paid() {
        return Err(ApiError::conflict(
            "payment_already_paid",
            "this payment is already paid",
        ));
    }
    if !payment.status.is_open() || payment.expires_at <= state.now() {
        return Err(payer_error(
            payment,
            StatusCode::CONFLICT,
            "payment_closed",
            messages::CLOSED,
        ));
    }
    Ok(())
}

fn transaction_id(payment: &Payment) -> Result<i64, ApiError> {
    Atmos::transaction_id(payment)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("ATMOS payment without transaction_id")))
}

pub(super) fn update(
    tx: &Transaction,
    state: &str,
    data: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> TransactionUpdate {
    let now_ms = Some(now.timestamp_millis());
    let kept = TransactionUpdate::to_state(tx, state, now);
    TransactionUpdate {
        perform_time: if state == PAID {
            now_ms
        } else {
            kept.perform_time
        },
        cancel_time: if state == FAILED {
            now_ms
        } else {
            kept.cancel_time
        },
        data,
        ..kept
    }
}

/// Card details → `pre-apply` (ATMOS sends the SMS code). Validated here first: a bad card
/// never reaches ATMOS.
#[utoipa::path(post, path = "/v1/checkout/{id}/atmos/pre-apply", tag = "checkout",
    params(("id" = String, Path), ("X-Client-Secret" = String, Header)),
    request_body(content = Object, description = "{\"card_number\": \"8600 4907 4431 3347\", \"expiry\": \"MM/YY\"}"),
    responses((status = 200, description = "{status: otp_sent, masked_card, card_type}"), (status = 400, body = crate::error::Problem),
        (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem), (status = 502, body = crate::error::Problem)))]
pub async fn pre_apply(
    State(state): State<AppState>,
    atmos: Arc<Atmos>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<PreApplyBody>,
) -> Result<Json<Value>, ApiError> {
    let payment = payer_payment(&state, &id, &headers).await?;
    open_for_card(&state, &payment)?;
    let card = card::parse(&body.value.card_number, &body.value.expiry, state.now()).map_err(
        |p: CardProblem| {
            payer_error(
                &payment,
                StatusCode::UNPROCESSABLE_ENTITY,
                p.code(),
                p.message(),
            )
        },
    )?;
    // ATMOS may be slow (a token, pre-apply, and on ERR-092 a fresh draft): answered before the
    // server's 503, and the work finishes behind the answer, so a draft ATMOS made and the SMS
    // it sent are recorded rather than dropped half-way.
    let late = Err(payer_error(
        &payment,
        StatusCode::BAD_GATEWAY,
        "provider_slow",
        messages::SMS_MAY_COME,
    ));
    let work = attach_card(state.clone(), atmos, payment, card);
    crate::providers::answer_in_time(&state, "atmos pre-apply", work, late).await
}

/// The validated card to ATMOS (`pre-apply`, which sends the SMS), and the attempt recorded.
async fn attach_card(
    state: AppState,
    atmos: Arc<Atmos>,
    payment: Payment,
    card: card::Card,
) -> Result<Json<Value>, ApiError> {
    let atmos_id = transaction_id(&payment)?;
    // A card attached while a code is at ATMOS would let a second code be checked beside it
    // (the one-at-a-time mark lives on the attempt this rewrites).
    let attempt = state
        .store
        .get_transaction(ProviderKind::Atmos, &atmos_id.to_string())
        .await?;
    if attempt
        .as_ref()
        .is_some_and(|t| code_check_under_way(t, state.now()))
    {
        return Err(code_check_in_progress(&payment));
    }
    count_sms(&state, &payment).await?;
    let atmos_id = match atmos
        .client
        .pre_apply(atmos_id, &card.number, &card.expiry_yymm)
        .await
    {
        Ok(()) => atmos_id,
        Err(e) if is_closed(&e) => {
            let fresh =
                renew_closed_draft(&state, &atmos, &payment, attempt.as_ref(), atmos_id, e).await?;
            atmos
                .client
                .pre_apply(fresh, &card.number, &card.expiry_yymm)
                .await
                .map_err(|e| provider_error(&payment, e))?;
            fresh
        }
        Err(e) => return Err(provider_error(&payment, e)),
    };
    for _ in 0..CAS_ATTEMPTS {
        let payment = state
            .store
            .get_payment(&payment.id)
            .await?
            .ok_or_else(|| ApiError::not_found("payment"))?;
        let now = state.now();
        // Every ATMOS attempt of the payment, in one read: the draft's own, and the ended ones
        // whose wrong codes still count.
        let attempts: Vec<Transaction> = state
            .store
            .list_transactions(&payment.id)
            .await?
            .into_iter()
            .filter(|t| t.provider == ProviderKind::Atmos)
            .collect();
        let external_id = atmos_id.to_string();
        let existing = attempts
            .iter()
            .find(|t| t.external_id == external_id)
            .cloned();
        // The card went to ATMOS, but the payment may have closed meanwhile (merchant cancel,
        // a concurrent payment): then the SMS is moot and nothing is recorded.
        open_for_card(&state, &payment)?;
        if existing
            .as_ref()
            .is_some_and(|t| code_check_under_way(t, now))
        {
            return Err(code_check_in_progress(&payment));
        }
        if existing.as_ref().is_some_and(|t| t.state == PAID) {
            return Err(payer_error(
                &payment,
                StatusCode::CONFLICT,
                "payment_closed",
                messages::CLOSED,
            ));
        }
        // Wrong codes count per payment: attaching the card again does not reset them, nor does
        // a fresh draft after ATMOS closed one (its ended attempt keeps the count, also when the
        // fresh draft's first card was refused and it has no attempt of its own yet).
        let failures = attempts.iter().map(wrong_codes).max().unwrap_or(0);
        // Wrong codes, and whether any code went to ATMOS, outlive the card they were sent for.
        let code_sent = existing.as_ref().is_some_and(|t| t.data[CODE_SENT] == true);
        let mut data = json!({ "account": payment.provider_data["account"], "card_type": card.card_type, "otp_failures": failures, CODE_SENT: code_sent });
        // The draft's, not the card's: the earlier code may still debit it.
        if let Some(at) = existing
            .as_ref()
            .map(|t| &t.data[APPLY_UNANSWERED])
            .filter(|at| at.is_i64())
        {
            data[APPLY_UNANSWERED] = at.clone();
        }
        let mut change = if payment.status == PaymentStatus::Pending {
            status_change(
                &payment,
                PaymentStatus::Processing,
                Actor::Payer,
                Some("atmos card attached, SMS sent".into()),
                now,
            )
            .map_err(|t| closed_by(&payment, &t))?
        } else {
            // Guarded on the payment's version too, so a merchant cancel committing between
            // the read above and this write makes it read again (and refuse), rather than
            // leave an attempt awaiting a code on a closed payment.
            Change {
                payment: Some(PaymentUpdate::keeping_status(&payment, None, now)),
                ..Change::default()
            }
        };
        match existing {
            Some(tx) => {
                let mut u = update(&tx, OTP_SENT, data, now);
                u.masked_card = Some(card.masked());
                change.update_transaction = Some(u);
            }
            None => {
                change.insert_transaction = Some(Transaction {
                    masked_card: Some(card.masked()),
                    ..Transaction::new(
                        &payment,
                        ProviderKind::Atmos,
                        atmos_id.to_string(),
                        OTP_SENT,
                        data,
                        now,
                    )
                })
            }
        }
        match state.store.apply(&change).await {
            Ok(()) => {
                return Ok(Json(
                    json!({ "status": "otp_sent", "masked_card": card.masked(), "card_type": card.card_type }),
                ))
            }
            Err(StoreError::Conflict(_) | StoreError::Duplicate(_)) => {
                tokio::task::yield_now().await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the payment is being changed; retry",
    ))
}

/// The wrong SMS codes counted on an attempt.
fn wrong_codes(t: &Transaction) -> i64 {
    t.data["otp_failures"].as_i64().unwrap_or(0)
}

/// ATMOS's answer for a draft it closed (A4.4).
fn is_closed(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Rejected { code, .. } if code.ends_with("ERR-092"))
}

/// The payment's ATMOS draft was closed by ATMOS (it waited too long), but the payment is
/// payable until its own deadline: once `pay/get` shows the old draft took no money, a fresh
/// one is made (`pay/create`, same account) and becomes the payment's, its old attempt ended,
/// in one change guarded on the payment's version. A debit `pay/get` finds is recorded instead.
async fn renew_closed_draft(
    state: &AppState,
    atmos: &Atmos,
    payment: &Payment,
    old_attempt: Option<&Transaction>,
    old: i64,
    closed: ProviderError,
) -> Result<i64, ApiError> {
    // Without an attempt no card was attached to the old draft: it cannot have been debited.
    let asked = match old_attempt {
        Some(_) => Some(atmos.client.get(old).await),
        None => None,
    };
    match asked {
        None => {}
        Some(Ok(t)) if is_paid(&t) => {
            let _succeeded = debited(
                state,
                atmos,
                payment,
                old,
                "atmos debit found by pay/get of a closed draft",
            )
            .await?;
            return Err(ApiError::conflict(
                "payment_already_paid",
                "this payment is already paid",
            ));
        }
        Some(Ok(t)) if t["status_message"] == "Canceled" => {}
        Some(Err(e)) if is_closed(&e) => {}
        // Closed, but `pay/get` shows it neither debited nor cancelled: no fresh draft is
        // safe, and attaching the card again would end here again.
        Some(Ok(_)) => {
            tracing::warn!(error = %closed, "atmos: closed draft in an unknown state; not renewed");
            return Err(payer_error(
                payment,
                StatusCode::CONFLICT,
                "payment_closed",
                messages::CLOSED,
            ));
        }
        Some(Err(e)) => return Err(provider_error(payment, e)),
    }
    let account = payment.provider_data["account"]
        .as_str()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("ATMOS payment without account")))?;
    let fresh = atmos
        .client
        .create(payment.amount.minor(), account, payment.language.as_str())
        .await
        .map_err(|e| provider_error(payment, e))?;
    let current = state
        .store
        .get_payment(&payment.id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    open_for_card(state, &current)?;
    if transaction_id(&current)? != old {
        // Renewed meanwhile by another call: use that draft (this one stays unused at ATMOS).
        return transaction_id(&current);
    }
    let now = state.now();
    let mut data = current.provider_data.clone();
    data["transaction_id"] = json!(fresh);
    // Ended with the switch; its version guards against a change since it was read.
    let old_attempt = old_attempt.filter(|t| t.state != PAID && t.state != FAILED);
    let change = Change {
        payment: Some(PaymentUpdate::keeping_status(&current, Some(data), now)),
        update_transaction: old_attempt.map(|t| update(t, FAILED, released(t), now)),
        ..Change::default()
    };
    apply_or_conflict(state, &change).await?;
    tracing::info!(old, fresh, "atmos: closed draft replaced by a fresh one");
    Ok(fresh)
}

/// The SMS code → `apply` (debits the card). At most `atmos.otp_attempts` wrong codes.
#[utoipa::path(post, path = "/v1/checkout/{id}/atmos/confirm", tag = "checkout",
    params(("id" = String, Path), ("X-Client-Secret" = String, Header)),
    request_body(content = Object, description = "{\"otp\": \"111111\"}"),
    responses((status = 200, description = "{status: succeeded | processing}"), (status = 400, body = crate::error::Problem),
        (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 502, body = crate::error::Problem)))]
pub async fn confirm(
    State(state): State<AppState>,
    atmos: Arc<Atmos>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<ConfirmBody>,
) -> Result<Json<Value>, ApiError> {
    let payment = payer_payment(&state, &id, &headers).await?;
    let otp = body.value.otp.trim().to_owned();
    if otp.len() != 6 || !otp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(payer_error(
            &payment,
            StatusCode::UNPROCESSABLE_ENTITY,
            "otp_format",
            messages::OTP_FORMAT,
        ));
    }
    if payment.status.is_paid() {
        return Ok(Json(json!({ "status": "succeeded" })));
    }
    let atmos_id = transaction_id(&payment)?;
    open_for_card(&state, &payment)?;
    let tx = match reserve_code_check(&state, &payment, atmos_id).await {
        Ok(Some(tx)) => tx,
        Ok(None) => return Err(code_check_in_progress(&payment)),
        Err(e) => {
            // No attempt awaiting a code: a merchant cancel since the read above ends it.
            let now_closed = state.store.get_payment(&payment.id).await?;
            if let Some(current) = now_closed {
                open_for_card(&state, &current)?;
            }
            return Err(e);
        }
    };
    // A check ATMOS is slow with is answered `processing` (what the page says while the outcome
    // is unknown) instead of the server's 503, and goes on to record what ATMOS says.
    let work = check_code(state.clone(), atmos, payment, atmos_id, tx, otp);
    let late = Ok(Json(json!({ "status": "processing" })));
    crate::providers::answer_in_time(&state, "atmos confirm", work, late).await
}

/// The SMS code at ATMOS (`apply`), with the attempt marked as being checked (`tx`), and what
/// the answer means for the payment.
async fn check_code(
    state: AppState,
    atmos: Arc<Atmos>,
    payment: Payment,
    atmos_id: i64,
    tx: Transaction,
    otp: String,
) -> Result<Json<Value>, ApiError> {
    let outcome = atmos.client.apply(atmos_id, &otp).await;
    let text_of = |e: &ProviderError| match e {
        ProviderError::Rejected { code, .. } => Some(code.clone()),
        _ => None,
    };
    match outcome {
        Ok(store_tx) if is_paid(&store_tx) => {
            debited(&state, &atmos, &payment, atmos_id, "atmos apply confirmed").await
        }
        Ok(_) => {
            // Applied but not (yet) confirmed: the callback or reconciliation settles it.
            release_code_check(&state, &tx, ApplyOutcome::Unknown).await;
            Ok(Json(json!({ "status": "processing" })))
        }
        Err(e) if text_of(&e).as_deref().is_some_and(messages::is_wrong_otp) => {
            let limit = i64::from(state.settings.atmos.otp_attempts);
            let failures = count_wrong_code(&state, &payment, tx, limit).await?;
            if failures >= limit {
                return Err(payer_error(
                    &payment,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "otp_attempts_exceeded",
                    messages::OTP_ATTEMPTS_EXCEEDED,
                ));
            }
            let mut err = payer_error(
                &payment,
                StatusCode::UNPROCESSABLE_ENTITY,
                "otp_invalid",
                messages::OTP_INVALID,
            );
            err.detail = format!(
                "{} {}",
                err.detail,
                messages::attempts_left(payment.language, limit - failures)
            );
            Err(err)
        }
        Err(e @ ProviderError::Rejected { .. }) => {
            // A refusal is no proof that no money moved (a retry after an apply that timed out
            // but debited is refused as closed): ATMOS's own record decides first.
            match atmos.client.get(atmos_id).await {
                Ok(t) if is_paid(&t) => {
                    return debited(
                        &state,
                        &atmos,
                        &payment,
                        atmos_id,
                        "atmos debit confirmed by pay/get after a refused apply",
                    )
                    .await;
                }
                // An earlier code check of this attempt got no answer and may still debit
                // (ATMOS refuses the retry while it works on that one, and pay/get shows it
                // later): the attempt stays, and reconciliation asks pay/get until it knows.
                Ok(t)
                    if unanswered_apply_may_debit(&state, &tx)
                        && t["status_message"] != "Canceled" =>
                {
                    tracing::warn!(refused = %e, "atmos: apply refused after an unanswered one that may still debit; left to reconciliation");
                    // Refused: this call adds nothing that may debit, so the window still counts
                    // from the unanswered one.
                    release_code_check(&state, &tx, ApplyOutcome::NoDebit).await;
                    return Ok(Json(json!({ "status": "processing" })));
                }
                Ok(_) | Err(ProviderError::Rejected { .. }) => {}
                Err(unknown) => {
                    tracing::warn!(error = %unknown, refused = %e, "atmos: apply refused and pay/get unavailable; nothing recorded");
                    release_code_check(&state, &tx, ApplyOutcome::NoDebit).await;
                    return Err(provider_error(&payment, unknown));
                }
            }
            // A declined card ends this attempt; the payment can be paid with another card.
            let why = format!("atmos declined: {}", text_of(&e).unwrap_or_default());
            end_declined_attempt(&state, &payment, tx, why).await?;
            Err(provider_error(&payment, e))
        }
        // Timeout, garbage or ATMOS's internal error: ATMOS may have debited. Nothing changes
        // here; the callback or reconciliation (pay/get) decides, and the payer may retry.
        Err(e) => {
            // Not sent (no token): nothing can follow from it.
            let outcome = if matches!(e, ProviderError::NotSent(..)) {
                ApplyOutcome::NoDebit
            } else {
                ApplyOutcome::Unknown
            };
            release_code_check(&state, &tx, outcome).await;
            Err(provider_error(&payment, e))
        }
    }
}

/// The attempt and its payment as they are now, after a change of them lost a race.
async fn reread(
    state: &AppState,
    tx: &Transaction,
    payment: &Payment,
) -> Result<Option<(Transaction, Payment)>, StoreError> {
    let t = state
        .store
        .get_transaction(ProviderKind::Atmos, &tx.external_id)
        .await?;
    let p = state.store.get_payment(&payment.id).await?;
    Ok(t.zip(p))
}

/// Ends the attempt ATMOS declined the card of (the payment back to `pending` if it was
/// `processing`), re-reading after a conflict: the payment may have changed since it was read
/// (a card attached just before this code's check, which moves its version), and the decline
/// must still be recorded.
async fn end_declined_attempt(
    state: &AppState,
    payment: &Payment,
    marked: Transaction,
    why: String,
) -> Result<(), ApiError> {
    let (mut tx, mut payment) = (marked, payment.clone());
    for _ in 0..CAS_ATTEMPTS {
        let now = state.now();
        let mut change = if payment.status == PaymentStatus::Processing {
            status_change(
                &payment,
                PaymentStatus::Pending,
                Actor::Provider,
                Some(why.clone()),
                now,
            )
            .map_err(|t| closed_by(&payment, &t))?
        } else {
            Change::default()
        };
        change.update_transaction = Some(update(&tx, FAILED, released(&tx), now));
        match state.store.apply(&change).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict(_)) => {
                let Some((t, p)) = reread(state, &tx, &payment).await? else {
                    break;
                };
                if t.state != OTP_SENT {
                    // Ended meanwhile (a cancel, or another decision): nothing left to end.
                    return Ok(());
                }
                (tx, payment) = (t, p);
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the payment changed meanwhile; retry",
    ))
}

/// Counts a wrong SMS code on the attempt (and fails the payment at `limit`), re-reading after a
/// conflict: a write to the attempt meanwhile (a card attached again) must not let the wrong
/// code go uncounted. Returns the attempt's wrong codes so far.
async fn count_wrong_code(
    state: &AppState,
    payment: &Payment,
    marked: Transaction,
    limit: i64,
) -> Result<i64, ApiError> {
    let (mut tx, mut payment) = (marked, payment.clone());
    for _ in 0..CAS_ATTEMPTS {
        if tx.state != OTP_SENT {
            break;
        }
        let failures = wrong_codes(&tx) + 1;
        let now = state.now();
        let mut data = released(&tx);
        data["otp_failures"] = json!(failures);
        let change = if failures >= limit {
            let mut change = status_change(
                &payment,
                PaymentStatus::Failed,
                Actor::Payer,
                Some(format!("{failures} wrong SMS codes")),
                now,
            )
            .map_err(|t| closed_by(&payment, &t))?;
            change.update_transaction = Some(update(&tx, FAILED, data, now));
            change
        } else {
            Change {
                update_transaction: Some(update(&tx, OTP_SENT, data, now)),
                ..Change::default()
            }
        };
        match state.store.apply(&change).await {
            Ok(()) => return Ok(failures),
            Err(StoreError::Conflict(_)) => {
                let Some((t, p)) = reread(state, &tx, &payment).await? else {
                    break;
                };
                (tx, payment) = (t, p);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "concurrent_update",
        "the payment changed meanwhile; retry",
    ))
}

/// A debit ATMOS confirmed, recorded and told to the payer: succeeded, or (the payment closed
/// meanwhile) reversed.
async fn debited(
    state: &AppState,
    atmos: &Atmos,
    payment: &Payment,
    atmos_id: i64,
    why: &str,
) -> Result<Json<Value>, ApiError> {
    let settled = mark_paid(
        state,
        atmos,
        &payment.id,
        &atmos_id.to_string(),
        Actor::Payer,
        why,
    )
    .await?;
    let closed = |text| payer_error(payment, StatusCode::CONFLICT, "payment_closed", text);
    match settled {
        Settled::Paid => Ok(Json(json!({ "status": "succeeded" }))),
        Settled::Reversed => Err(closed(messages::CLOSED_REFUNDED)),
        // Not "returned": it was not (yet); another call or an operator reverses it.
        Settled::NeedsReversal | Settled::BeingReversed => Err(closed(messages::CLOSED)),
    }
}

/// Marks the attempt's SMS code as being checked, so one code per payment is at ATMOS at a
/// time: codes sent in parallel would otherwise all be tried while only one wrong code is
/// counted, making `atmos.otp_attempts` no limit at all. The mark expires by itself (a little
/// after one ATMOS call's timeout) should this process die mid-check. Returns the attempt as
/// marked, the version the answer's change is guarded on; `None` while another code is being
/// checked.
async fn reserve_code_check(
    state: &AppState,
    payment: &Payment,
    atmos_id: i64,
) -> Result<Option<Transaction>, ApiError> {
    for _ in 0..CAS_ATTEMPTS {
        let tx = state
            .store
            .get_transaction(ProviderKind::Atmos, &atmos_id.to_string())
            .await?
            .filter(|t| t.state == OTP_SENT)
            .ok_or_else(|| no_otp_pending(payment))?;
        let now = state.now();
        if code_check_under_way(&tx, now) {
            break;
        }
        let mut data = with_lease(&tx.data, CODE_CHECK_UNTIL, now, code_check_lease_ms(state));
        data[CODE_SENT] = json!(true);
        let mark = update(&tx, OTP_SENT, data, now);
        let marked = mark.applied_to(&tx);
        let change = Change {
            update_transaction: Some(mark),
            ..Change::default()
        };
        match state.store.apply(&change).await {
            Ok(()) => return Ok(Some(marked)),
            Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

pub(super) const CODE_CHECK_UNTIL: &str = "otp_check_until";
/// Set for good once an SMS code went to ATMOS (`apply`): only then can the card be debited.
pub(super) const CODE_SENT: &str = "code_sent";
/// When (epoch ms) a code check of the attempt last got no answer (or no confirmation): ATMOS
/// may still debit for it for a while, so a refusal of the attempt meanwhile is no proof that
/// no money moves.
const APPLY_UNANSWERED: &str = "apply_unanswered";

/// How long after an unanswered code check a refusal is not taken as a decline. ATMOS's own
/// processing time is not documented; beyond this, `pay/get` showing no debit is believed
/// (and a debit that lands later on a closed payment is still found by its recheck).
const UNANSWERED_APPLY_MAY_DEBIT_FOR: chrono::Duration = chrono::Duration::minutes(10);

fn unanswered_apply_may_debit(state: &AppState, tx: &Transaction) -> bool {
    tx.data[APPLY_UNANSWERED].as_i64().is_some_and(|at| {
        state.now().timestamp_millis() < at + UNANSWERED_APPLY_MAY_DEBIT_FOR.num_milliseconds()
    })
}

/// What is known of a code check that ends without a debit recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyOutcome {
    /// Not sent, or refused: nothing can follow from it.
    NoDebit,
    /// Sent, and unanswered or unconfirmed: it may still debit.
    Unknown,
}

/// The answer while another SMS code of the payment is at ATMOS.
fn code_check_in_progress(payment: &Payment) -> ApiError {
    payer_error(
        payment,
        StatusCode::CONFLICT,
        "otp_check_in_progress",
        messages::OTP_CHECK_IN_PROGRESS,
    )
}

/// Whether an SMS code of this attempt is at ATMOS now (its mark has not run out).
pub(super) fn code_check_under_way(tx: &Transaction, now: chrono::DateTime<chrono::Utc>) -> bool {
    lease_held(&tx.data, CODE_CHECK_UNTIL, now)
}

/// The attempt's data without the code-check mark.
fn released(tx: &Transaction) -> Value {
    without_lease(&tx.data, CODE_CHECK_UNTIL)
}

/// The token fetches one ATMOS call may need: a first one, and another after a 401, each
/// within the HTTP client's 15 s.
const TOKEN_FETCHES_SECS: i64 = 2 * 15;

/// `atmos.timeout_secs`, the limit of one ATMOS call.
fn atmos_call_secs(state: &AppState) -> i64 {
    i64::try_from(state.settings.atmos.timeout_secs).unwrap_or(60)
}

/// How long the claim held across a reversal lasts: beyond its calls' limits (a `reverse`
/// refused for the create id is followed by `pay/get`, a `reverse` by the debit's id and a
/// `pay/get` that confirms it, A4.6, and a failed one by a `pay/get` that may show it done)
/// and the token fetches they may need.
fn reverse_lease_ms(state: &AppState) -> i64 {
    (5 * atmos_call_secs(state) + TOKEN_FETCHES_SECS + 10) * 1_000
}

/// How long the code-check mark lasts: beyond the longest check, so a second code cannot reach
/// ATMOS beside one still being checked. That is `apply` and a `pay/get` after a refusal, each
/// within `atmos.timeout_secs`, and the token fetches.
fn code_check_lease_ms(state: &AppState) -> i64 {
    (2 * atmos_call_secs(state) + TOKEN_FETCHES_SECS + 10) * 1_000
}

/// Ends a code check that changed nothing else, so the payer can send a code again at once.
/// If the attempt changed meanwhile (a callback settled it), that change stands.
async fn release_code_check(state: &AppState, tx: &Transaction, outcome: ApplyOutcome) {
    let mut data = released(tx);
    if outcome == ApplyOutcome::Unknown {
        data[APPLY_UNANSWERED] = json!(state.now().timestamp_millis());
    }
    let change = Change {
        update_transaction: Some(update(tx, OTP_SENT, data, state.now())),
        ..Change::default()
    };
    if let Err(e) = state.store.apply(&change).await {
        if !matches!(e, StoreError::Conflict(_)) {
            tracing::warn!(error = %e, "atmos: could not end the code check; it expires by itself");
        }
    }
}

async fn apply_or_conflict(state: &AppState, change: &Change) -> Result<(), ApiError> {
    match state.store.apply(change).await {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict(_)) => Err(ApiError::conflict(
            "concurrent_update",
            "the payment changed meanwhile; retry",
        )),
        Err(e) => Err(e.into()),
    }
}

/// What became of a debit ATMOS reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// The payment is (now, or already was) succeeded.
    Paid,
    /// The payment had closed (e.g. the merchant canceled it) before the debit: reversed.
    Reversed,
    /// Same, but the reversal failed: logged loudly for manual handling.
    NeedsReversal,
    /// Same, and another call is reversing it right now.
    BeingReversed,
}

/// Marks the attempt paid and the payment succeeded, once; a concurrent callback or confirm
/// that got there first is not an error. A debit on a payment that can no longer succeed is
/// reversed at ATMOS, so the payer gets the money back.
pub async fn mark_paid(
    state: &AppState,
    atmos: &Atmos,
    payment_id: &PaymentId,
    atmos_id: &str,
    actor: Actor,
    why: &str,
) -> Result<Settled, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(payment) = state.store.get_payment(payment_id).await? else {
            return Err(StoreError::NotFound("payment"));
        };
        let Some(tx) = state
            .store
            .get_transaction(ProviderKind::Atmos, atmos_id)
            .await?
        else {
            return Err(StoreError::NotFound("transaction"));
        };
        if tx.state == REVERSED {
            return Ok(Settled::Reversed);
        }
        if payment.status.is_paid() {
            return Ok(Settled::Paid);
        }
        let now = state.now();
        let Ok(mut change) = status_change(
            &payment,
            PaymentStatus::Succeeded,
            actor,
            Some(why.to_owned()),
            now,
        ) else {
            return reverse_late_debit(state, atmos, &payment, &tx).await;
        };
        change.update_transaction = Some(update(&tx, PAID, tx.data.clone(), now));
        match state.store.apply(&change).await {
            Ok(()) => return Ok(Settled::Paid),
            Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict("payment"))
}

/// Reverses a debit that landed on a closed payment, once however many callbacks race here:
/// the attempt is claimed first (a compare-and-set of `reversing_until`, which expires by
/// itself should this process die), and only the claimant calls `reverse`.
async fn reverse_late_debit(
    state: &AppState,
    atmos: &Atmos,
    payment: &Payment,
    tx: &Transaction,
) -> Result<Settled, StoreError> {
    const REVERSING_UNTIL: &str = "reversing_until";
    let Ok(id) = tx.external_id.parse::<i64>() else {
        return Ok(Settled::NeedsReversal);
    };
    let mut current = tx.clone();
    let mut claimed = None;
    for _ in 0..CAS_ATTEMPTS {
        let now = state.now();
        if current.state == REVERSED {
            return Ok(Settled::Reversed);
        }
        if lease_held(&current.data, REVERSING_UNTIL, now) {
            return Ok(Settled::BeingReversed);
        }
        let data = with_lease(&current.data, REVERSING_UNTIL, now, reverse_lease_ms(state));
        let claim = update(&current, &current.state, data, now);
        let marked = claim.applied_to(&current);
        match state
            .store
            .apply(&Change {
                update_transaction: Some(claim),
                ..Change::default()
            })
            .await
        {
            Ok(()) => {
                claimed = Some(marked);
                break;
            }
            // Another writer came first (a reversing call, or any change to the attempt):
            // decide again from what is stored.
            Err(StoreError::Conflict(_)) => {
                match state
                    .store
                    .get_transaction(ProviderKind::Atmos, &tx.external_id)
                    .await?
                {
                    Some(t) => current = t,
                    None => return Ok(Settled::NeedsReversal),
                }
            }
            Err(e) => return Err(e),
        }
    }
    let Some(claimed) = claimed else {
        return Ok(Settled::BeingReversed);
    };
    let unmarked = without_lease(&claimed.data, REVERSING_UNTIL);
    let reversed = match atmos
        .client
        .reverse(id, "payment closed before the debit")
        .await
    {
        // Refused or unanswered, yet perhaps done (an earlier reverse whose answer was lost is
        // refused when asked again): ATMOS's record decides.
        Err(e) => match atmos.client.get(id).await {
            Ok(t) if is_reversed(&t) => {
                tracing::info!(error = %e, "atmos: reverse not confirmed, but pay/get shows the debit reversed");
                Ok(())
            }
            _ => Err(e),
        },
        done => done,
    };
    let (state_after, settled) = match &reversed {
        Ok(()) => {
            tracing::warn!(payment_id = %payment.id, status = %payment.status, "atmos debited a closed payment; reversed it");
            (REVERSED, Settled::Reversed)
        }
        Err(e) => {
            tracing::error!(payment_id = %payment.id, status = %payment.status, error = %e,
                "atmos debited a closed payment and the reversal failed; reverse it by hand");
            (claimed.state.as_str(), Settled::NeedsReversal)
        }
    };
    let now = state.now();
    // A failed reversal is tried again by reconciliation (ATMOS may never call again).
    let recheck = (settled == Settled::NeedsReversal).then(|| {
        NewRecheck::soon(
            &payment.id,
            "atmos: reversing a debit on a closed payment failed",
            now,
        )
    });
    // The audit trail says the money went back (the payment's status stays as it is).
    let events = (settled == Settled::Reversed)
        .then(|| NewEvent {
            id: EventId::generate(),
            payment_id: payment.id.clone(),
            kind: "payment.late_debit_reversed".to_owned(),
            from_status: Some(payment.status),
            to_status: Some(payment.status),
            actor: Actor::Provider,
            reason: Some("ATMOS debited the card after the payment was closed".to_owned()),
            data: json!({ "transaction_id": id, "amount": payment.amount.minor() }),
            created_at: now,
        })
        .into_iter()
        .collect();
    let change = Change {
        update_transaction: Some(update(&claimed, state_after, unmarked, now)),
        events,
        recheck,
        ..Change::default()
    };
    match state.store.apply(&change).await {
        Ok(()) | Err(StoreError::Conflict(_)) => Ok(settled),
        Err(e) => Err(e),
    }
}

/// Counts one SMS for the payment before ATMOS is asked to send it (a pre-apply also tries a
/// card): past `atmos.sms_per_payment` the request is refused, so a checkout link in the wrong
/// hands can neither flood the card holder's phone nor test cards without bound. One atomic
/// counter per payment, exact under concurrent requests and across instances; an SMS ATMOS
/// then did not send (a refused card, a timeout) still counts.
async fn count_sms(state: &AppState, payment: &Payment) -> Result<(), ApiError> {
    let asked = state
        .store
        .next_number(&format!("atmos.sms.{}", payment.id))
        .await?;
    if asked > i64::from(state.settings.atmos.sms_per_payment) {
        return Err(payer_error(
            payment,
            StatusCode::TOO_MANY_REQUESTS,
            "sms_limit_reached",
            messages::SMS_LIMIT_REACHED,
        ));
    }
    Ok(())
}

/// Asks ATMOS to send the SMS code again.
#[utoipa::path(post, path = "/v1/checkout/{id}/atmos/resend-otp", tag = "checkout",
    params(("id" = String, Path), ("X-Client-Secret" = String, Header)),
    responses((status = 200, description = "{status: otp_sent}"), (status = 400, body = crate::error::Problem),
        (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem), (status = 502, body = crate::error::Problem)))]
pub async fn resend(
    State(state): State<AppState>,
    atmos: Arc<Atmos>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let payment = payer_payment(&state, &id, &headers).await?;
    open_for_card(&state, &payment)?;
    let atmos_id = transaction_id(&payment)?;
    state
        .store
        .get_transaction(ProviderKind::Atmos, &atmos_id.to_string())
        .await?
        .filter(|t| t.state == OTP_SENT)
        .ok_or_else(|| no_otp_pending(&payment))?;
    count_sms(&state, &payment).await?;
    atmos
        .client
        .otp_resend(atmos_id)
        .await
        .map_err(|e| provider_error(&payment, e))?;
    Ok(Json(json!({ "status": "otp_sent" })))
}
