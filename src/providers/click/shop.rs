//! Prepare and Complete (payme-click.md §2.4–2.6). Checks run in the official order
//! (-8 → -1 → -3 → -5 → -6 → -4 → -2 → -9), except that Click's own cancel (error < 0) is
//! answered -9 before -4, as its test matrix expects; every state change is one compare-and-set
//! change with its event, and a repeated request answers from what is stored.

use serde_json::{json, Value};

use super::sign::{sign_matches, Form};
use super::Click;
use crate::domain::{
    Actor, Change, Payment, PaymentId, PaymentStatus, PaymentUpdate, ProviderKind, Transaction,
    TransactionUpdate,
};
use crate::lifecycle::{status_change, CAS_ATTEMPTS};
use crate::money::Money;
use crate::state::AppState;
use crate::store::StoreError;

pub const PREPARED: &str = "prepared";
pub const CONFIRMED: &str = "confirmed";
pub const CANCELLED: &str = "cancelled";

/// Click's error table (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickError {
    Sign,
    Amount,
    Action,
    AlreadyPaid,
    UserNotFound,
    TransactionNotFound,
    UpdateFailed,
    BadRequest,
    Cancelled,
}

impl ClickError {
    pub fn code(self) -> i64 {
        match self {
            ClickError::Sign => -1,
            ClickError::Amount => -2,
            ClickError::Action => -3,
            ClickError::AlreadyPaid => -4,
            ClickError::UserNotFound => -5,
            ClickError::TransactionNotFound => -6,
            ClickError::UpdateFailed => -7,
            ClickError::BadRequest => -8,
            ClickError::Cancelled => -9,
        }
    }

    pub fn note(self) -> &'static str {
        match self {
            ClickError::Sign => "SIGN CHECK FAILED!",
            ClickError::Amount => "Incorrect parameter amount",
            ClickError::Action => "Action not found",
            ClickError::AlreadyPaid => "Already paid",
            ClickError::UserNotFound => "User does not exist",
            ClickError::TransactionNotFound => "Transaction does not exist",
            ClickError::UpdateFailed => "Failed to update user",
            ClickError::BadRequest => "Error in request from click",
            ClickError::Cancelled => "Transaction cancelled",
        }
    }
}

impl From<StoreError> for ClickError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "click: store failure");
        ClickError::UpdateFailed
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Prepare,
    Complete,
}

impl Endpoint {
    fn action(self) -> &'static str {
        match self {
            Endpoint::Prepare => "0",
            Endpoint::Complete => "1",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Endpoint::Prepare => "merchant_prepare_id",
            Endpoint::Complete => "merchant_confirm_id",
        }
    }
}

/// The flat JSON answer of §2.4: the request's ids echoed, our id, `error`, `error_note`.
pub fn reply(
    endpoint: Endpoint,
    form: Option<&Form>,
    outcome: Result<i64, (ClickError, Option<i64>)>,
) -> Value {
    let echo = |name: &str| match form.and_then(|f| f.int(name)) {
        Some(n) => json!(n),
        None => form
            .and_then(|f| f.get(name))
            .map_or(Value::Null, |s| json!(s)),
    };
    let (id, error, note) = match outcome {
        Ok(id) => (Some(id), 0, "Success"),
        Err((e, id)) => (id, e.code(), e.note()),
    };
    let mut body = serde_json::Map::new();
    body.insert("click_trans_id".into(), echo("click_trans_id"));
    body.insert(
        "merchant_trans_id".into(),
        form.and_then(|f| f.get("merchant_trans_id"))
            .map_or(Value::Null, |s| json!(s)),
    );
    body.insert(
        endpoint.id_field().into(),
        id.map_or(Value::Null, |n| json!(n)),
    );
    body.insert("error".into(), json!(error));
    body.insert("error_note".into(), json!(note));
    Value::Object(body)
}

type Outcome = Result<i64, (ClickError, Option<i64>)>;

fn fail(e: ClickError) -> (ClickError, Option<i64>) {
    (e, None)
}

fn prepare_id(tx: &Transaction) -> Option<i64> {
    tx.data.get("merchant_prepare_id").and_then(Value::as_i64)
}

pub struct Request<'a> {
    pub state: &'a AppState,
    pub click: &'a Click,
    pub form: &'a Form,
    pub endpoint: Endpoint,
}

