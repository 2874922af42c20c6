//! Liveness, readiness and metrics.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::json;

use super::auth::{bearer_token, digest, same_secret};

use crate::domain::PaymentStatus;
use crate::error::ApiError;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready"), (status = 503, body = crate::error::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await.map_err(|e| ApiError {
        source: Some(e.into()),
        ..ApiError::unavailable("database_unavailable", "the database is not reachable")
    })?;
    Ok(Json(json!({ "status": "ready" })))
}

/// Prometheus text format: request counts and latencies per route, payments by status.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain"),
    (status = 401, description = "server.metrics_token is set and not given", body = crate::error::Problem)))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = state.settings.server.metrics_token.expose_secret();
    if !token.is_empty() {
        let given = bearer_token(&headers).unwrap_or("");
        // Fixed-size digests compared in constant time, as for the merchant's API keys.
        if !same_secret(&digest(given), &digest(token)) {
            return ApiError::unauthorized().into_response();
        }
    }
    let mut out = state.metrics.render();
    // Counted from the database at scrape time, so every instance reports the same truth.
    match state.store.count_payments_by_status().await {
        Ok(counts) => {
            out.push_str(
                "# HELP tolov_payments Payments by current status.\n# TYPE tolov_payments gauge\n",
            );
            for st in PaymentStatus::ALL {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == st)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                let _ = writeln!(out, "tolov_payments{{status=\"{st}\"}} {n}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "payments by status unavailable for /metrics"),
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
