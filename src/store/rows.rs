//! Row shapes as both backends return them (plain integers and text), and their checked
//! conversion into domain records. Anything that does not parse is `StoreError::Corrupt`.

use super::{from_millis, StoreError};
use crate::domain::{
    Actor, DeliveryStatus, EventPosition, IdempotencyRecord, OutboxMessage, Payment, PaymentEvent,
    PaymentId, ProviderKind, Recheck, Refund, RefundId, RefundStatus, Transaction, TransactionId,
};
use crate::money::{Currency, Money};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

fn json(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|_| corrupt("json", text))
}

/// A row struct whose field list is also its SQL column list: declares the struct (decoded by
/// column name), `COLUMNS` (the names in order, for `SELECT`) and `read_at`, which reads the
/// same fields by position from a joined row where the columns of two tables share names.
macro_rules! row_with_columns {
    ($row_ty:ident { $first:ident: $first_ty:ty $(, $field:ident: $ty:ty)* $(,)? }) => {
        #[derive(sqlx::FromRow)]
        pub(crate) struct $row_ty {
            $first: $first_ty,
            $($field: $ty),*
        }

        impl $row_ty {
            pub(crate) const COLUMNS: &'static str =
                concat!(stringify!($first) $(, ", ", stringify!($field))*);
            pub(crate) const COLUMN_COUNT: usize = [stringify!($first) $(, stringify!($field))*].len();

            /// The columns from `at` on; a NULL first column (the id) means the LEFT JOIN found
            /// no row: `None`.
            pub(crate) fn read_at<'r, R>(row: &'r R, at: usize) -> Result<Option<Self>, sqlx::Error>
            where
                R: sqlx::Row,
                usize: sqlx::ColumnIndex<R>,
                String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
                i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            {
                if row.try_get::<Option<String>, _>(at)?.is_none() {
                    return Ok(None);
                }
                let mut i = at;
                let mut next = || {
                    i += 1;
                    i - 1
                };
                Ok(Some($row_ty {
                    $first: row.try_get(next())?,
                    $($field: row.try_get(next())?),*
                }))
            }
        }
    };
}

row_with_columns!(PaymentRow {
    id: String,
    order_id: String,
    provider: String,
    amount_minor: i64,
    currency: String,
    status: String,
    description: Option<String>,
    return_url: Option<String>,
    language: String,
    metadata: String,
    provider_data: String,
    client_secret_hash: String,
    expires_at: i64,
    created_at: i64,
    updated_at: i64,
    version: i64,
});

