//! Claims due outbox rows and POSTs them to the merchant. A row is claimed with a lease (its
//! `locked_until`), so two instances never send the same attempt; a crash between claim and
//! send leaves the lease to expire and the row is sent again with the same `webhook-id`
//! (receivers dedupe on it). Events of one payment go out in order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::signing::sign;
use crate::domain::{DeliveryResult, DeliveryStatus, OutboxMessage};
use crate::state::AppState;
use crate::store::StoreError;

/// Delays after the 1st, 2nd, … failed attempt (the seed: 1 min, 5 min, 15 min, 1 h, 6 h);
/// after the last one fails the message is dead.
pub const RETRY_SCHEDULE_SECS: [i64; 5] = [60, 300, 900, 3_600, 21_600];
pub const LEASE_SECS: i64 = 60;
const BATCH: u32 = 32;

/// When to try again after `attempts` failed attempts (counting the one that just failed),
/// with ±10 % jitter so a recovering receiver is not hit by every retry at once.
pub fn next_attempt(now: DateTime<Utc>, attempts: i64) -> Option<DateTime<Utc>> {
    let idx = usize::try_from(attempts - 1).ok()?;
    let base = *RETRY_SCHEDULE_SECS.get(idx)? * 1000;
    let jitter = rand::thread_rng().gen_range(-(base / 10)..=base / 10);
    Some(now + chrono::Duration::milliseconds(base + jitter))
}

/// One pass: claim what is due and send it. Returns how many messages were attempted.
pub async fn dispatch_once(state: &AppState) -> Result<usize, StoreError> {
    let url = state.settings.webhooks.url.clone();
    if url.is_empty() {
        return Ok(0);
    }
    let now = state.now();
    let lease = (now + chrono::Duration::seconds(LEASE_SECS)).timestamp_millis();
    let claimed = state.store.claim_outbox(now, lease, BATCH).await?;
    let n = claimed.len();
    let sends = claimed.into_iter().map(|m| {
        let url = url.clone();
        async move { deliver(state, &url, m, lease).await }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(n)
}

async fn deliver(
    state: &AppState,
    url: &str,
    m: OutboxMessage,
    lease: i64,
) -> Result<(), StoreError> {
    let body = m.payload.to_string();
    let timestamp = state.now().timestamp();
    let signature = sign(
        state.settings.webhooks.secret.expose_secret(),
        &m.event_id,
        timestamp,
        body.as_bytes(),
    );
    let sent = state
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &m.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .timeout(Duration::from_secs(state.settings.webhooks.timeout_secs))
        .body(body)
        .send()
        .await;
    let (ok, http_status, error) = match sent {
        Ok(res) if res.status().is_success() => {
            (true, Some(i64::from(res.status().as_u16())), None)
        }
        Ok(res) => (
            false,
            Some(i64::from(res.status().as_u16())),
            Some(format!("HTTP {}", res.status())),
        ),
        Err(e) if e.is_timeout() => (false, None, Some("timed out".to_owned())),
        Err(e) => (false, None, Some(without_url(&e))),
    };
    let now = state.now();
    let attempts = m.attempts + 1;
    let (status, next) = if ok {
        (DeliveryStatus::Delivered, now)
    } else {
        match next_attempt(now, attempts) {
            Some(at) => (DeliveryStatus::Pending, at),
            None => (DeliveryStatus::Dead, now),
        }
    };
    let result = DeliveryResult {
        seq: m.seq,
        claimed_until: lease,
        status,
        next_attempt_at: next,
        http_status,
        error,
        now,
    };
    if !state.store.record_delivery(&result).await? {
        tracing::warn!(event_id = %m.event_id, "webhook claim was lost before its result was recorded");
    }
    match status {
        DeliveryStatus::Delivered => {
            tracing::info!(event_id = %m.event_id, payment_id = %m.payment_id, "webhook delivered")
        }
        DeliveryStatus::Pending => {
            tracing::warn!(event_id = %m.event_id, attempts, error = result.error.as_deref().unwrap_or(""), "webhook failed; will retry")
        }
        DeliveryStatus::Dead => {
            tracing::error!(event_id = %m.event_id, attempts, "webhook dead after the last retry")
        }
    }
    Ok(())
}

/// reqwest errors print the URL, which may carry credentials; keep the kind only.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    kind.to_owned()
}

/// The background loop started by `serve`; stops when `shutdown` is cancelled.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let interval = Duration::from_millis(state.settings.webhooks.poll_interval_ms);
    loop {
        let busy = match dispatch_once(&state).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::error!(error = %e, "webhook dispatcher pass failed");
                false
            }
        };
        if !busy {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_the_seed_with_bounded_jitter() {
        let now = Utc::now();
        for (attempts, base) in [(1, 60), (2, 300), (3, 900), (4, 3_600), (5, 21_600)] {
            for _ in 0..50 {
                let at = next_attempt(now, attempts).expect("retry");
                let ms = (at - now).num_milliseconds();
                assert!((base * 900..=base * 1100).contains(&ms), "{attempts}: {ms}");
            }
        }
        assert_eq!(next_attempt(now, 6), None, "dead after the 6th attempt");
        assert_eq!(next_attempt(now, 0), None);
    }
}
