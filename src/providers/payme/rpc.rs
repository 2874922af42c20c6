//! The Merchant API methods (payme-click.md §1.6–1.7). Each method reads, decides, and writes
//! its change (transaction row + payment status + event + outbox) in one compare-and-set
//! transaction; a lost race re-reads and decides again, so repeats answer what the first call
//! answered and concurrent calls have one effect. CreateTransaction and PerformTransaction first
//! try the usual case from this process's copies of the rows (`store::recent`), skipping the
//! read; those copies only ever feed a compare-and-set change, never an answer.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::errors::PaymeError;
use super::Payme;
use crate::domain::{
    Actor, Change, Payment, PaymentId, PaymentStatus, ProviderKind, Transaction, TransactionUpdate,
};
use crate::lifecycle::{status_change, CAS_ATTEMPTS};
use crate::state::AppState;
use crate::store::StoreError;

/// 12 hours: a created transaction not performed by then is cancelled with reason 4.
pub const TIMEOUT_MS: i64 = 43_200_000;

/// Whether Payme's 12 hours, counted from its `time` (§1.7), are over for `tx` at `now_ms`.
pub fn timed_out(tx: &Transaction, now_ms: i64) -> bool {
    tx.provider_time.is_some_and(|t| now_ms - t >= TIMEOUT_MS)
}

/// A transaction that holds its order: created (state 1) and inside its 12 hours.
pub fn holds_order(tx: &Transaction, now_ms: i64) -> bool {
    tx.state == STATE_CREATED && !timed_out(tx, now_ms)
}
pub const REASON_TIMEOUT: i64 = 4;

pub const STATE_CREATED: &str = "1";
pub const STATE_PERFORMED: &str = "2";
pub const STATE_CANCELLED: &str = "-1";
pub const STATE_CANCELLED_AFTER_PERFORM: &str = "-2";

type RpcResult = Result<Value, PaymeError>;

impl From<StoreError> for PaymeError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "payme: store failure");
        PaymeError::Internal
    }
}

pub struct Call<'a> {
    pub state: &'a AppState,
    pub payme: &'a Payme,
    pub params: &'a Map<String, Value>,
    pub now: DateTime<Utc>,
}

fn state_number(tx: &Transaction) -> i64 {
    tx.state.parse().unwrap_or(0)
}