impl Request<'_> {
    fn required(&self) -> Result<(), ClickError> {
        let f = self.form;
        let text = ["merchant_trans_id", "amount", "sign_time", "sign_string"];
        let ints = [
            "click_trans_id",
            "service_id",
            "click_paydoc_id",
            "action",
            "error",
        ];
        let missing_text = text
            .iter()
            .any(|n| f.get(n).is_none_or(|v| v.is_empty() || v.len() > 256));
        let bad_int = ints.iter().any(|n| f.int(n).is_none());
        let bad_prepare_id =
            self.endpoint == Endpoint::Complete && f.int("merchant_prepare_id").is_none();
        let control = f
            .get("merchant_trans_id")
            .is_some_and(|v| v.chars().any(char::is_control));
        if missing_text || bad_int || bad_prepare_id || control {
            return Err(ClickError::BadRequest);
        }
        Ok(())
    }

    async fn payment(&self) -> Result<Payment, ClickError> {
        let id = self
            .form
            .get("merchant_trans_id")
            .and_then(PaymentId::parse)
            .ok_or(ClickError::UserNotFound)?;
        match self.state.store.get_payment(&id).await? {
            Some(p) if p.provider == ProviderKind::Click => {
                tracing::Span::current().record("payment_id", tracing::field::display(&p.id));
                Ok(p)
            }
            _ => Err(ClickError::UserNotFound),
        }
    }

    /// Click's codes are 0 (debited) or negative (failed); a positive one is undefined, so it
    /// reserves and confirms nothing (-8).
    fn positive_click_error(&self) -> bool {
        self.form.int("error").is_some_and(|e| e > 0)
    }

    fn amount_matches(&self, payment: &Payment) -> bool {
        self.form
            .get("amount")
            .and_then(|a| Money::parse_major(a, payment.amount.currency()).ok())
            .is_some_and(|m| m == payment.amount)
    }

    /// §2.6's official order for a stored attempt, in a repeated Prepare and in Complete:
    /// -4 (the attempt confirmed) → -2 (another amount) → -9 (no longer prepared).
    fn stored_attempt_order(&self, tx: &Transaction, payment: &Payment) -> Result<(), ClickError> {
        if tx.state == CONFIRMED {
            return Err(ClickError::AlreadyPaid);
        }
        if !self.amount_matches(payment) {
            return Err(ClickError::Amount);
        }
        if tx.state != PREPARED {
            return Err(ClickError::Cancelled);
        }
        Ok(())
    }

    fn click_trans_id(&self) -> String {
        self.form
            .int("click_trans_id")
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    fn now_ms(&self) -> i64 {
        self.state.now().timestamp_millis()
    }

    /// The common head of both endpoints: -8, -1, -3, -5.
    async fn checked_payment(&self) -> Result<Payment, ClickError> {
        self.required()?;
        if self.form.get("service_id") != Some(self.click.settings.service_id.as_str())
            || !sign_matches(self.form, self.click.secret())
        {
            tracing::warn!(
                click_trans_id = self.form.get("click_trans_id").unwrap_or(""),
                "click: signature check failed"
            );
            return Err(ClickError::Sign);
        }
        // The exact text: the signature includes merchant_prepare_id for "1" only, so "01"
        // must not pass as a Complete.
        if self.form.get("action") != Some(self.endpoint.action()) {
            return Err(ClickError::Action);
        }
        self.payment().await
    }

    pub async fn prepare(&self) -> Outcome {
        for _ in 0..CAS_ATTEMPTS {
            let payment = self.checked_payment().await.map_err(fail)?;
            if let Some(tx) = self
                .state
                .store
                .get_transaction(ProviderKind::Click, &self.click_trans_id())
                .await
                .map_err(|e| fail(e.into()))?
            {
                if tx.payment_id != payment.id {
                    return Err(fail(ClickError::TransactionNotFound));
                }
                let id = prepare_id(&tx);
                if self.positive_click_error() {
                    return Err((ClickError::BadRequest, id));
                }
                self.stored_attempt_order(&tx, &payment)
                    .map_err(|e| (e, id))?;
                // The attempt ends (-9) when Click says the payment failed (§2.5: error < 0,
                // "cancel the payment in billing and return -9", a repeated Prepare too, so a
                // Complete of it can no longer pay), or when another attempt paid the order
                // (as Complete does: -9 makes Click return this payer's money, where "already
                // paid" would keep it).
                let click_error = self.form.int("error").unwrap_or(0);
                if click_error < 0 || payment.status.is_paid() {
                    match self.cancel(&payment, &tx, click_error).await {
                        Ok(()) => return Err((ClickError::Cancelled, id)),
                        Err(StoreError::Conflict(_)) => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Err(e) => return Err(fail(e.into())),
                    }
                }
                if !payment.status.is_open() {
                    return Err((ClickError::Cancelled, id));
                }
                return id.ok_or(fail(ClickError::UpdateFailed));
            }
            if self.positive_click_error() {
                return Err(fail(ClickError::BadRequest));
            }
            if payment.status.is_paid() {
                return Err(fail(ClickError::AlreadyPaid));
            }
            if !self.amount_matches(&payment) {
                return Err(fail(ClickError::Amount));
            }
            let open = payment.status.is_open() && payment.expires_at > self.state.now();
            if !open || self.form.int("error").is_some_and(|e| e < 0) {
                return Err(fail(ClickError::Cancelled));
            }
            let number = self
                .state
                .store
                .next_number("click.merchant_prepare_id")
                .await
                .map_err(|e| fail(e.into()))?;
            let now = self.state.now();
            let tx = Transaction::new(
                &payment,
                ProviderKind::Click,
                self.click_trans_id(),
                PREPARED,
                json!({
                    "merchant_prepare_id": number,
                    "click_paydoc_id": self.form.get("click_paydoc_id"),
                    "sign_time": self.form.get("sign_time"),
                }),
                now,
            );
            let mut change = if payment.status == PaymentStatus::Pending {
                status_change(
                    &payment,
                    PaymentStatus::Processing,
                    Actor::Provider,
                    Some("click prepare".into()),
                    now,
                )
                .map_err(|_| fail(ClickError::Cancelled))?
            } else {
                // Already processing: still guard on the payment's version, so this prepare and
                // a concurrent cancel of another attempt cannot both decide from stale reads.
                touch(&payment, now)
            };
            change.insert_transaction = Some(tx);
            match self.state.store.apply(&change).await {
                Ok(()) => return Ok(number),
                Err(StoreError::Conflict(_) | StoreError::Duplicate(_)) => {
                    tokio::task::yield_now().await
                }
                Err(e) => return Err(fail(e.into())),
            }
        }
        Err(fail(ClickError::UpdateFailed))
    }

    pub async fn complete(&self) -> Outcome {
        for _ in 0..CAS_ATTEMPTS {
            let payment = self.checked_payment().await.map_err(fail)?;
            let tx = self
                .state
                .store
                .get_transaction(ProviderKind::Click, &self.click_trans_id())
                .await
                .map_err(|e| fail(e.into()))?
                .filter(|tx| {
                    tx.payment_id == payment.id
                        && prepare_id(tx) == self.form.int("merchant_prepare_id")
                })
                .ok_or(fail(ClickError::TransactionNotFound))?;
            let id = prepare_id(&tx);
            if self.positive_click_error() {
                return Err((ClickError::BadRequest, id));
            }
            let click_error = self.form.int("error").unwrap_or(0);
            // Each path below makes at most one compare-and-set write and names the answer it
            // earns; a lost race re-reads and decides again.
            let (written, answer) = if click_error < 0 {
                match tx.state.as_str() {
                    PREPARED => {}
                    CONFIRMED => {
                        tracing::error!(payment_id = %payment.id, click_trans_id = %tx.external_id, click_error,
                            "click: cancel of a confirmed payment; answered -9, payment left paid, reconcile by hand");
                        return Err((ClickError::Cancelled, id));
                    }
                    _ => return Err((ClickError::Cancelled, id)),
                }
                (
                    self.cancel(&payment, &tx, click_error).await,
                    Err((ClickError::Cancelled, id)),
                )
            } else {
                self.stored_attempt_order(&tx, &payment)
                    .map_err(|e| (e, id))?;
                if payment.status.is_paid() {
                    let others = self
                        .state
                        .store
                        .list_transactions(&payment.id)
                        .await
                        .map_err(|e| fail(e.into()))?;
                    if !others.iter().any(|t| t.state == CONFIRMED) {
                        // Paid with no attempt confirmed: reconciliation recorded Click's word
                        // that an attempt paid but could not name it. This Complete says which:
                        // confirm it and answer "already paid" (Click keeps the money of an
                        // order recorded as paid). Guarded on the payment's version too: a
                        // Complete of another attempt deciding the same at once must lose, or
                        // both would be kept.
                        let change = Change {
                            update_transaction: Some(self.update(
                                &tx,
                                CONFIRMED,
                                Some(self.now_ms()),
                                None,
                                None,
                            )),
                            ..touch(&payment, self.state.now())
                        };
                        (
                            self.state.store.apply(&change).await,
                            Err((ClickError::AlreadyPaid, id)),
                        )
                    } else {
                        // Another attempt already paid this order: refuse this one (-9) so
                        // Click returns the payer's money, rather than "already paid", which
                        // would keep it.
                        tracing::error!(payment_id = %payment.id, click_trans_id = %tx.external_id,
                            "click: a second attempt completed for a paid payment; cancelled it (-9)");
                        (
                            self.cancel(&payment, &tx, 0).await,
                            Err((ClickError::Cancelled, id)),
                        )
                    }
                } else if payment.status != PaymentStatus::Processing {
                    // Canceled or expired meanwhile: refuse, so Click returns the money, and
                    // end the attempt, or it would stay live on a closed payment.
                    (
                        self.cancel(&payment, &tx, 0).await,
                        Err((ClickError::Cancelled, id)),
                    )
                } else {
                    let now = self.state.now();
                    let mut change = status_change(
                        &payment,
                        PaymentStatus::Succeeded,
                        Actor::Provider,
                        Some("click complete".into()),
                        now,
                    )
                    .map_err(|_| (ClickError::Cancelled, id))?;
                    change.update_transaction =
                        Some(self.update(&tx, CONFIRMED, Some(self.now_ms()), None, None));
                    (
                        self.state.store.apply(&change).await,
                        id.ok_or(fail(ClickError::UpdateFailed)),
                    )
                }
            };
            match written {
                Ok(()) => return answer,
                Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
                Err(e) => return Err(fail(e.into())),
            }
        }
        Err(fail(ClickError::UpdateFailed))
    }

    /// Ends one Click attempt; the payment goes back to pending if no other attempt is live.
    async fn cancel(
        &self,
        payment: &Payment,
        tx: &Transaction,
        click_error: i64,
    ) -> Result<(), StoreError> {
        let now = self.state.now();
        let others_live = self
            .state
            .store
            .list_transactions(&payment.id)
            .await?
            .iter()
            .any(|t| t.id != tx.id && t.state == PREPARED);
        let mut change = if payment.status == PaymentStatus::Processing && !others_live {
            let why = format!("click attempt cancelled (error {click_error})");
            status_change(
                payment,
                PaymentStatus::Pending,
                Actor::Provider,
                Some(why),
                now,
            )
            .map_err(|_| StoreError::Conflict("payment"))?
        } else {
            // Other attempts stay live (or the payment moved on): guard on the version anyway,
            // so two cancels racing each other re-read and the last one reopens the payment.
            touch(payment, now)
        };
        change.update_transaction =
            Some(self.update(tx, CANCELLED, None, Some(self.now_ms()), Some(click_error)));
        self.state.store.apply(&change).await
    }

    fn update(
        &self,
        tx: &Transaction,
        state: &str,
        perform: Option<i64>,
        cancel: Option<i64>,
        reason: Option<i64>,
    ) -> TransactionUpdate {
        attempt_update(tx, state, perform, cancel, reason, self.state.now())
    }
}

