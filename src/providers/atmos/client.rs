//! ATMOS merchant API client (atmos-epay.md A2–A4): Bearer token from the shared OAuth cache,
//! JSON bodies, and the two success envelopes (`result.code == "OK"` or `status.code` 0/"0"/"OK";
//! both arrive with HTTP 200 even on failure).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::domain::ProviderKind;
use crate::oauth::{TokenCache, TokenRejected};
use crate::providers::ProviderError;

pub struct AtmosClient {
    pub base: String,
    pub store_id: String,
    pub tokens: TokenCache,
    pub http: reqwest::Client,
    /// Per-call limit; an ATMOS call that takes longer is treated as "unknown outcome".
    pub timeout: Duration,
    /// `atmos.otp_as_integer`.
    pub otp_as_integer: bool,
}

fn unavailable(e: impl Into<anyhow::Error>) -> ProviderError {
    ProviderError::Unavailable(ProviderKind::Atmos, e.into())
}

/// The business outcome inside an HTTP 200 answer.
pub fn business_result(body: &Value) -> Result<(), ProviderError> {
    if let Some(code) = body.get("result").and_then(|r| r.get("code")) {
        if code == "OK" {
            return Ok(());
        }
        let message = body["result"]["description"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let code = code.as_str().unwrap_or("?").to_owned();
        // A3: ATMOS's internal error is "temporary and retryable": the call may or may not
        // have acted, like a timeout, so it is no refusal (a refused reverse frees a refund's
        // amount; a refused apply ends the attempt).
        if super::messages::is_transient(&code) {
            return Err(ProviderError::Unavailable(
                ProviderKind::Atmos,
                anyhow::anyhow!("{code}: {message}"),
            ));
        }
        return Err(ProviderError::Rejected {
            provider: ProviderKind::Atmos,
            code,
            message,
        });
    }
    if let Some(code) = body.get("status").and_then(|s| s.get("code")) {
        if code == 0 || code == "0" || code == "OK" {
            return Ok(());
        }
        let message = body["status"]["message"]
            .as_str()
            .or(body["status"]["description"].as_str())
            .unwrap_or("")
            .to_owned();
        let code = code.to_string().trim_matches('"').to_owned();
        // "System error" may or may not have acted, as ERR-001 above.
        if super::messages::is_transient(&code) {
            return Err(ProviderError::Unavailable(
                ProviderKind::Atmos,
                anyhow::anyhow!("{code}: {message}"),
            ));
        }
        return Err(ProviderError::Rejected {
            provider: ProviderKind::Atmos,
            code,
            message,
        });
    }
    Err(ProviderError::Malformed(
        ProviderKind::Atmos,
        "no result or status in the answer".into(),
    ))
}

/// How [`AtmosClient::post`] reports an HTTP 404 (as a `Rejected` code, or the start of a
/// `Malformed` text for a body that is not JSON).
const NOT_FOUND: &str = "HTTP 404";

impl AtmosClient {
    async fn post(&self, path: &str, mut body: Value) -> Result<Value, ProviderError> {
        body["store_id"] = json!(self.store_id);
        let url = format!("{}/{}", self.base.trim_end_matches('/'), path);
        self.tokens
            .with_token(
                |e| super::super::oauth_error(ProviderKind::Atmos, e),
                |token| {
                    let (url, body) = (url.clone(), body.clone());
                    async move {
                        let sent = self
                            .http
                            .post(&url)
                            .bearer_auth(token.expose_secret())
                            .json(&body)
                            .timeout(self.timeout)
                            .send()
                            .await;
                        let res = match sent {
                            Ok(r) => r,
                            Err(e) => return Ok(Err(unavailable(e))),
                        };
                        let status = res.status();
                        if status.as_u16() == 401 {
                            return Err(TokenRejected);
                        }
                        if status.is_server_error() {
                            return Ok(Err(unavailable(anyhow::anyhow!(
                                "ATMOS answered HTTP {status}"
                            ))));
                        }
                        let value: Result<Value, _> = res.json().await;
                        Ok(match value {
                            Ok(v) if status.is_success() => Ok(v),
                            Ok(_) => Err(ProviderError::Rejected {
                                provider: ProviderKind::Atmos,
                                code: format!("HTTP {}", status.as_u16()),
                                message: String::new(),
                            }),
                            Err(e) => Err(ProviderError::Malformed(
                                ProviderKind::Atmos,
                                format!("HTTP {status}, not JSON: {e}"),
                            )),
                        })
                    }
                },
            )
            .await
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, ProviderError> {
        let answer = self.post(path, body).await?;
        business_result(&answer)?;
        Ok(answer)
    }

    /// `merchant/pay/create` → the ATMOS transaction id.
    pub async fn create(
        &self,
        amount: i64,
        account: &str,
        lang: &str,
    ) -> Result<i64, ProviderError> {
        let a = self
            .call(
                "merchant/pay/create",
                json!({ "amount": amount, "account": account, "lang": lang }),
            )
            .await?;
        a.get("transaction_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ProviderError::Malformed(ProviderKind::Atmos, "no transaction_id".into())
            })
    }

    /// `merchant/pay/pre-apply`: attaches the card; ATMOS sends the SMS code.
    pub async fn pre_apply(
        &self,
        transaction_id: i64,
        card_number: &str,
        expiry_yymm: &str,
    ) -> Result<(), ProviderError> {
        self.call(
            "merchant/pay/pre-apply",
            json!({ "transaction_id": transaction_id, "card_number": card_number, "expiry": expiry_yymm }),
        )
        .await
        .map(|_| ())
    }

    /// `merchant/pay/apply`: confirms with the SMS code; this debits the card.
    pub async fn apply(&self, transaction_id: i64, otp: &str) -> Result<Value, ProviderError> {
        let otp = match otp.parse::<u64>() {
            Ok(n) if self.otp_as_integer && !otp.starts_with('0') => json!(n),
            _ => json!(otp),
        };
        let a = self
            .call(
                "merchant/pay/apply",
                json!({ "transaction_id": transaction_id, "otp": otp }),
            )
            .await?;
        Ok(a.get("store_transaction").cloned().unwrap_or(Value::Null))
    }

    /// `merchant/pay/get`: the authoritative state (`store_transaction`).
    pub async fn get(&self, transaction_id: i64) -> Result<Value, ProviderError> {
        let a = self
            .call(
                "merchant/pay/get",
                json!({ "transaction_id": transaction_id }),
            )
            .await?;
        Ok(a.get("store_transaction").cloned().unwrap_or(Value::Null))
    }

    /// `merchant/pay/reverse`: full refund of a confirmed payment. A4.6: the sources disagree
    /// on the id it takes; the create id first, and where ATMOS calls that a wrong parameter
    /// (ERR-009: then it does not take create ids, so the other id cannot name another
    /// payment's transaction), the debit's `success_trans_id` from `pay/get`. A refusal of both
    /// is the first refusal; a second call whose outcome is unknown, or that `pay/get` does not
    /// show reversed, is reported as unknown (reconciliation decides), never as a refusal.
    pub async fn reverse(&self, transaction_id: i64, reason: &str) -> Result<(), ProviderError> {
        let refused = match self.reverse_by(transaction_id, reason).await {
            Err(refused) if is_wrong_parameter(&refused) => refused,
            other => return other,
        };
        let debit_id = match self.get(transaction_id).await {
            Ok(t) => match &t["success_trans_id"] {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            },
            Err(_) => None,
        };
        match debit_id {
            Some(id) if id != transaction_id => {
                tracing::info!(error = %refused, "atmos: reverse by the create id refused; trying the debit's success_trans_id");
                match self.reverse_by(id, reason).await {
                    Err(ProviderError::Rejected { .. }) => Err(refused),
                    Err(unknown) => Err(unknown),
                    Ok(()) => match self.get(transaction_id).await {
                        Ok(t) if is_reversed(&t) => Ok(()),
                        _ => Err(ProviderError::Unavailable(
                            ProviderKind::Atmos,
                            anyhow::anyhow!(
                                "reverse by success_trans_id answered OK but pay/get does not show the debit reversed yet"
                            ),
                        )),
                    },
                }
            }
            _ => Err(refused),
        }
    }

    async fn reverse_by(&self, id: i64, reason: &str) -> Result<(), ProviderError> {
        self.call(
            "merchant/pay/reverse",
            json!({ "transaction_id": id, "reason": reason }),
        )
        .await
        .map(|_| ())
    }

    /// `merchant/pay/otp-resend`, or `merchant/pay/retry-otp` where that does not exist
    /// (A4.7: the sources name both; `otp-resend` first).
    pub async fn otp_resend(&self, transaction_id: i64) -> Result<(), ProviderError> {
        let body = json!({ "transaction_id": transaction_id });
        match self.call("merchant/pay/otp-resend", body.clone()).await {
            // No such method at this ATMOS, whatever the body of its 404 (only here: elsewhere a
            // 404 stays what it was, a refusal or a garbled answer).
            Err(ProviderError::Rejected { code: what, .. } | ProviderError::Malformed(_, what))
                if what.starts_with(NOT_FOUND) =>
            {
                self.call("merchant/pay/retry-otp", body).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}

/// ATMOS's "wrong/invalid parameters" (STPIMS-ERR-009, A3).
fn is_wrong_parameter(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Rejected { code, .. } if code.ends_with("ERR-009"))
}

/// Paid means confirmed (or a success id) and not reversed (status_code "-20").
pub fn is_paid(store_transaction: &Value) -> bool {
    let confirmed =
        store_transaction["confirmed"] == true || !store_transaction["success_trans_id"].is_null();
    confirmed && !is_reversed(store_transaction)
}

/// `status_code` -20: the debit was reversed. ATMOS writes it as a string or as a number.
pub fn is_reversed(store_transaction: &Value) -> bool {
    store_transaction["status_code"] == "-20" || store_transaction["status_code"] == -20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_envelopes_are_understood() {
        assert!(business_result(&json!({"result": {"code": "OK"}})).is_ok());
        assert!(business_result(&json!({"status": {"code": 0}})).is_ok());
        assert!(business_result(&json!({"status": {"code": "0"}})).is_ok());
        assert!(business_result(&json!({"status": {"code": "OK"}})).is_ok());
        match business_result(
            &json!({"result": {"code": "STPIMS-ERR-112", "description": "Недостаточно средств"}}),
        ) {
            Err(ProviderError::Rejected { code, message, .. }) => assert_eq!(
                (code.as_str(), message.as_str()),
                ("STPIMS-ERR-112", "Недостаточно средств")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            business_result(&json!({"status": {"code": "-5"}})),
            Err(ProviderError::Rejected { .. })
        ));
        assert!(matches!(
            business_result(
                &json!({"result": {"code": "STPIMS-ERR-001", "description": "Внутренняя ошибка"}})
            ),
            Err(ProviderError::Unavailable(..))
        ));
        for system_error in [json!("-999999"), json!(-999999)] {
            assert!(matches!(
                business_result(&json!({"status": {"code": system_error}})),
                Err(ProviderError::Unavailable(..))
            ));
        }
        assert!(matches!(
            business_result(&json!({"oops": 1})),
            Err(ProviderError::Malformed(..))
        ));
    }

    #[test]
    fn reversed_is_status_code_minus_20_as_text_or_number() {
        assert!(is_reversed(&json!({"status_code": "-20"})));
        assert!(is_reversed(&json!({"status_code": -20})));
        assert!(!is_reversed(&json!({"status_code": "0"})));
        assert!(!is_reversed(&json!({"status_code": 20})));
    }

    #[test]
    fn paid_means_confirmed_and_not_reversed() {
        assert!(is_paid(&json!({"confirmed": true, "status_code": "0"})));
        assert!(is_paid(&json!({"success_trans_id": 77})));
        assert!(!is_paid(&json!({"confirmed": true, "status_code": "-20"})));
        assert!(!is_paid(&json!({"confirmed": false})));
        assert!(!is_paid(&Value::Null));
    }
}