impl Call<'_> {
    fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    fn field(&self) -> &str {
        &self.payme.settings.account_field
    }

    fn int(&self, name: &str) -> Result<i64, PaymeError> {
        self.params
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| PaymeError::InvalidRequest(format!("params.{name} must be an integer")))
    }

    fn text(&self, name: &str) -> Result<&str, PaymeError> {
        self.params
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control))
            .ok_or_else(|| {
                PaymeError::InvalidRequest(format!("params.{name} must be a non-empty string"))
            })
    }

    /// `amount`: an integer of tiyin. Not a number at all is a malformed request; a number that
    /// is not a positive i64 can never equal an order's amount.
    fn amount(&self) -> Result<i64, PaymeError> {
        match self.params.get("amount") {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(a) if a > 0 => Ok(a),
                _ => Err(PaymeError::WrongAmount),
            },
            _ => Err(PaymeError::InvalidRequest(
                "params.amount must be an integer".into(),
            )),
        }
    }

    /// The order id in `account.<account_field>`.
    fn account_id(&self) -> Result<PaymentId, PaymeError> {
        let account = self
            .params
            .get("account")
            .and_then(Value::as_object)
            .ok_or_else(|| PaymeError::InvalidRequest("params.account must be an object".into()))?;
        account
            .get(self.field())
            .and_then(Value::as_str)
            .and_then(PaymentId::parse)
            .ok_or_else(|| PaymeError::OrderNotFound(self.field().to_owned()))
    }

    /// The order (tolov payment) named by `account.<account_field>`.
    async fn order(&self) -> Result<Payment, PaymeError> {
        let id = self.account_id()?;
        let payment = self.state.store.get_payment(&id).await?;
        self.payme_order(payment)
    }

    /// A stored payment as the order Payme asked about: only Payme payments are its orders.
    fn payme_order(&self, payment: Option<Payment>) -> Result<Payment, PaymeError> {
        match payment {
            Some(p) if p.provider == ProviderKind::Payme => {
                tracing::Span::current().record("payment_id", tracing::field::display(&p.id));
                Ok(p)
            }
            _ => Err(PaymeError::OrderNotFound(self.field().to_owned())),
        }
    }

    /// Whether a new transaction may start on this order (after the amount matched).
    fn payable(&self, p: &Payment) -> Result<(), PaymeError> {
        match p.status {
            PaymentStatus::Pending if p.expires_at > self.now => Ok(()),
            PaymentStatus::Processing => Err(PaymeError::OrderBusy(self.field().to_owned())),
            _ => Err(PaymeError::OrderNotPayable(self.field().to_owned())),
        }
    }

    /// The order's transaction in state 1 once its 12 hours ran out (§1.7): it no longer holds
    /// the order (with `api.payment_ttl_minutes` above 720, the payment outlives it).
    async fn timed_out_holder(&self, p: &Payment) -> Result<Option<Transaction>, PaymeError> {
        let now = self.now_ms();
        let created: Vec<Transaction> = self
            .state
            .store
            .list_transactions(&p.id)
            .await?
            .into_iter()
            .filter(|t| t.state == STATE_CREATED)
            .collect();
        Ok(match created.as_slice() {
            [one] if timed_out(one, now) => Some(one.clone()),
            _ => None,
        })
    }

    pub async fn check_perform(&self) -> RpcResult {
        let amount = self.amount()?;
        let payment = self.order().await?;
        if amount != payment.amount.minor() {
            return Err(PaymeError::WrongAmount);
        }
        match self.payable(&payment) {
            // Held by a transaction past its 12 hours: payable again while the order is within
            // its own deadline (expiry ends both after it).
            Err(PaymeError::OrderBusy(field))
                if self.timed_out_holder(&payment).await?.is_some() =>
            {
                if payment.expires_at <= self.now {
                    return Err(PaymeError::OrderNotPayable(field));
                }
            }
            other => other?,
        }
        Ok(match payment.provider_data.get("detail") {
            Some(detail) => json!({ "allow": true, "detail": detail }),
            None => json!({ "allow": true }),
        })
    }

    pub async fn create(&self) -> RpcResult {
        let id = self.text("id")?;
        let time = self.int("time")?;
        let amount = self.amount()?;
        // §1.4: 13 digits of milliseconds (seconds would read as 1970 and time out at once).
        if !(1_000_000_000_000..=9_999_999_999_999).contains(&time) {
            return Err(PaymeError::InvalidRequest(
                "params.time must be a 13-digit timestamp in milliseconds".into(),
            ));
        }
        if let Some(answer) = self.create_from_recent(id, time, amount).await {
            return Ok(answer);
        }
        for _ in 0..CAS_ATTEMPTS {
            // The order and a transaction with this id in one read.
            let account_id = self.account_id();
            let (payment, existing) = match &account_id {
                Ok(order) => {
                    self.state
                        .store
                        .get_payment_and_transaction(order, ProviderKind::Payme, id)
                        .await?
                }
                Err(_) => (
                    None,
                    self.state
                        .store
                        .get_transaction(ProviderKind::Payme, id)
                        .await?,
                ),
            };
            if let Some(tx) = existing {
                return self.repeat_create(tx, amount).await;
            }
            account_id?;
            let payment = self.payme_order(payment)?;
            if amount != payment.amount.minor() {
                return Err(PaymeError::WrongAmount);
            }
            // After the account and amount, per §1.6 step 1.
            if !self.within_window(time) {
                return Err(PaymeError::CannotPerform);
            }
            match self.payable(&payment) {
                Ok(()) => {}
                // Busy — possibly with this very id, committed between our two reads (they
                // commit together, so looking again tells). Otherwise another Payme transaction
                // is live for this one-time order: -31008, the sandbox's code.
                Err(PaymeError::OrderBusy(_)) => {
                    match self
                        .state
                        .store
                        .get_transaction(ProviderKind::Payme, id)
                        .await?
                    {
                        Some(tx) => return self.repeat_create(tx, amount).await,
                        // One whose 12 hours ran out holds the order no more: it ends now
                        // (reason 4, §1.7) and the order is decided again.
                        None => match self.timed_out_holder(&payment).await? {
                            Some(_) if payment.expires_at <= self.now => {
                                return Err(PaymeError::OrderNotPayable(self.field().to_owned()))
                            }
                            Some(stale) => {
                                self.cancel_expired(stale).await?;
                                continue;
                            }
                            None => return Err(PaymeError::CannotPerform),
                        },
                    }
                }
                // Paid: another id's transaction is in state 2, which §1.6 answers -31008 like
                // a live one. Refunded, cancelled or expired orders have none: -31051.
                Err(PaymeError::OrderNotPayable(_))
                    if matches!(
                        payment.status,
                        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
                    ) =>
                {
                    return Err(PaymeError::CannotPerform);
                }
                Err(e) => return Err(e),
            }
            let (change, tx) = self.new_transaction(&payment, id, time, amount)?;
            match self.state.store.apply(&change).await {
                Ok(()) => return Ok(create_answer(&tx)),
                // Lost a race (same id or another id for this order): decide again from what is stored.
                Err(StoreError::Conflict(_) | StoreError::Duplicate(_)) => {
                    tokio::task::yield_now().await
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymeError::Internal)
    }

    /// Whether a new transaction dated `time` may start: not yet past its 12 hours, and not
    /// dated further ahead than the whole window (no clock is that far off, and such a
    /// transaction would never time out, holding its payment in processing).
    fn within_window(&self, time: i64) -> bool {
        let age = self.now_ms() - time;
        age < TIMEOUT_MS && -age <= TIMEOUT_MS
    }

    /// The usual CreateTransaction, decided from this process's copy of the order (it created
    /// the payment or just answered CheckPerformTransaction for it): a new transaction on a
    /// payable order. Answers only when that change commits, its version guard proving the copy
    /// current; anything else (a stale copy, a repeat, an error to answer) is left to `create`,
    /// which decides from a fresh read.
    async fn create_from_recent(&self, id: &str, time: i64, amount: i64) -> Option<Value> {
        let payment = self.state.store.recent_payment(&self.account_id().ok()?)?;
        let happy = payment.provider == ProviderKind::Payme
            && amount == payment.amount.minor()
            && self.within_window(time)
            && self.payable(&payment).is_ok();
        if !happy {
            return None;
        }
        let (change, tx) = self.new_transaction(&payment, id, time, amount).ok()?;
        self.state.store.apply(&change).await.ok()?;
        tracing::Span::current().record("payment_id", tracing::field::display(&payment.id));
        Some(create_answer(&tx))
    }

    /// A new Payme transaction (state 1) on a payable order, with the order moving to processing.
    fn new_transaction(
        &self,
        payment: &Payment,
        id: &str,
        time: i64,
        amount: i64,
    ) -> Result<(Change, Transaction), PaymeError> {
        let tx = Transaction {
            amount_minor: amount,
            provider_time: Some(time),
            ..Transaction::new(
                payment,
                ProviderKind::Payme,
                id.to_owned(),
                STATE_CREATED,
                json!({ "account": self.params.get("account") }),
                self.now,
            )
        };
        let mut change = status_change(
            payment,
            PaymentStatus::Processing,
            Actor::Provider,
            Some("payme CreateTransaction".into()),
            self.now,
        )
        .map_err(|_| PaymeError::CannotPerform)?;
        change.insert_transaction = Some(tx.clone());
        Ok((change, tx))
    }

    async fn repeat_create(&self, tx: Transaction, amount: i64) -> RpcResult {
        // §1.6 validates account and amount before looking the id up: a repeat must name the
        // transaction's own order and amount, not be answered whatever it says.
        if self.account_id()? != tx.payment_id {
            return Err(PaymeError::OrderNotFound(self.field().to_owned()));
        }
        if amount != tx.amount_minor {
            return Err(PaymeError::WrongAmount);
        }
        if tx.state != STATE_CREATED {
            return Err(PaymeError::CannotPerform);
        }
        if self.expired(&tx) {
            self.cancel_expired(tx).await?;
            return Err(PaymeError::CannotPerform);
        }
        Ok(create_answer(&tx))
    }

    fn expired(&self, tx: &Transaction) -> bool {
        timed_out(tx, self.now_ms())
    }

    /// Cancels a state-1 transaction past the 12-hour timeout (reason 4); the payment returns
    /// to pending and stays payable by a new transaction.
    /// Returns the transaction as it ended: cancelled, or as another call left it first.
    async fn cancel_expired(&self, tx: Transaction) -> Result<Transaction, PaymeError> {
        self.cancel_created(tx, REASON_TIMEOUT, "payme transaction timed out (12 h)")
            .await
    }

    async fn cancel_created(
        &self,
        mut tx: Transaction,
        reason: i64,
        why: &str,
    ) -> Result<Transaction, PaymeError> {
        for _ in 0..CAS_ATTEMPTS {
            if tx.state != STATE_CREATED {
                return Ok(tx);
            }
            let payment = self.payment_of(&tx).await?;
            let mut change = if payment.status == PaymentStatus::Processing {
                status_change(
                    &payment,
                    PaymentStatus::Pending,
                    Actor::Provider,
                    Some(why.to_owned()),
                    self.now,
                )
                .map_err(|_| PaymeError::CannotPerform)?
            } else {
                Change::default()
            };
            let update = self.tx_update(
                &tx,
                STATE_CANCELLED,
                tx.perform_time,
                Some(self.now_ms()),
                Some(reason),
            );
            change.update_transaction = Some(update.clone());
            match self.state.store.apply(&change).await {
                Ok(()) => return Ok(update.applied_to(&tx)),
                Err(StoreError::Conflict(_)) => {
                    tx = self.reread(&tx).await?;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymeError::Internal)
    }

    pub async fn perform(&self) -> RpcResult {
        let id = self.text("id")?;
        if let Some(answer) = self.perform_from_recent(id).await {
            return Ok(answer);
        }
        for _ in 0..CAS_ATTEMPTS {
            let (tx, payment) = self.transaction_with_payment(id).await?;
            match tx.state.as_str() {
                STATE_PERFORMED => return Ok(perform_answer(&tx)),
                STATE_CREATED => {}
                _ => return Err(PaymeError::CannotPerform),
            }
            if self.expired(&tx) {
                // A concurrent Perform may have committed after our read: then the transaction
                // ended performed and this is a repeat, answered like one.
                let settled = self.cancel_expired(tx).await?;
                if settled.state == STATE_PERFORMED {
                    return Ok(perform_answer(&settled));
                }
                return Err(PaymeError::CannotPerform);
            }
            if payment.status != PaymentStatus::Processing {
                // Either a concurrent Perform of this transaction just committed (the payment and
                // the transaction change together: look again) or the order really moved on.
                if self.reread(&tx).await?.version != tx.version {
                    continue;
                }
                return Err(PaymeError::CannotPerform);
            }
            let (change, performed) = self.perform_change(&tx, &payment)?;
            match self.state.store.apply(&change).await {
                Ok(()) => return Ok(perform_answer(&performed)),
                Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymeError::Internal)
    }

    /// The usual PerformTransaction, decided from this process's copies of the transaction and
    /// its order (it created the transaction moments ago). As with `create_from_recent`, it
    /// answers only when the change commits; everything else is left to `perform`.
    async fn perform_from_recent(&self, id: &str) -> Option<Value> {
        let (tx, payment) = self
            .state
            .store
            .recent_transaction_with_payment(ProviderKind::Payme, id)?;
        let happy = tx.state == STATE_CREATED
            && !self.expired(&tx)
            && payment.status == PaymentStatus::Processing;
        if !happy {
            return None;
        }
        let (change, performed) = self.perform_change(&tx, &payment).ok()?;
        self.state.store.apply(&change).await.ok()?;
        tracing::Span::current().record("payment_id", tracing::field::display(&payment.id));
        Some(perform_answer(&performed))
    }

    /// Performs a created transaction: state 2 with its perform time, the order succeeded.
    fn perform_change(
        &self,
        tx: &Transaction,
        payment: &Payment,
    ) -> Result<(Change, Transaction), PaymeError> {
        let mut change = status_change(
            payment,
            PaymentStatus::Succeeded,
            Actor::Provider,
            Some("payme PerformTransaction".into()),
            self.now,
        )
        .map_err(|_| PaymeError::CannotPerform)?;
        let update = self.tx_update(tx, STATE_PERFORMED, Some(self.now_ms()), None, None);
        let performed = update.applied_to(tx);
        change.update_transaction = Some(update);
        Ok((change, performed))
    }

    pub async fn cancel(&self) -> RpcResult {
        let id = self.text("id")?;
        let reason = self.int("reason")?;
        for _ in 0..CAS_ATTEMPTS {
            let tx = self.transaction(id).await?;
            match tx.state.as_str() {
                STATE_CANCELLED | STATE_CANCELLED_AFTER_PERFORM => return Ok(cancel_answer(&tx)),
                STATE_CREATED => {
                    let why = format!("payme CancelTransaction (reason {reason})");
                    let tx = self.cancel_created(tx, reason, &why).await?;
                    if tx.state == STATE_CANCELLED {
                        return Ok(cancel_answer(&tx));
                    }
                    // Performed meanwhile: decide again from the new state.
                    continue;
                }
                STATE_PERFORMED => {}
                _ => return Err(PaymeError::CannotPerform),
            }
            if !self.payme.settings.allow_cancel_after_perform {
                return Err(PaymeError::CannotCancel);
            }
            let payment = self.payment_of(&tx).await?;
            let mut change = if matches!(
                payment.status,
                PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
            ) {
                let why = format!("payme CancelTransaction after perform (reason {reason})");
                status_change(
                    &payment,
                    PaymentStatus::Refunded,
                    Actor::Provider,
                    Some(why),
                    self.now,
                )
                .map_err(|_| PaymeError::CannotCancel)?
            } else {
                Change::default()
            };
            let update = self.tx_update(
                &tx,
                STATE_CANCELLED_AFTER_PERFORM,
                tx.perform_time,
                Some(self.now_ms()),
                Some(reason),
            );
            change.update_transaction = Some(update.clone());
            match self.state.store.apply(&change).await {
                Ok(()) => return Ok(cancel_answer(&update.applied_to(&tx))),
                Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymeError::Internal)
    }

    pub async fn check(&self) -> RpcResult {
        let tx = self.transaction(self.text("id")?).await?;
        Ok(json!({
            "create_time": tx.create_time.unwrap_or(0),
            "perform_time": tx.perform_time.unwrap_or(0),
            "cancel_time": tx.cancel_time.unwrap_or(0),
            "transaction": tx.id.as_str(),
            "state": state_number(&tx),
            "reason": tx.reason,
        }))
    }

    pub async fn statement(&self) -> RpcResult {
        let from = self.int("from")?;
        let to = self.int("to")?;
        if from > to {
            return Err(PaymeError::BadField("from"));
        }
        let txs = self
            .state
            .store
            .list_transactions_by_provider_time(ProviderKind::Payme, from, to)
            .await?;
        let field = self.field();
        let transactions: Vec<Value> = txs
            .iter()
            .map(|tx| {
                json!({
                    "id": tx.external_id,
                    "time": tx.provider_time,
                    "amount": tx.amount_minor,
                    // As Payme sent it (cash-desk settings may add fields); rebuilt only for a
                    // row that lacks it.
                    "account": tx.data.get("account").filter(|a| a.is_object()).cloned()
                        .unwrap_or_else(|| json!({ field: tx.payment_id.as_str() })),
                    "create_time": tx.create_time.unwrap_or(0),
                    "perform_time": tx.perform_time.unwrap_or(0),
                    "cancel_time": tx.cancel_time.unwrap_or(0),
                    "transaction": tx.id.as_str(),
                    "state": state_number(tx),
                    "reason": tx.reason,
                    "receivers": Value::Null,
                })
            })
            .collect();
        Ok(json!({ "transactions": transactions }))
    }

    pub async fn change_password(&self) -> RpcResult {
        let password = self
            .params
            .get("password")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty())
            .ok_or(PaymeError::BadField("password"))?;
        let store = self.state.store.as_ref();
        if self.payme.key.is_current(store, password, self.now).await? {
            return Err(PaymeError::InsufficientPrivilege);
        }
        self.payme.key.change(store, password, self.now).await?;
        tracing::warn!("payme: cash-desk key changed by ChangePassword");
        Ok(json!({ "success": true }))
    }

    pub async fn set_fiscal_data(&self) -> RpcResult {
        let id = self.text("id")?;
        let kind = match self.params.get("type").and_then(Value::as_str) {
            Some(k @ ("PERFORM" | "CANCEL")) => k,
            _ => {
                return Err(PaymeError::InvalidParams(
                    "type must be PERFORM or CANCEL".into(),
                ))
            }
        };
        let fiscal = self
            .params
            .get("fiscal_data")
            .filter(|v| v.is_object())
            .ok_or_else(|| PaymeError::InvalidParams("fiscal_data must be an object".into()))?;
        for _ in 0..CAS_ATTEMPTS {
            let tx = self.transaction(id).await?;
            let mut update =
                self.tx_update(&tx, &tx.state, tx.perform_time, tx.cancel_time, tx.reason);
            if !update.data.is_object() {
                update.data = json!({});
            }
            update.data["fiscal"][kind] = fiscal.clone();
            match self
                .state
                .store
                .apply(&Change {
                    update_transaction: Some(update),
                    ..Change::default()
                })
                .await
            {
                Ok(()) => return Ok(json!({ "success": true })),
                Err(StoreError::Conflict(_)) => tokio::task::yield_now().await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymeError::Internal)
    }

    async fn transaction(&self, id: &str) -> Result<Transaction, PaymeError> {
        let tx = self
            .state
            .store
            .get_transaction(ProviderKind::Payme, id)
            .await?
            .ok_or(PaymeError::TransactionNotFound)?;
        tracing::Span::current().record("payment_id", tracing::field::display(&tx.payment_id));
        Ok(tx)
    }

    /// The transaction Payme names, with its payment, in one read.
    async fn transaction_with_payment(
        &self,
        id: &str,
    ) -> Result<(Transaction, Payment), PaymeError> {
        let (tx, payment) = self
            .state
            .store
            .get_transaction_with_payment(ProviderKind::Payme, id)
            .await?
            .ok_or(PaymeError::TransactionNotFound)?;
        tracing::Span::current().record("payment_id", tracing::field::display(&tx.payment_id));
        Ok((tx, payment))
    }

    async fn reread(&self, tx: &Transaction) -> Result<Transaction, PaymeError> {
        self.transaction(&tx.external_id).await
    }

    async fn payment_of(&self, tx: &Transaction) -> Result<Payment, PaymeError> {
        self.state
            .store
            .get_payment(&tx.payment_id)
            .await?
            .ok_or(PaymeError::Internal)
    }

    fn tx_update(
        &self,
        tx: &Transaction,
        state: &str,
        perform_time: Option<i64>,
        cancel_time: Option<i64>,
        reason: Option<i64>,
    ) -> TransactionUpdate {
        TransactionUpdate {
            perform_time,
            cancel_time,
            reason,
            ..TransactionUpdate::to_state(tx, state, self.now)
        }
    }
}

fn create_answer(tx: &Transaction) -> Value {
    json!({
        "create_time": tx.create_time.unwrap_or(0),
        "transaction": tx.id.as_str(),
        "state": state_number(tx),
        "receivers": Value::Null,
    })
}

fn perform_answer(tx: &Transaction) -> Value {
    json!({
        "transaction": tx.id.as_str(),
        "perform_time": tx.perform_time.unwrap_or(0),
        "state": state_number(tx),
    })
}

fn cancel_answer(tx: &Transaction) -> Value {
    json!({
        "transaction": tx.id.as_str(),
        "cancel_time": tx.cancel_time.unwrap_or(0),
        "state": state_number(tx),
    })
}