/// The compare-and-set change of a Click attempt to `state`; times and reason given here
/// replace the stored ones, everything else is kept.
pub(super) fn attempt_update(
    tx: &Transaction,
    state: &str,
    perform: Option<i64>,
    cancel: Option<i64>,
    reason: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> TransactionUpdate {
    TransactionUpdate {
        perform_time: perform.or(tx.perform_time),
        cancel_time: cancel.or(tx.cancel_time),
        reason: reason.or(tx.reason),
        ..TransactionUpdate::to_state(tx, state, now)
    }
}

/// A guarded no-op update of the payment: same status, version checked and bumped.
/// A change that only moves the payment's version: guards a decision on it being current.
pub(crate) fn touch(payment: &Payment, now: chrono::DateTime<chrono::Utc>) -> Change {
    Change {
        payment: Some(PaymentUpdate::keeping_status(payment, None, now)),
        ..Change::default()
    }
}

/// The answer to a readable request tolov could not finish in time: -7, which Click retries.
pub fn unavailable(endpoint: Endpoint, form: &Form) -> Value {
    reply(endpoint, Some(form), Err(fail(ClickError::UpdateFailed)))
}

/// The answer to a request whose body could not even be read as a form.
pub fn garbled(endpoint: Endpoint) -> Value {
    reply(endpoint, None, Err(fail(ClickError::BadRequest)))
}
