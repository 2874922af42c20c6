//! Request extractors whose rejections are problem+json like every other API error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A JSON body kept together with its raw bytes (idempotency fingerprints the body).
/// A missing body counts as `{}` so `POST …/cancel` works without one.
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: serde_json::Value,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let bytes = Bytes::from_request(req, state).await?;
        if let Some(ct) = content_type {
            if !bytes.is_empty() && ct != "application/json" && !ct.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as application/json",
                ));
            }
        }
        parse_json(&bytes)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let canonical: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !canonical.is_object() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "request body must be a JSON object",
        ));
    }
    // Deserialising the typed body from the bytes (not from the `Value`, which keeps only the
    // last of duplicate keys) refuses `{"amount":1,"amount":999}` instead of guessing.
    let value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::unprocessable("invalid_request", without_values(&e.to_string())))?;
    Ok(JsonBody { value, canonical })
}

/// serde's message with the offending value left out (`invalid type: integer `8600…`,
/// expected a string` becomes `invalid type: integer, expected a string`): the value may be a
/// card number or an SMS code, which are never echoed back.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some(expected) = rest.find(", expected") else {
            continue;
        };
        let what = &rest[..expected];
        let kind = what.find(['`', '"']).map_or(what, |at| &what[..at]).trim();
        return format!("{prefix}{kind}{}", &rest[expected..]);
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn offending_values_are_left_out_of_the_message() {
        for (serde, ours) in [
            (
                "invalid type: integer `8600490744313347`, expected a string at line 1 column 31",
                "invalid type: integer, expected a string at line 1 column 31",
            ),
            (
                "invalid type: string \"111111\", expected i64 at line 1 column 13",
                "invalid type: string, expected i64 at line 1 column 13",
            ),
            (
                "invalid type: floating point `1.5`, expected i64 at line 1 column 14",
                "invalid type: floating point, expected i64 at line 1 column 14",
            ),
            (
                "invalid value: integer `-3`, expected u32 at line 1 column 9",
                "invalid value: integer, expected u32 at line 1 column 9",
            ),
            (
                "unknown field `amout`, expected one of `amount`, `reason` at line 1 column 8",
                "unknown field `amout`, expected one of `amount`, `reason` at line 1 column 8",
            ),
        ] {
            assert_eq!(without_values(serde), ours);
        }
    }
}
