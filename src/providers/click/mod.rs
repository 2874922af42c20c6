//! Click SHOP-API. Prepare/complete, the pay link and the Merchant API client arrive with their own
//! issue; until then a Click payment can be created and read but not paid.

use async_trait::async_trait;

use super::{Provider, ProviderError};
use crate::config::{ClickSettings, Settings};
use crate::domain::{NewPayment, ProviderKind};

pub struct Click {
    #[allow(dead_code)]
    settings: ClickSettings,
}

impl Click {
    pub fn new(settings: &Settings) -> Self {
        Click {
            settings: settings.click.clone(),
        }
    }
}

#[async_trait]
impl Provider for Click {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Click
    }

    async fn start(&self, _payment: &NewPayment) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({}))
    }
}
