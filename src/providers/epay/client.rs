//! Halyk ePay REST client (atmos-epay.md B2, B6, B7): the payment-scoped token (bound to one
//! invoice, handed to the widget), the general token (cached) for check-status and operations.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::domain::ProviderKind;
use crate::oauth::{TokenCache, TokenRejected};
use crate::providers::ProviderError;

pub struct EpayClient {
    pub oauth_url: String,
    pub api_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub terminal: String,
    /// Scope of the payment token (the payer's browser gets it).
    pub payment_scope: String,
    pub tokens: TokenCache,
    pub http: reqwest::Client,
}

fn unavailable(e: impl Into<anyhow::Error>) -> ProviderError {
    ProviderError::Unavailable(ProviderKind::Epay, e.into())
}

/// What the invoice's token request carries besides the credentials.
pub struct InvoiceToken<'a> {
    pub invoice_id: &'a str,
    pub amount: &'a str,
    pub post_link: &'a str,
    pub failure_post_link: &'a str,
    pub secret_hash: &'a str,
}

impl EpayClient {
    /// The payment token for one invoice: the whole answer goes to the widget as `auth`.
    pub async fn payment_token(&self, t: &InvoiceToken<'_>) -> Result<Value, ProviderError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.payment_scope.as_str()),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("invoiceID", t.invoice_id),
            ("amount", t.amount),
            ("currency", "KZT"),
            ("terminal", self.terminal.as_str()),
            ("postLink", t.post_link),
            ("failurePostLink", t.failure_post_link),
            ("secret_hash", t.secret_hash),
        ];
        let res = self
            .http
            .post(&self.oauth_url)
            .form(&form)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(unavailable)?;
        let status = res.status();
        if status.is_server_error() {
            return Err(unavailable(anyhow::anyhow!(
                "ePay token endpoint answered HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: format!("HTTP {}", status.as_u16()),
                message: "token refused".into(),
            });
        }
        let token: Value = res.json().await.map_err(|e| {
            ProviderError::Malformed(ProviderKind::Epay, format!("token is not JSON: {e}"))
        })?;
        if token
            .get("access_token")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ProviderError::Malformed(
                ProviderKind::Epay,
                "no access_token".into(),
            ));
        }
        Ok(token)
    }

    async fn authorized(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<(u16, Value), ProviderError> {
        let url = format!("{}/{}", self.api_url.trim_end_matches('/'), path);
        self.tokens
            .with_token(
                |e| super::super::oauth_error(ProviderKind::Epay, e),
                |token| {
                    let (url, method) = (url.clone(), method.clone());
                    async move {
                        let sent = self
                            .http
                            .request(method, &url)
                            .bearer_auth(token.expose_secret())
                            .timeout(Duration::from_secs(20))
                            .send()
                            .await;
                        let res = match sent {
                            Ok(r) => r,
                            Err(e) => return Ok(Err(unavailable(e))),
                        };
                        let status = res.status().as_u16();
                        if status == 401 {
                            return Err(TokenRejected);
                        }
                        if status >= 500 {
                            return Ok(Err(unavailable(anyhow::anyhow!(
                                "ePay answered HTTP {status}"
                            ))));
                        }
                        // B7: an operation's success is HTTP 200 "with an empty or irrelevant
                        // body", so a body that is not JSON is no error here; whoever needs
                        // fields (check-status) finds none.
                        let text = res.text().await.unwrap_or_default();
                        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                        Ok(Ok((status, body)))
                    }
                },
            )
            .await
    }

    /// `check-status` by invoice (resultCode 100 = found; then `transaction.statusName`).
    pub async fn check_status(&self, invoice_id: &str) -> Result<Value, ProviderError> {
        let (status, body) = self
            .authorized(
                reqwest::Method::GET,
                &format!("check-status/payment/transaction/{invoice_id}"),
            )
            .await?;
        if status != 200 && status != 400 {
            return Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: format!("HTTP {status}"),
                message: String::new(),
            });
        }
        if body.get("resultCode").is_none() {
            return Err(ProviderError::Malformed(
                ProviderKind::Epay,
                format!("HTTP {status} without a JSON resultCode"),
            ));
        }
        Ok(body)
    }

    /// `operation/{id}/charge` (capture of an AUTH) or `operation/{id}/cancel` (void of an AUTH).
    pub async fn operation(&self, transaction_id: &str, op: &str) -> Result<(), ProviderError> {
        self.post_operation(&format!("operation/{transaction_id}/{op}"))
            .await
    }

    /// `operation/{id}/refund`: partial with `amount`, idempotent by `externalID`.
    pub async fn refund(
        &self,
        transaction_id: &str,
        amount: &str,
        external_id: &str,
    ) -> Result<(), ProviderError> {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("amount", amount)
            .append_pair("externalID", external_id)
            .finish();
        self.post_operation(&format!("operation/{transaction_id}/refund?{q}"))
            .await
    }

    /// Operations answer HTTP 200 on success (whatever the body) and 400 `{code, message}` on
    /// refusal. Another 2xx counts as success too; an answer that is neither (3xx) leaves the
    /// outcome unknown rather than refused, since a refusal frees a refund's amount.
    async fn post_operation(&self, path: &str) -> Result<(), ProviderError> {
        let (status, body) = self.authorized(reqwest::Method::POST, path).await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        if !(400..500).contains(&status) {
            return Err(ProviderError::Malformed(
                ProviderKind::Epay,
                format!("operation answered HTTP {status}"),
            ));
        }
        Err(ProviderError::Rejected {
            provider: ProviderKind::Epay,
            code: body
                .get("code")
                .map(|c| c.to_string())
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }
}

/// How a check-status answer maps onto a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpayState {
    /// CHARGE: captured (the 1-step success, or a captured 2-step payment).
    Paid {
        transaction_id: String,
        status_name: String,
    },
    /// AUTH: funds blocked on a 2-step terminal; the merchant captures (charge) or voids (cancel).
    Authorized { transaction_id: String },
    /// NEW, FINGERPRINT, reasonCode 454/459: the payer is not done; ask again later.
    InProgress,
    /// REJECT, FAILED, 3D, CANCEL_OLD…: this attempt is over; the payer may try again.
    Declined { reason: String },
    /// CANCEL: the block was released (B6), by the merchant's void (tolov's, or in ePay's
    /// cabinet): the order is cancelled, not payable again.
    Voided,
    /// REFUND: refunded in full or in part (B6 does not tell which); the transaction id is
    /// what a further partial refund names.
    Refunded { transaction_id: String },
    /// resultCode 102: ePay knows no such invoice (the payer never paid).
    NotFound,
}

