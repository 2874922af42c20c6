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

pub const LEASE_SECS: i64 = 60;
const BATCH: u32 = 32;

/// When to try again after `attempts` failed attempts (counting the one that just failed), by
/// `webhooks.retry_schedule_secs`; `None` once the schedule is used up (the message is dead).
/// Jitter of ±10 % keeps a recovering receiver from being hit by every retry at once. A
/// receiver's `Retry-After` is honoured within [delay, 2 × delay], as svix does: it can slow
/// the schedule down, but neither stall a message nor hurry it; the jitter then only adds.
pub fn next_attempt(
    schedule: &[u64],
    now: DateTime<Utc>,
    attempts: i64,
    retry_after: Option<Duration>,
) -> Option<DateTime<Utc>> {
    let idx = usize::try_from(attempts - 1).ok()?;
    let base = i64::try_from(*schedule.get(idx)?)
        .ok()?
        .saturating_mul(1000);
    let (delay, jitter) = match retry_after {
        Some(asked) => {
            let asked = i64::try_from(asked.as_millis()).unwrap_or(i64::MAX);
            let delay = asked.clamp(base, base.saturating_mul(2));
            (delay, rand::thread_rng().gen_range(0..=delay / 10))
        }
        None => (base, rand::thread_rng().gen_range(-(base / 10)..=base / 10)),
    };
    Some(now + chrono::Duration::milliseconds(delay + jitter))
}

/// `Retry-After` of a 429 or 503 answer (RFC 9110 §10.2.3): seconds, or an HTTP date.
fn retry_after(res: &reqwest::Response, now: DateTime<Utc>) -> Option<Duration> {
    let status = res.status();
    if status != reqwest::StatusCode::TOO_MANY_REQUESTS
        && status != reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        return None;
    }
    parse_retry_after(
        res.headers()
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?,
        now,
    )
}

fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - now).to_std().ok()
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
    let now = state.now();
    let (ok, http_status, error, asked_delay) = match sent {
        Ok(res) if res.status().is_success() => {
            (true, Some(i64::from(res.status().as_u16())), None, None)
        }
        Ok(res) => (
            false,
            Some(i64::from(res.status().as_u16())),
            Some(format!("HTTP {}", res.status())),
            retry_after(&res, now),
        ),
        Err(e) if e.is_timeout() => (false, None, Some("timed out".to_owned()), None),
        Err(e) => (false, None, Some(without_url(&e)), None),
    };
    let attempts = m.attempts + 1;
    let schedule = &state.settings.webhooks.retry_schedule_secs;
    let (status, next) = if ok {
        (DeliveryStatus::Delivered, now)
    } else {
        match next_attempt(schedule, now, attempts, asked_delay) {
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

/// Delivered messages pruned per statement, so one pass never holds a long lock.
const PRUNE_BATCH: u32 = 1_000;

/// Deletes the delivered messages older than `webhooks.retention_days` (none when it is 0),
/// batch after batch; returns how many.
pub async fn prune_once(state: &AppState) -> Result<u64, StoreError> {
    let days = state.settings.webhooks.retention_days;
    if days == 0 {
        return Ok(0);
    }
    let before = state.now() - chrono::Duration::days(i64::from(days));
    let mut total = 0;
    loop {
        let n = state
            .store
            .prune_delivered_outbox(before, PRUNE_BATCH)
            .await?;
        total += n;
        if n < u64::from(PRUNE_BATCH) {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
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

    const SEED: [u64; 5] = [60, 300, 900, 3_600, 21_600];

    #[test]
    fn schedule_follows_the_seed_with_bounded_jitter() {
        let now = Utc::now();
        for (attempts, base) in [(1, 60), (2, 300), (3, 900), (4, 3_600), (5, 21_600)] {
            for _ in 0..50 {
                let at = next_attempt(&SEED, now, attempts, None).expect("retry");
                let ms = (at - now).num_milliseconds();
                assert!((base * 900..=base * 1100).contains(&ms), "{attempts}: {ms}");
            }
        }
        assert_eq!(
            next_attempt(&SEED, now, 6, None),
            None,
            "dead after the 6th attempt"
        );
        assert_eq!(next_attempt(&SEED, now, 0, None), None);
        assert_eq!(next_attempt(&[], now, 1, None), None, "no retries at all");
    }

    #[test]
    fn retry_after_stretches_a_delay_up_to_twice_and_never_shortens_it() {
        let now = Utc::now();
        let secs = Duration::from_secs;
        for (asked, low, high) in [
            (secs(90), 90_000, 99_000),
            (secs(86_400), 120_000, 132_000),
            (secs(1), 60_000, 66_000),
        ] {
            for _ in 0..50 {
                let at = next_attempt(&SEED, now, 1, Some(asked)).expect("retry");
                let ms = (at - now).num_milliseconds();
                assert!((low..=high).contains(&ms), "{asked:?}: {ms}");
            }
        }
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:05:00 GMT", now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            None,
            "past"
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
