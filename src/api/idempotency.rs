//! `Idempotency-Key` on merchant POSTs: the same key with the same body replays the first
//! response (status and body); the same key with another body is refused; a key whose first
//! request is still running answers 409 (cancel, capture, refunds, delivery retries:
//! [`run_once`]). `POST /v1/payments` stores its key with the payment in one transaction
//! instead, so a payment never exists without its key: duplicates racing the first each start
//! the payment at the provider (an unused ATMOS draft or ePay token at most, no money) and all
//! answer with the payment stored first.

use std::future::Future;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::domain::IdempotencyRecord;
use crate::error::ApiError;
use crate::state::AppState;

pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Reads and checks the header: 1–255 visible ASCII characters.
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Fingerprint of a request: method, route and the body as parsed JSON (so whitespace and key
/// order do not matter, values do).
pub fn request_hash(method_and_path: &str, body: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(method_and_path.as_bytes());
    h.update(b"\n");
    h.update(body.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// What to do with a key that exists already.
pub fn check_existing(
    existing: &IdempotencyRecord,
    request_hash: &str,
) -> Result<Option<(u16, String)>, ApiError> {
    if existing.request_hash != request_hash {
        return Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    match (existing.response_status, &existing.response_body) {
        (Some(status), Some(body)) => Ok(Some((status, body.clone()))),
        _ => Err(ApiError::conflict(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )),
    }
}

pub fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        crate::error::PROBLEM_JSON
    };
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    res.headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    res
}

/// Runs `op` at most once per (scope, key). Successful and client-error outcomes are stored
/// and replayed, except a lost race (409 `concurrent_update`, which only follows a provider's
/// refusal, so nothing happened); that and our own failures (5xx) free the key so the merchant
/// can retry, except those marked [`ApiError::replay_on_retry`] (a provider that may have
/// acted).
///
/// With a key, `op` runs in its own task: a caller that hangs up, or the server-wide request
/// timeout, ends the wait for the answer but not the work, which finishes and records its
/// answer for the key (otherwise the key would stay claimed, "in use", for good).
pub async fn run_once<F, Fut>(
    state: &AppState,
    scope: &str,
    key: Option<String>,
    request_hash: String,
    op: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(AppState) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>> + Send + 'static,
{
    let Some(key) = key else {
        let (status, body) = op(state.clone()).await?;
        return Ok((status, axum::Json(body)).into_response());
    };
    let record = IdempotencyRecord {
        scope: scope.to_owned(),
        key: key.clone(),
        request_hash: request_hash.clone(),
        payment_id: None,
        response_status: None,
        response_body: None,
        created_at: state.now(),
    };
    if !state.store.claim_idempotency_key(&record).await? {
        let existing = state
            .store
            .get_idempotency_key(scope, &key)
            .await?
            .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry shortly"))?;
        let (status, body) = check_existing(&existing, &request_hash)?
            .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry shortly"))?;
        return Ok(replay(status, body));
    }
    let work = op(state.clone());
    let st = state.clone();
    let (task_scope, task_key) = (scope.to_owned(), key.clone());
    // Its deadlines (answer_in_time) still count from the request's arrival.
    let task = tokio::spawn(
        crate::telemetry::with_arrival(async move {
            let outcome = work.await;
            record_outcome(&st, &task_scope, &task_key, outcome).await
        })
        .instrument(tracing::Span::current()),
    );
    match task.await {
        Ok(answer) => answer,
        Err(panicked) => {
            free(state, scope, &key).await;
            Err(ApiError::internal(panicked))
        }
    }
}

/// Stores `outcome` as the key's answer, or frees the key for a retry (see [`run_once`]).
async fn record_outcome(
    state: &AppState,
    scope: &str,
    key: &str,
    outcome: Result<(StatusCode, serde_json::Value), ApiError>,
) -> Result<Response, ApiError> {
    match outcome {
        Ok((status, body)) => {
            keep(state, scope, key, status, &body.to_string()).await;
            Ok((status, axum::Json(body)).into_response())
        }
        // A lost race ("retry shortly") is no answer to keep: the retry must run again.
        Err(e)
            if (e.status.is_client_error() && e.code != "concurrent_update")
                || e.replay_on_retry =>
        {
            let text = serde_json::to_string(&e.problem()).unwrap_or_default();
            keep(state, scope, key, e.status, &text).await;
            Err(e)
        }
        Err(e) => {
            free(state, scope, key).await;
            Err(e)
        }
    }
}

/// Stores the answer for the key, trying again briefly if the database refuses. If it still
/// cannot, the answer is given anyway: the request took effect, so a 5xx would tell the merchant
/// otherwise, and the key stays taken (`409 idempotency_key_in_use`) rather than freed, so a
/// retry cannot make a second refund.
async fn keep(state: &AppState, scope: &str, key: &str, status: StatusCode, body: &str) {
    for pause_ms in [50, 250, 0] {
        match state
            .store
            .complete_idempotency_key(scope, key, status.as_u16(), body)
            .await
        {
            Ok(()) => return,
            Err(e) if pause_ms == 0 => {
                tracing::error!(error = %e, "could not keep the answer for its idempotency key; the key stays taken");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await,
        }
    }
}

async fn free(state: &AppState, scope: &str, key: &str) {
    if let Err(del) = state.store.delete_idempotency_key(scope, key).await {
        tracing::error!(error = %del, "could not free idempotency key after a failure");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_formatting_but_not_values() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":"x"}"#).expect("json");
        let b: serde_json::Value = serde_json::from_str(r#"{ "b" : "x", "a" : 1 }"#).expect("json");
        assert_eq!(
            request_hash("POST /v1/payments", &a),
            request_hash("POST /v1/payments", &b)
        );
        assert_ne!(
            request_hash("POST /v1/payments", &a),
            request_hash("POST /v1/payments", &json!({"a":2,"b":"x"}))
        );
        assert_ne!(
            request_hash("POST /v1/payments", &a),
            request_hash("POST /v1/other", &a)
        );
    }

    #[test]
    fn key_header_is_validated() {
        let mut h = HeaderMap::new();
        assert_eq!(key_from_headers(&h).ok(), Some(None));
        h.insert(HEADER, HeaderValue::from_static("order-42"));
        assert_eq!(key_from_headers(&h).ok(), Some(Some("order-42".to_owned())));
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert!(key_from_headers(&h).is_err());
        h.insert(
            HEADER,
            HeaderValue::from_str(&"k".repeat(256)).expect("header"),
        );
        assert!(key_from_headers(&h).is_err());
    }
}
