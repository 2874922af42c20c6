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

/// A clock that moves only when told (tests, simulations): system time plus an offset.
#[derive(Default)]
pub struct ManualClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::SeqCst);
        Utc::now() + chrono::Duration::milliseconds(offset)
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
    /// Where this process itself is reachable (the bound port), for the sandbox payers that
    /// play a provider calling tolov.
    pub self_url: String,
    /// SHA-256 digests of the configured API keys, compared in constant time.
    pub api_key_digests: Arc<Vec<[u8; 32]>>,
    /// The Payme key (configured, or replaced by ChangePassword), for the sandbox payer.
    pub payme_key: Arc<crate::providers::payme::key::PaymeKey>,
}

impl AppState {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
