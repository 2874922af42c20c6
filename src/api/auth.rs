//! Merchant API authentication: `Authorization: Bearer <key>` against the configured keys.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated merchant request. `scope` names the key (not the key itself) so
/// idempotency keys of different API keys never collide.
#[derive(Debug, Clone)]
pub struct MerchantAuth {
    pub scope: String,
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares a presented secret (signature, token, hash) with the expected one in constant
/// time; different lengths are unequal.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    bool::from(given.ct_eq(expected))
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 §11.1).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for MerchantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = bearer_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        // Comparing fixed-size digests in constant time hides both content and length, and
        // every configured key is checked so timing does not reveal which one matched.
        let given_digest = digest(given);
        let mut matched = subtle::Choice::from(0u8);
        for d in state.api_key_digests.iter() {
            matched |= d.ct_eq(&given_digest);
        }
        if !bool::from(matched) {
            return Err(ApiError::unauthorized());
        }
        Ok(MerchantAuth {
            scope: format!("key_{}", &hex::encode(given_digest)[..16]),
        })
    }
}
