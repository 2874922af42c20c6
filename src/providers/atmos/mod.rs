//! ATMOS card payments (create, pre-apply, apply, callback). The client arrives with its own
//! issue; until then an ATMOS payment can be created and read but not paid.

use async_trait::async_trait;

use super::{Provider, ProviderError};
use crate::config::{AtmosSettings, Settings};
use crate::domain::{NewPayment, ProviderKind};

pub struct Atmos {
    #[allow(dead_code)]
    settings: AtmosSettings,
    #[allow(dead_code)]
    http: reqwest::Client,
}

impl Atmos {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        Atmos {
            settings: settings.atmos.clone(),
            http,
        }
    }
}

#[async_trait]
impl Provider for Atmos {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Atmos
    }

    async fn start(&self, _payment: &NewPayment) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({}))
    }
}
