//! The merchant REST API (Bearer API key) and the operational endpoints.

pub mod auth;
pub mod client_ip;
pub mod extract;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod payments;
pub mod refunds;
pub mod resource;
pub mod text;
pub mod webhooks;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(payments::create).get(payments::list))
        .route("/v1/payments/{id}", get(payments::get_one))
        .route("/v1/payments/{id}/cancel", post(payments::cancel))
        .route("/v1/payments/{id}/capture", post(payments::capture))
        .route("/v1/payments/{id}/refunds", post(refunds::create))
        .route("/v1/payments/{id}/events", get(payments::events))
        .route("/v1/events", get(webhooks::events))
        .route("/v1/webhooks/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/deliveries/{id}/retry", post(webhooks::retry))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::serve))
}
