//! `/v1/events` (every payment event, in order) and `/v1/webhooks/deliveries` (the outbox as
//! the merchant sees it: what was delivered, what is retrying, what is dead, and a manual retry).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::MerchantAuth;
use super::extract::{ApiPath, ApiQuery};
use super::idempotency;
use crate::domain::{DeliveryStatus, EventPosition, OutboxMessage, PaymentEvent};
use crate::error::ApiError;
use crate::state::AppState;

fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// 1–100, default 20.
    pub limit: Option<u32>,
    /// Position to continue after: `next_after` of the previous page, as given.
    pub after: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// pending | delivered | dead
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<i64>,
}

fn limit(l: Option<u32>) -> Result<u32, ApiError> {
    let l = l.unwrap_or(20);
    if !(1..=100).contains(&l) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 100",
        ));
    }
    Ok(l)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub data: Vec<PaymentEvent>,
    pub has_more: bool,
    /// The cursor for the next page (`after`); `null` when this page is empty (poll again with
    /// the same `after`).
    pub next_after: Option<String>,
}

/// Every payment event, by the transaction that wrote it. An event appears once every
/// transaction that started writing before it has ended, so a poller following `next_after`
/// never misses one.
#[utoipa::path(get, path = "/v1/events", tag = "webhooks", params(EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = limit(p.limit)?;
    let after = match p.after.as_deref() {
        None => EventPosition::default(),
        Some(a) => a.parse().map_err(|()| {
            ApiError::bad_request(
                "invalid_query",
                "after must be the next_after of an earlier page",
            )
        })?,
    };
    let mut rows = state.store.list_all_events(after, limit + 1).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_after = rows.last().map(|e| e.position.to_string());
    Ok(Json(EventPage {
        data: rows,
        has_more,
        next_after,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The outbox position; use it to retry.
    pub id: i64,
    /// Sent as `webhook-id`; stays the same across retries.
    pub event_id: String,
    pub event_type: String,
    pub payment_id: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_http_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&OutboxMessage> for Delivery {
    fn from(m: &OutboxMessage) -> Self {
        Delivery {
            id: m.seq,
            event_id: m.event_id.clone(),
            event_type: m.event_type.clone(),
            payment_id: m.payment_id.to_string(),
            status: m.status,
            attempts: m.attempts,
            next_attempt_at: (m.status == DeliveryStatus::Pending).then(|| ts(m.next_attempt_at)),
            last_http_status: m.last_status,
            last_error: m.last_error.clone(),
            created_at: ts(m.created_at),
            updated_at: ts(m.updated_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<Delivery>,
    pub has_more: bool,
    pub next_after: Option<i64>,
}

/// Webhook deliveries, oldest first; `status=dead` lists what needs attention.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "webhooks", params(DeliveryParams),
    responses((status = 200, body = DeliveryPage), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiQuery(p): ApiQuery<DeliveryParams>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let limit = limit(p.limit)?;
    let status = p
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "status must be pending, delivered or dead")
            })
        })
        .transpose()?;
    let mut rows = state
        .store
        .list_outbox(status, p.after.unwrap_or(0), limit + 1)
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_after = rows.last().map(|m| m.seq);
    Ok(Json(DeliveryPage {
        data: rows.iter().map(Delivery::from).collect(),
        has_more,
        next_after,
    }))
}

/// Sends a dead delivery again (now, with the same `webhook-id`).
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/retry", tag = "webhooks",
    params(("id" = i64, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Delivery), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let seq: i64 = id.parse().map_err(|_| ApiError::not_found("delivery"))?;
    let hash = idempotency::request_hash(
        &format!("POST /v1/webhooks/deliveries/{seq}/retry"),
        &serde_json::Value::Null,
    );
    idempotency::run_once(&state, &auth.scope, key, hash, move |state| async move {
        let current = state
            .store
            .get_outbox(seq)
            .await?
            .ok_or_else(|| ApiError::not_found("delivery"))?;
        if !state.store.retry_outbox(seq, state.now()).await? {
            return Err(ApiError::conflict(
                "delivery_not_dead",
                format!(
                    "only dead deliveries can be retried; this one is {}",
                    current.status.as_str()
                ),
            ));
        }
        let updated = state
            .store
            .get_outbox(seq)
            .await?
            .ok_or_else(|| ApiError::not_found("delivery"))?;
        let body = serde_json::to_value(Delivery::from(&updated))
            .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        Ok((StatusCode::OK, body))
    })
    .await
}
