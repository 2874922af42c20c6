use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::providers::ProviderRegistry;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Time as the application sees it; tests replace it to move through deadlines without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Shared by every handler and worker.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub providers: Arc<ProviderRegistry>,
    pub http: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// SHA-256 digests of the configured API keys, compared in constant time.
    pub api_key_digests: Arc<Vec<[u8; 32]>>,
}

impl AppState {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
