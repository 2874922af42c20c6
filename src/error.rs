//! `ApiError`: every merchant-API error as `application/problem+json` (RFC 9457) with a stable
//! `code`. Causes are logged here and never sent to the client. Provider-protocol replies
//! (Payme JSON-RPC errors, Click `error: -n`) are not `ApiError`s; each provider owns its encoder.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Field-level complaints, when there is more than one.
    pub errors: Vec<FieldError>,
    /// The message for the payer in every checkout language (checkout routes).
    pub messages: Option<Box<Localized>>,
    #[source]
    pub source: Option<anyhow::Error>,
    /// A server-side failure that must still be replayed to a retry with the same
    /// Idempotency-Key (the provider may have acted on the request), instead of freeing the key.
    pub replay_on_retry: bool,
}

/// A message for the payer in the three checkout languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Localized {
    pub uz: &'static str,
    pub ru: &'static str,
    pub en: &'static str,
}

impl Localized {
    pub fn in_language(&self, lang: crate::domain::Language) -> &'static str {
        match lang {
            crate::domain::Language::Uz => self.uz,
            crate::domain::Language::Ru => self.ru,
            crate::domain::Language::En => self.en,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The body every error response has.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:tolov:problem:<code>`
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Localized>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            messages: None,
            source: None,
            replay_on_retry: false,
        }
    }

    /// See [`ApiError::replay_on_retry`].
    pub fn replayed_on_retry(mut self) -> Self {
        self.replay_on_retry = true;
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            errors,
            ..Self::unprocessable("validation_failed", detail)
        }
    }

    /// A failure of ours; the client sees a generic message, the log sees the cause.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        ApiError {
            source: Some(source.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; it has been logged",
            )
        }
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    /// An error for the payer: `detail` in the payment's language, `messages` in all three.
    pub fn for_payer(
        status: StatusCode,
        code: &'static str,
        text: Localized,
        lang: crate::domain::Language,
    ) -> Self {
        ApiError {
            messages: Some(Box::new(text)),
            ..Self::new(status, code, text.in_language(lang))
        }
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:tolov:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            errors: self.errors.clone(),
            messages: self.messages.as_deref().copied(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            let chain = self.source.as_ref().map(|e| format!("{e:#}"));
            tracing::error!(
                code = self.code,
                cause = chain.as_deref().unwrap_or(""),
                "request failed"
            );
        } else {
            tracing::info!(
                code = self.code,
                status = self.status.as_u16(),
                "request rejected"
            );
        }
        let mut res = problem_response(self.status, &self.problem());
        if self.code == "unauthorized" {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(sqlx::Error::PoolTimedOut) => ApiError {
                source: Some(e.into()),
                ..ApiError::unavailable("database_busy", "the database is busy; retry shortly")
            },
            // A failover, a restart, a refused login, too many connections: nothing of this
            // request was done (or, for a write cut at commit, its retry is idempotent).
            e if e.is_unavailable() => ApiError {
                source: Some(e.into()),
                ..ApiError::unavailable(
                    "database_unavailable",
                    "the database cannot be reached; retry shortly",
                )
            },
            // Lost compare-and-set races, every retry included: the request did nothing, and
            // the same request a moment later is decided on what the winner wrote.
            StoreError::Conflict(_) | StoreError::Duplicate(_) => ApiError {
                source: Some(e.into()),
                ..ApiError::conflict("concurrent_update", "the payment is being changed; retry")
            },
            other => ApiError::internal(other),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds the size limit",
            )
        } else {
            ApiError::bad_request("unreadable_body", "request body could not be read")
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                ApiError::unprocessable("invalid_request", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            JsonRejection::BytesRejection(b) => b.into(),
            other => ApiError::bad_request("bad_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_races_are_409_and_a_busy_pool_503_not_a_500() {
        for e in [
            StoreError::Conflict("payment"),
            StoreError::Duplicate("transaction".into()),
        ] {
            let api = ApiError::from(e);
            assert_eq!(
                (api.status, api.code),
                (StatusCode::CONFLICT, "concurrent_update")
            );
        }
        let api = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(
            (api.status, api.code),
            (StatusCode::SERVICE_UNAVAILABLE, "database_busy")
        );
        let api = ApiError::from(StoreError::Database(sqlx::Error::Io(
            std::io::ErrorKind::ConnectionReset.into(),
        )));
        assert_eq!(
            (api.status, api.code),
            (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
        );
        let api = ApiError::from(StoreError::Corrupt("x".into()));
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
