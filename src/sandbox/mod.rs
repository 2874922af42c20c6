//! Sandbox mode only: stand-ins for the providers, so every flow works offline. Not mounted in
//! production mode.

pub mod atmos;
pub mod click;
pub mod epay;
pub mod payme;

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(payme::router())
        .merge(click::router())
        .merge(atmos::router())
        .merge(epay::router())
}
