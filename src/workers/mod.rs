//! Background loops started by `serve`: expiry of stale payments and status reconciliation.
//! Both share the shutdown token and are safe to run in every instance (each change is a
//! compare-and-set; a lost race is skipped).

pub mod expiry;
pub mod reconcile;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `pass` every `interval` until shutdown; a pass in progress finishes first.
pub async fn every<F, Fut>(
    interval: Duration,
    shutdown: CancellationToken,
    name: &'static str,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, crate::store::StoreError>>,
{
    loop {
        match pass().await {
            Ok(summary) if !summary.is_empty() => {
                tracing::info!(worker = name, summary, "worker pass")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(worker = name, error = %e, "worker pass failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