/// A check-status answer as a payment state. `resultCode` is about the lookup (B6): 103 and 107
/// mean "ask again", 101 (rejected) and 104/106/109 (the terminal is missing, wrong or not this
/// client's) will not pass by themselves; none of them says anything about the money, so they
/// are an error for whoever asked (unavailable for the first two), never a state to act on: a
/// merchant cancel must not skip the void of a block it could not see.
pub fn interpret(body: &Value) -> Result<EpayState, ProviderError> {
    let code = body["resultCode"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| body["resultCode"].as_i64().map(|n| n.to_string()));
    match code.as_deref() {
        Some("100") => {}
        Some("102") => return Ok(EpayState::NotFound),
        Some(again @ ("103" | "107")) => {
            return Err(ProviderError::Unavailable(
                ProviderKind::Epay,
                anyhow::anyhow!("check-status resultCode {again}: ePay asks to try again later"),
            ))
        }
        None => {
            return Err(ProviderError::Malformed(
                ProviderKind::Epay,
                "check-status without a resultCode".into(),
            ))
        }
        Some(other) => {
            return Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: format!("resultCode {other}"),
                message: body["resultMessage"].as_str().unwrap_or("").to_owned(),
            })
        }
    }
    let t = &body["transaction"];
    let reason_code = t["reasonCode"]
        .as_i64()
        .or_else(|| t["reasonCode"].as_str().and_then(|s| s.parse().ok()));
    let name = t["statusName"].as_str().unwrap_or("");
    Ok(match name {
        "AUTH" => EpayState::Authorized {
            transaction_id: t["id"].as_str().unwrap_or("").to_owned(),
        },
        "CHARGE" => EpayState::Paid {
            transaction_id: t["id"].as_str().unwrap_or("").to_owned(),
            status_name: name.to_owned(),
        },
        "REFUND" => EpayState::Refunded {
            transaction_id: t["id"].as_str().unwrap_or("").to_owned(),
        },
        "NEW" | "FINGERPRINT" => EpayState::InProgress,
        _ if matches!(reason_code, Some(454 | 459)) => EpayState::InProgress,
        "CANCEL" => EpayState::Voided,
        "REJECT" | "FAILED" | "3D" | "CANCEL_OLD" => EpayState::Declined {
            reason: format!("{name} ({})", reason_code.unwrap_or(0)),
        },
        // Outside B6's table: nothing known about the money, so nothing to act on.
        other => {
            return Err(ProviderError::Malformed(
                ProviderKind::Epay,
                format!("check-status with an unknown statusName {other:?}"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(body: &Value) -> EpayState {
        match interpret(body) {
            Ok(s) => s,
            Err(e) => panic!("{body}: {e}"),
        }
    }

    #[test]
    fn lookups_epay_refused_are_errors_not_states() {
        for code in ["101", "104", "106", "109"] {
            match interpret(&json!({"resultCode": code, "resultMessage": "terminal"})) {
                Err(ProviderError::Rejected { code: c, .. }) => {
                    assert_eq!(c, format!("resultCode {code}"))
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn status_mapping_follows_the_spec() {
        let found = |name: &str, reason: i64| json!({"resultCode": "100", "transaction": {"id": "t1", "statusName": name, "reasonCode": reason}});
        assert_eq!(
            state(&found("CHARGE", 0)),
            EpayState::Paid {
                transaction_id: "t1".into(),
                status_name: "CHARGE".into()
            }
        );
        assert_eq!(
            state(&found("AUTH", 0)),
            EpayState::Authorized {
                transaction_id: "t1".into()
            }
        );
        assert_eq!(state(&found("NEW", 0)), EpayState::InProgress);
        assert_eq!(
            state(&found("REJECT", 454)),
            EpayState::InProgress,
            "454 is not final"
        );
        assert_eq!(
            state(&found("REJECT", 459)),
            EpayState::InProgress,
            "459 is disputed: re-query"
        );
        assert!(matches!(
            state(&found("REJECT", 484)),
            EpayState::Declined { .. }
        ));
        assert_eq!(
            state(&found("REFUND", 0)),
            EpayState::Refunded {
                transaction_id: "t1".into()
            }
        );
        for name in ["FAILED", "3D", "CANCEL_OLD"] {
            assert!(
                matches!(state(&found(name, 0)), EpayState::Declined { .. }),
                "{name}"
            );
        }
        assert_eq!(state(&found("CANCEL", 0)), EpayState::Voided);
        assert_eq!(state(&found("FINGERPRINT", 0)), EpayState::InProgress);
        // A status outside B6's table says nothing known about the money: an error for whoever
        // asked (a merchant cancel must not skip the void of a block it cannot read), not a
        // decline that reopens or closes the payment.
        for unknown in ["PARTIAL_REFUND", ""] {
            assert!(
                matches!(
                    interpret(&found(unknown, 0)),
                    Err(ProviderError::Malformed(..))
                ),
                "{unknown:?}"
            );
        }
        assert_eq!(state(&json!({"resultCode": "102"})), EpayState::NotFound);
        for again in [json!({"resultCode": "107"}), json!({"resultCode": 103})] {
            assert!(
                matches!(interpret(&again), Err(ProviderError::Unavailable(..))),
                "{again}"
            );
        }
    }
}
