//! Liveness, readiness and metrics.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

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
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
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
