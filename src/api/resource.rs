//! The payment as the merchant API shows it.

use serde::Serialize;

use crate::checkout::checkout_url;
use crate::config::Settings;
use crate::domain::{Language, Payment, PaymentStatus, ProviderKind};
use crate::money::Currency;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentResource {
    #[schema(example = "pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C")]
    pub id: String,
    pub status: PaymentStatus,
    pub provider: ProviderKind,
    /// Minor units (tiyin for UZS, tiyn for KZT).
    pub amount: i64,
    pub currency: Currency,
    pub order_id: String,
    pub description: Option<String>,
    pub return_url: Option<String>,
    pub language: Language,
    pub metadata: serde_json::Value,
    /// Hosted payment page to send the payer to, with the client secret in its fragment
    /// (`#cs=…`) in the answers of create, get and list: the page shows the payment only with it.
    pub checkout_url: String,
    /// Only in the creation response: hand it to the payer's browser for the checkout API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// What the payer's frontend needs from the provider (links, widget parameters).
    pub provider_data: serde_json::Value,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
}

impl PaymentResource {
    pub fn new(settings: &Settings, p: &Payment) -> Self {
        PaymentResource {
            id: p.id.to_string(),
            status: p.status,
            provider: p.provider,
            amount: p.amount.minor(),
            currency: p.amount.currency(),
            order_id: p.order_id.clone(),
            description: p.description.clone(),
            return_url: p.return_url.clone(),
            language: p.language,
            metadata: p.metadata.clone(),
            checkout_url: checkout_url(settings, &p.id),
            client_secret: None,
            provider_data: p.provider_data.clone(),
            expires_at: p
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            created_at: p
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            updated_at: p
                .updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// With the payer's link: the client secret in `checkout_url`'s fragment. Not for answers
    /// that are stored (idempotent replays), which never hold the secret.
    pub fn with_payer_link(mut self, settings: &Settings, id: &crate::domain::PaymentId) -> Self {
        self.checkout_url = format!(
            "{}#cs={}",
            self.checkout_url,
            crate::checkout::client_secret(settings, id)
        );
        self
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentList {
    pub data: Vec<PaymentResource>,
    pub has_more: bool,
    /// Pass as `starting_after` to get the next page.
    pub next_starting_after: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    pub data: Vec<crate::domain::PaymentEvent>,
}
