//! Halyk ePay (payment token, widget, postLink, status, refund). The client arrives with its own
//! issue; until then an ePay payment can be created and read but not paid.

use async_trait::async_trait;

use super::{Provider, ProviderError};
use crate::config::{EpaySettings, Settings};
use crate::domain::{NewPayment, ProviderKind};

pub struct Epay {
    #[allow(dead_code)]
    settings: EpaySettings,
    #[allow(dead_code)]
    http: reqwest::Client,
}

impl Epay {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        Epay {
            settings: settings.epay.clone(),
            http,
        }
    }
}

#[async_trait]
impl Provider for Epay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Epay
    }

    async fn start(&self, _payment: &NewPayment) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({}))
    }
}
