//! Browser-facing side of a payment: the client secret that authorises the payer's browser,
//! the hosted page at `/pay/{id}` and `GET /v1/checkout/{id}`.

mod labels;
pub mod page;

use crate::api::auth::same_secret;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::domain::{Payment, PaymentId};
use crate::state::AppState;

pub use page::{checkout_view, hosted_page, CheckoutView};

pub fn router() -> Router<AppState> {
    Router::new().route("/pay/{id}", get(hosted_page)).route(
        "/v1/checkout/{id}",
        get(checkout_view).options(preflight).layer(cors()),
    )
}

/// Routes the browser's preflight `OPTIONS` to [`cors`], which answers it.
pub async fn preflight() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// The checkout routes answer browsers on any origin (a merchant's own checkout page calls
/// them directly): they are authorised by the `X-Client-Secret` header alone, never by
/// cookies, so no credentials are allowed and no other header is needed. The merchant API is
/// not opened this way.
pub fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            HeaderName::from_static("x-client-secret"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The payer's credential for one payment, derived rather than stored: HMAC of the payment id
/// under `api.client_secret_key`. An idempotent replay can hand it out again, and the database
/// holds only its hash.
pub fn client_secret(settings: &Settings, id: &PaymentId) -> String {
    let key = settings.api.client_secret_key.expose_secret().as_bytes();
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(id.as_str().as_bytes());
    format!(
        "{}_secret_{}",
        id,
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

pub fn client_secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time check of a presented secret against the stored hash.
pub fn verify_client_secret(payment: &Payment, presented: &str) -> bool {
    let hash = client_secret_hash(presented);
    same_secret(hash.as_bytes(), payment.client_secret_hash.as_bytes())
}

pub fn checkout_url(settings: &Settings, id: &PaymentId) -> String {
    format!(
        "{}/pay/{}",
        settings.server.public_url.trim_end_matches('/'),
        id
    )
}
