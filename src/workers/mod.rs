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

/// Rows read per query; a pass reads page after page until none are left.
pub(crate) const PAGE: u32 = 100;

/// Where a pass is in a keyset-paged list: each read starts after the last row of the previous
/// page (not at an offset), so rows a pass leaves as they are cannot hide the ones behind them.
pub(crate) struct Pages<T> {
    last: Option<T>,
    finished: bool,
}

impl<T: Clone> Pages<T> {
    pub(crate) fn new() -> Self {
        Pages {
            last: None,
            finished: false,
        }
    }

    /// `Some(after)` while there may be more rows: read the next page after `after`.
    pub(crate) fn cursor(&self) -> Option<Option<&T>> {
        (!self.finished).then_some(self.last.as_ref())
    }

    /// Takes a page as read, remembering where the next one starts.
    pub(crate) fn read(&mut self, page: Vec<T>) -> Vec<T> {
        self.finished = page.len() < PAGE as usize;
        match page.last() {
            Some(last) => self.last = Some(last.clone()),
            None => self.finished = true,
        }
        page
    }
}
