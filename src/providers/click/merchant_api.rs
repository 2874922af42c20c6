//! Click Merchant API client (payme-click.md §2.9): we call Click for a payment's status and
//! for a reversal. Auth header `merchant_user_id:sha1(timestamp + secret_key):timestamp`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::domain::ProviderKind;
use crate::providers::ProviderError;

pub struct MerchantApi {
    pub base: String,
    pub service_id: String,
    pub merchant_user_id: String,
    pub secret: SecretString,
    pub http: reqwest::Client,
}

/// Click payment status codes: < 0 error, 0 created, 1 processing, 2 successful.
pub const PAYMENT_SUCCESSFUL: i64 = 2;

pub fn auth_header(merchant_user_id: &str, secret: &str, timestamp: i64) -> String {
    let digest = hex::encode(Sha1::digest(format!("{timestamp}{secret}")));
    format!("{merchant_user_id}:{digest}:{timestamp}")
}

fn unavailable(e: impl Into<anyhow::Error>) -> ProviderError {
    ProviderError::Unavailable(ProviderKind::Click, e.into())
}

impl MerchantApi {
    async fn send(&self, method: reqwest::Method, path: &str) -> Result<Value, ProviderError> {
        let ts = chrono::Utc::now().timestamp();
        let url = format!("{}/{}", self.base.trim_end_matches('/'), path);
        let res = self
            .http
            .request(method, &url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .header(
                "Auth",
                auth_header(&self.merchant_user_id, self.secret.expose_secret(), ts),
            )
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(unavailable)?;
        let status = res.status();
        if status.is_server_error() {
            return Err(unavailable(anyhow::anyhow!("Click answered HTTP {status}")));
        }
        let bytes = res.bytes().await.map_err(unavailable)?;
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let code = body
            .as_ref()
            .and_then(|b| b.get("error_code"))
            .and_then(Value::as_i64);
        match (code, body) {
            (Some(0), Some(body)) if status.is_success() => Ok(body),
            (Some(code), body) => Err(ProviderError::Rejected {
                provider: ProviderKind::Click,
                code: code.to_string(),
                message: body
                    .as_ref()
                    .and_then(|b| b.get("error_note"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            }),
            // §2.9's 400/401/403/404/406/410: Click did not take the request, whatever the
            // body says (often nothing).
            (None, body)
                if status.is_client_error() || (body.is_some() && !status.is_success()) =>
            {
                Err(ProviderError::Rejected {
                    provider: ProviderKind::Click,
                    code: format!("HTTP {}", status.as_u16()),
                    message: status.canonical_reason().unwrap_or("").to_owned(),
                })
            }
            (None, None) => Err(ProviderError::Malformed(
                ProviderKind::Click,
                format!("HTTP {status}, body is not JSON"),
            )),
            (None, Some(_)) => Err(ProviderError::Malformed(
                ProviderKind::Click,
                "no error_code in the answer".into(),
            )),
        }
    }

    /// `payment_status` of a Click payment (its click_trans_id).
    pub async fn payment_status(&self, payment_id: &str) -> Result<i64, ProviderError> {
        let body = self
            .send(
                reqwest::Method::GET,
                &format!("payment/status/{}/{payment_id}", self.service_id),
            )
            .await?;
        body.get("payment_status")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ProviderError::Malformed(ProviderKind::Click, "no payment_status".into())
            })
    }

    /// Click's payment id for our merchant_trans_id on the given day (`YYYY-MM-DD`).
    pub async fn status_by_merchant_trans_id(
        &self,
        merchant_trans_id: &str,
        date: &str,
    ) -> Result<Option<i64>, ProviderError> {
        let path = format!(
            "payment/status_by_mti/{}/{merchant_trans_id}/{date}",
            self.service_id
        );
        let body = self.send(reqwest::Method::GET, &path).await?;
        Ok(body.get("payment_id").and_then(Value::as_i64))
    }

    /// Cancels (reverses) a successful payment in full.
    pub async fn reversal(&self, payment_id: &str) -> Result<(), ProviderError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("payment/reversal/{}/{payment_id}", self.service_id),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_matches_the_documented_shape() {
        let h = auth_header("123", "secret", 1_519_051_543);
        let expected = hex::encode(Sha1::digest("1519051543secret"));
        assert_eq!(h, format!("123:{expected}:1519051543"));
        assert_eq!(expected.len(), 40);
    }
}
