//! Payme (Paycom) Merchant API. The JSON-RPC endpoint and checkout link arrive with their own
//! issue; until then a Payme payment can be created and read but not paid.

use async_trait::async_trait;

use super::{Provider, ProviderError};
use crate::config::{PaymeSettings, Settings};
use crate::domain::{NewPayment, ProviderKind};

pub struct Payme {
    #[allow(dead_code)]
    settings: PaymeSettings,
}

impl Payme {
    pub fn new(settings: &Settings) -> Self {
        Payme {
            settings: settings.payme.clone(),
        }
    }
}

#[async_trait]
impl Provider for Payme {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Payme
    }

    async fn start(&self, _payment: &NewPayment) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({}))
    }
}