impl TryFrom<PaymentRow> for Payment {
    type Error = StoreError;
    fn try_from(r: PaymentRow) -> Result<Self, StoreError> {
        let currency: Currency = r
            .currency
            .parse()
            .map_err(|_| corrupt("currency", &r.currency))?;
        Ok(Payment {
            amount: Money::from_minor(r.amount_minor, currency)
                .map_err(|_| corrupt("amount", &r.amount_minor.to_string()))?,
            provider: r
                .provider
                .parse()
                .map_err(|_| corrupt("provider", &r.provider))?,
            status: r.status.parse().map_err(|_| corrupt("status", &r.status))?,
            language: r
                .language
                .parse()
                .map_err(|_| corrupt("language", &r.language))?,
            metadata: json(&r.metadata)?,
            provider_data: json(&r.provider_data)?,
            expires_at: from_millis(r.expires_at)?,
            created_at: from_millis(r.created_at)?,
            updated_at: from_millis(r.updated_at)?,
            id: PaymentId::from_trusted(r.id),
            order_id: r.order_id,
            description: r.description,
            return_url: r.return_url,
            client_secret_hash: r.client_secret_hash,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    tx: i64,
    seq: i64,
    id: String,
    payment_id: String,
    kind: String,
    from_status: Option<String>,
    to_status: Option<String>,
    actor: String,
    reason: Option<String>,
    data: String,
    created_at: i64,
}

impl TryFrom<EventRow> for PaymentEvent {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        let status = |s: Option<String>| {
            s.map(|s| s.parse().map_err(|_| corrupt("status", &s)))
                .transpose()
        };
        Ok(PaymentEvent {
            from_status: status(r.from_status)?,
            to_status: status(r.to_status)?,
            actor: Actor::parse(&r.actor),
            data: json(&r.data)?,
            created_at: from_millis(r.created_at)?,
            position: EventPosition {
                tx: r.tx,
                seq: r.seq,
            },
            id: r.id,
            payment_id: PaymentId::from_trusted(r.payment_id),
            kind: r.kind,
            reason: r.reason,
        })
    }
}

row_with_columns!(TransactionRow {
    id: String,
    payment_id: String,
    provider: String,
    external_id: String,
    state: String,
    amount_minor: i64,
    provider_time: Option<i64>,
    create_time: Option<i64>,
    perform_time: Option<i64>,
    cancel_time: Option<i64>,
    reason: Option<i64>,
    masked_card: Option<String>,
    raw_status: Option<String>,
    data: String,
    created_at: i64,
    updated_at: i64,
    version: i64,
});

impl TryFrom<TransactionRow> for Transaction {
    type Error = StoreError;
    fn try_from(r: TransactionRow) -> Result<Self, StoreError> {
        let provider: ProviderKind = r
            .provider
            .parse()
            .map_err(|_| corrupt("provider", &r.provider))?;
        Ok(Transaction {
            provider,
            data: json(&r.data)?,
            created_at: from_millis(r.created_at)?,
            updated_at: from_millis(r.updated_at)?,
            id: TransactionId::from_trusted(r.id),
            payment_id: PaymentId::from_trusted(r.payment_id),
            external_id: r.external_id,
            state: r.state,
            amount_minor: r.amount_minor,
            provider_time: r.provider_time,
            create_time: r.create_time,
            perform_time: r.perform_time,
            cancel_time: r.cancel_time,
            reason: r.reason,
            masked_card: r.masked_card,
            raw_status: r.raw_status,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RecheckRow {
    payment_id: String,
    due_at: i64,
    attempts: i64,
    reason: String,
    updated_at: i64,
}

impl TryFrom<RecheckRow> for Recheck {
    type Error = StoreError;
    fn try_from(r: RecheckRow) -> Result<Self, StoreError> {
        Ok(Recheck {
            payment_id: PaymentId::from_trusted(r.payment_id),
            due_at: from_millis(r.due_at)?,
            attempts: r.attempts,
            reason: r.reason,
            updated_at: from_millis(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefundRow {
    id: String,
    payment_id: String,
    amount_minor: i64,
    status: String,
    external_id: Option<String>,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<RefundRow> for Refund {
    type Error = StoreError;
    fn try_from(r: RefundRow) -> Result<Self, StoreError> {
        Ok(Refund {
            status: RefundStatus::parse(&r.status)
                .ok_or_else(|| corrupt("refund status", &r.status))?,
            created_at: from_millis(r.created_at)?,
            updated_at: from_millis(r.updated_at)?,
            id: RefundId::from_trusted(r.id),
            payment_id: PaymentId::from_trusted(r.payment_id),
            amount_minor: r.amount_minor,
            external_id: r.external_id,
            reason: r.reason,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct IdempotencyRow {
    scope: String,
    key: String,
    request_hash: String,
    payment_id: Option<String>,
    response_status: Option<i64>,
    response_body: Option<String>,
    created_at: i64,
}

impl TryFrom<IdempotencyRow> for IdempotencyRecord {
    type Error = StoreError;
    fn try_from(r: IdempotencyRow) -> Result<Self, StoreError> {
        let response_status = r
            .response_status
            .map(|s| u16::try_from(s).map_err(|_| corrupt("response status", &s.to_string())))
            .transpose()?;
        Ok(IdempotencyRecord {
            response_status,
            created_at: from_millis(r.created_at)?,
            payment_id: r.payment_id.map(PaymentId::from_trusted),
            scope: r.scope,
            key: r.key,
            request_hash: r.request_hash,
            response_body: r.response_body,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    seq: i64,
    event_id: String,
    payment_id: String,
    event_type: String,
    payload: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    locked_until: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OutboxRow> for OutboxMessage {
    type Error = StoreError;
    fn try_from(r: OutboxRow) -> Result<Self, StoreError> {
        Ok(OutboxMessage {
            status: DeliveryStatus::parse(&r.status)
                .ok_or_else(|| corrupt("delivery status", &r.status))?,
            payload: json(&r.payload)?,
            next_attempt_at: from_millis(r.next_attempt_at)?,
            created_at: from_millis(r.created_at)?,
            updated_at: from_millis(r.updated_at)?,
            payment_id: PaymentId::from_trusted(r.payment_id),
            seq: r.seq,
            event_id: r.event_id,
            event_type: r.event_type,
            attempts: r.attempts,
            locked_until: r.locked_until,
            last_status: r.last_status,
            last_error: r.last_error,
        })
    }
}
