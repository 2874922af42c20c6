//! Records of the data model (design.md "Data model") as the rest of the code sees them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{EventId, PaymentId, RefundId, TransactionId};
use super::status::PaymentStatus;
use crate::money::{Currency, Money};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Payme,
    Click,
    Atmos,
    Epay,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Payme,
        ProviderKind::Click,
        ProviderKind::Atmos,
        ProviderKind::Epay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Payme => "payme",
            ProviderKind::Click => "click",
            ProviderKind::Atmos => "atmos",
            ProviderKind::Epay => "epay",
        }
    }

    /// Whether a `pending` payment may already be paid without tolov having heard of it: the
    /// payer pays on the provider's own page and tolov learns of it from a callback that can
    /// come late or not at all (ePay's widget and postLink, B5). Expiry then asks the provider
    /// before expiring it.
    pub fn pending_may_be_paid(self) -> bool {
        self == ProviderKind::Epay
    }

    /// The only currency each provider settles in.
    pub fn currency(self) -> Currency {
        match self {
            ProviderKind::Payme | ProviderKind::Click | ProviderKind::Atmos => Currency::Uzs,
            ProviderKind::Epay => Currency::Kzt,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}`")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Uz,
    #[default]
    Ru,
    En,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Uz => "uz",
            Language::Ru => "ru",
            Language::En => "en",
        }
    }
}

impl FromStr for Language {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uz" => Ok(Language::Uz),
            "ru" => Ok(Language::Ru),
            "en" => Ok(Language::En),
            _ => Err(()),
        }
    }
}

/// Who caused a change; recorded on every event so the audit trail explains itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Merchant,
    Provider,
    Payer,
    System,
    Reconciliation,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Merchant => "merchant",
            Actor::Provider => "provider",
            Actor::Payer => "payer",
            Actor::System => "system",
            Actor::Reconciliation => "reconciliation",
        }
    }

    pub fn parse(s: &str) -> Actor {
        match s {
            "merchant" => Actor::Merchant,
            "provider" => Actor::Provider,
            "payer" => Actor::Payer,
            "reconciliation" => Actor::Reconciliation,
            _ => Actor::System,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: String,
    pub provider: ProviderKind,
    pub amount: Money,
    pub status: PaymentStatus,
    pub description: Option<String>,
    pub return_url: Option<String>,
    pub language: Language,
    pub metadata: serde_json::Value,
    pub provider_data: serde_json::Value,
    pub client_secret_hash: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every update; the compare-and-set guard of [`PaymentUpdate`].
    pub version: i64,
}

/// A payment to insert. Built by the API after validation.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub id: PaymentId,
    pub order_id: String,
    pub provider: ProviderKind,
    pub amount: Money,
    pub description: Option<String>,
    pub return_url: Option<String>,
    pub language: Language,
    pub metadata: serde_json::Value,
    pub provider_data: serde_json::Value,
    pub client_secret_hash: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Fiscal receipt lines for providers that take them (Payme keeps them in `provider_data`);
    /// not a column of its own.
    pub receipt: Option<super::Receipt>,
}

/// An append-only audit row. Every status change writes one in the same DB transaction.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PaymentEvent {
    pub id: String,
    #[schema(value_type = String)]
    pub payment_id: PaymentId,
    #[serde(rename = "type")]
    pub kind: String,
    pub from_status: Option<PaymentStatus>,
    pub to_status: Option<PaymentStatus>,
    pub actor: Actor,
    pub reason: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// Where the event stands in `GET /v1/events` (see [`EventPosition`]).
    #[serde(skip)]
    pub position: EventPosition,
}

/// An event's place in the list of every event: the writing transaction (`tx`, always 0 on
/// SQLite) and then the event number (`seq`). Event numbers are drawn when an event is written,
/// so on PostgreSQL two changes can commit in the other order; ordered by transaction first, and
/// listed only once every earlier transaction has finished, no event ever lands behind a cursor
/// already handed out. Written `<tx>.<seq>` as the `after` cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    pub tx: i64,
    pub seq: i64,
}

impl std::fmt::Display for EventPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.tx, self.seq)
    }
}

impl std::str::FromStr for EventPosition {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let number = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<i64>().ok())
                .flatten()
                .ok_or(())
        };
        let (tx, seq) = s.split_once('.').ok_or(())?;
        Ok(EventPosition {
            tx: number(tx)?,
            seq: number(seq)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub payment_id: PaymentId,
    pub kind: String,
    pub from_status: Option<PaymentStatus>,
    pub to_status: Option<PaymentStatus>,
    pub actor: Actor,
    pub reason: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl NewEvent {
    pub fn created(p: &NewPayment, actor: Actor) -> Self {
        NewEvent {
            id: EventId::generate(),
            payment_id: p.id.clone(),
            kind: "payment.created".to_owned(),
            from_status: None,
            to_status: Some(PaymentStatus::Pending),
            actor,
            reason: None,
            data: serde_json::json!({}),
            created_at: p.created_at,
        }
    }

    /// The event of a status change; its type names the status reached (`payment.succeeded`).
    pub fn status_changed(
        payment_id: &PaymentId,
        from: PaymentStatus,
        to: PaymentStatus,
        actor: Actor,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        NewEvent {
            id: EventId::generate(),
            payment_id: payment_id.clone(),
            kind: format!("payment.{}", to.as_str()),
            from_status: Some(from),
            to_status: Some(to),
            actor,
            reason,
            data: serde_json::json!({}),
            created_at: now,
        }
    }
}

/// One provider attempt (a Payme transaction, a Click click_trans_id, an Atmos transaction,
/// an ePay invoice). `state` is the provider's own state, kept verbatim as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: TransactionId,
    pub payment_id: PaymentId,
    pub provider: ProviderKind,
    pub external_id: String,
    pub state: String,
    pub amount_minor: i64,
    pub provider_time: Option<i64>,
    pub create_time: Option<i64>,
    pub perform_time: Option<i64>,
    pub cancel_time: Option<i64>,
    pub reason: Option<i64>,
    pub masked_card: Option<String>,
    pub raw_status: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Transaction {
    /// A provider attempt on `payment` as a provider creates it: for the payment's amount,
    /// created now, no outcome yet. Providers fill in what their protocol adds (Payme's own
    /// `time`, the card an ATMOS code went to).
    pub fn new(
        payment: &Payment,
        provider: ProviderKind,
        external_id: String,
        state: &str,
        data: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Self {
        Transaction {
            id: TransactionId::generate(),
            payment_id: payment.id.clone(),
            provider,
            external_id,
            state: state.to_owned(),
            amount_minor: payment.amount.minor(),
            provider_time: None,
            create_time: Some(now.timestamp_millis()),
            perform_time: None,
            cancel_time: None,
            reason: None,
            masked_card: None,
            raw_status: None,
            data,
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }
}

/// Compare-and-set update of a payment's status (and optionally its provider data).
#[derive(Debug, Clone)]
pub struct PaymentUpdate {
    pub id: PaymentId,
    pub expected_version: i64,
    pub status: PaymentStatus,
    pub provider_data: Option<serde_json::Value>,
    pub now: DateTime<Utc>,
}

impl PaymentUpdate {
    /// An update of `p` that keeps its status: new provider data (`None`: unchanged), guarded
    /// on `p`'s version like every change.
    pub fn keeping_status(
        p: &Payment,
        provider_data: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Self {
        PaymentUpdate {
            id: p.id.clone(),
            expected_version: p.version,
            status: p.status,
            provider_data,
            now,
        }
    }

    /// The row as the store leaves it after applying this update to `p` (at the expected version).
    pub fn applied_to(&self, p: &Payment) -> Payment {
        Payment {
            status: self.status,
            provider_data: self
                .provider_data
                .clone()
                .unwrap_or_else(|| p.provider_data.clone()),
            updated_at: truncate_to_millis(self.now),
            version: p.version + 1,
            ..p.clone()
        }
    }
}

/// Compare-and-set update of a provider transaction: applied only if `expected_version` holds.
#[derive(Debug, Clone)]
pub struct TransactionUpdate {
    pub id: TransactionId,
    pub expected_version: i64,
    pub state: String,
    pub perform_time: Option<i64>,
    pub cancel_time: Option<i64>,
    pub reason: Option<i64>,
    pub masked_card: Option<String>,
    pub raw_status: Option<String>,
    pub data: serde_json::Value,
    pub now: DateTime<Utc>,
}

impl TransactionUpdate {
    /// `t` moved to `state` with everything else as stored, guarded on `t`'s version; callers
    /// replace the fields their change sets.
    pub fn to_state(t: &Transaction, state: &str, now: DateTime<Utc>) -> Self {
        TransactionUpdate {
            id: t.id.clone(),
            expected_version: t.version,
            state: state.to_owned(),
            perform_time: t.perform_time,
            cancel_time: t.cancel_time,
            reason: t.reason,
            masked_card: t.masked_card.clone(),
            raw_status: t.raw_status.clone(),
            data: t.data.clone(),
            now,
        }
    }

    /// The row as the store leaves it after applying this update to `t` (at the expected version).
    pub fn applied_to(&self, t: &Transaction) -> Transaction {
        Transaction {
            state: self.state.clone(),
            perform_time: self.perform_time,
            cancel_time: self.cancel_time,
            reason: self.reason,
            masked_card: self.masked_card.clone(),
            raw_status: self.raw_status.clone(),
            data: self.data.clone(),
            updated_at: truncate_to_millis(self.now),
            version: t.version + 1,
            ..t.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(RefundStatus::Pending),
            "succeeded" => Some(RefundStatus::Succeeded),
            "failed" => Some(RefundStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub amount_minor: i64,
    pub status: RefundStatus,
    pub external_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row for the merchant-webhook outbox, written in the same DB transaction as its cause.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    pub event_id: EventId,
    pub payment_id: PaymentId,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Everything one state change writes, applied atomically by `Store::apply`: either all of it
/// lands, or (on a compare-and-set miss or a unique violation) none of it does.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub payment: Option<PaymentUpdate>,
    pub insert_transaction: Option<Transaction>,
    pub update_transaction: Option<TransactionUpdate>,
    /// Inserted only if the payment is paid and the refunds that are not failed, this one
    /// included, stay within its amount (checked under the payment's row lock).
    pub insert_refund: Option<Refund>,
    pub update_refund: Option<(RefundId, RefundStatus, Option<String>, DateTime<Utc>)>,
    pub events: Vec<NewEvent>,
    pub outbox: Vec<NewOutboxMessage>,
    /// Ask the provider about this (closed) payment again at a time (see [`Recheck`]); an
    /// earlier one already scheduled stays.
    pub recheck: Option<NewRecheck>,
}

/// A payment to ask its provider about again once it is closed: the provider may still move
/// money for it without telling tolov (a payer paying in ePay's widget after a cancel with the
/// postLink lost, an ATMOS debit after a cancel whose reversal failed). Reconciliation settles
/// what the provider says when `due_at` comes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecheck {
    pub payment_id: PaymentId,
    pub due_at: DateTime<Utc>,
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// How often a closed payment's provider is asked again (see [`Recheck`]), and how long a
/// worker holds a due recheck while it asks.
pub const RECHECK_PACE: chrono::Duration = chrono::Duration::minutes(10);

impl NewRecheck {
    /// A recheck one pace from `now` (a provider call that should be tried again).
    pub fn soon(payment_id: &PaymentId, reason: &str, now: DateTime<Utc>) -> Self {
        NewRecheck {
            payment_id: payment_id.clone(),
            due_at: now + RECHECK_PACE,
            reason: reason.to_owned(),
            now,
        }
    }
}

/// A scheduled [`NewRecheck`] as stored; `updated_at` identifies this version of it, so a
/// worker finishes or postpones only the one it read.
#[derive(Debug, Clone, PartialEq)]
pub struct Recheck {
    pub payment_id: PaymentId,
    pub due_at: DateTime<Utc>,
    pub attempts: i64,
    pub reason: String,
    pub updated_at: DateTime<Utc>,
}

/// Filters and cursor of `GET /v1/payments`.
#[derive(Debug, Clone, Default)]
pub struct PaymentQuery {
    pub order_id: Option<String>,
    pub status: Option<PaymentStatus>,
    pub provider: Option<ProviderKind>,
    /// Return payments strictly older (smaller id) than this one.
    pub starting_after: Option<PaymentId>,
    pub limit: u32,
}

/// What an `Idempotency-Key` remembers: the request's fingerprint, the payment it created,
/// and (once the handler finished) the exact response to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    pub payment_id: Option<PaymentId>,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Payment {
    /// The payment exactly as `Store::create_payment` stores it.
    pub fn from_new(p: &NewPayment) -> Payment {
        Payment {
            id: p.id.clone(),
            order_id: p.order_id.clone(),
            provider: p.provider,
            amount: p.amount,
            status: PaymentStatus::Pending,
            description: p.description.clone(),
            return_url: p.return_url.clone(),
            language: p.language,
            metadata: p.metadata.clone(),
            provider_data: p.provider_data.clone(),
            client_secret_hash: p.client_secret_hash.clone(),
            expires_at: p.expires_at,
            created_at: p.created_at,
            updated_at: p.created_at,
            version: 0,
        }
    }
}

/// Storage keeps milliseconds; values created in memory are cut to match, so what a handler
/// returns equals what a later read returns.
pub fn truncate_to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// A merchant notification in the outbox, with its delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub seq: i64,
    pub event_id: String,
    pub payment_id: PaymentId,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    /// While set and in the future, one dispatcher owns the row (its claim token).
    pub locked_until: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How one delivery attempt ended, as the dispatcher records it.
#[derive(Debug, Clone)]
pub struct DeliveryResult {
    pub seq: i64,
    /// The claim this result belongs to; a result from a lost claim is not recorded.
    pub claimed_until: i64,
    pub status: DeliveryStatus,
    pub next_attempt_at: DateTime<Utc>,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub now: DateTime<Utc>,
}
