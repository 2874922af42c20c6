//! OAuth client-credentials tokens for the providers we call (ATMOS, Halyk ePay), cached in
//! memory per process. One refresh at a time (callers on a cold or expired cache wait for the
//! same request), `expires_in` honoured with a safety margin, and one refresh-and-retry when a
//! provider says the token is no longer valid. Tokens are `SecretString`s and never logged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::state::Clock;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("token endpoint unreachable")]
    Transport(#[source] reqwest::Error),
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("token endpoint answered something that is not a token: {0}")]
    Malformed(String),
    /// The fetch this caller waited for failed: its answer, not a second request.
    #[error("the token fetch this call waited for failed: {0}")]
    Shared(String),
}

/// How the client credentials travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsIn {
    /// `Authorization: Basic base64(id:secret)` (ATMOS).
    BasicAuth,
    /// `client_id` / `client_secret` form fields (ePay).
    FormBody,
}

/// Where and how to get a token.
#[derive(Clone)]
pub struct ClientCredentials {
    pub url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub credentials_in: CredentialsIn,
    /// Extra form fields besides `grant_type=client_credentials` (ePay: scope, …).
    pub extra: Vec<(String, String)>,
    pub http: reqwest::Client,
}

struct Cached {
    token: SecretString,
    valid_until: DateTime<Utc>,
}

pub struct TokenCache {
    source: ClientCredentials,
    clock: Arc<dyn Clock>,
    // Held across the refresh request: that is what makes the refresh single-flight.
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// When the last fetch failed, and why: callers that were waiting for it share it.
    failed: Option<(std::time::Instant, String)>,
}

/// A provider's answer meaning "this token is not (or no longer) valid": refresh and retry once.
#[derive(Debug)]
pub struct TokenRejected;

/// `expires_in` as a number or a numeric string (ePay sends either).
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<Value>,
}

/// A token is refreshed at least daily, whatever lifetime the provider gives it.
const MAX_LIFETIME_SECS: i64 = 86_400;

/// Refresh this long before the provider's expiry: a tenth of the lifetime, at most a minute.
pub fn margin(expires_in: i64) -> i64 {
    (expires_in / 10).min(60)
}

impl TokenCache {
    pub fn new(source: ClientCredentials, clock: Arc<dyn Clock>) -> Self {
        TokenCache {
            source,
            clock,
            slot: tokio::sync::Mutex::new(Slot::default()),
        }
    }

    /// A valid token, fetching one if the cache is empty or about to expire. A fetch that
    /// fails while others wait for it fails them too (one request, not one per caller, each
    /// after the previous one's timeout); a caller that comes after it asks again.
    pub async fn token(&self) -> Result<SecretString, OAuthError> {
        let asked = std::time::Instant::now();
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.cached.as_ref() {
            if c.valid_until > self.clock.now() {
                return Ok(c.token.clone());
            }
        }
        if let Some((at, why)) = &slot.failed {
            if *at >= asked {
                return Err(OAuthError::Shared(why.clone()));
            }
        }
        match self.fetch().await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *slot = Slot {
                    cached: Some(fresh),
                    failed: None,
                };
                Ok(token)
            }
            Err(e) => {
                slot.failed = Some((std::time::Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Forgets `stale` (and only it: a token another caller already refreshed stays).
    pub async fn invalidate(&self, stale: &SecretString) {
        let mut slot = self.slot.lock().await;
        if slot
            .cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == stale.expose_secret())
        {
            slot.cached = None;
        }
    }

    /// Runs `call` with a token; if the provider rejects the token, refreshes it and runs
    /// `call` once more.
    pub async fn with_token<T, E, F, Fut>(
        &self,
        token_error: impl Fn(OAuthError) -> E,
        call: F,
    ) -> Result<T, E>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = Result<Result<T, E>, TokenRejected>>,
    {
        let token = self.token().await.map_err(&token_error)?;
        match call(token.clone()).await {
            Ok(result) => result,
            Err(TokenRejected) => {
                tracing::info!(url = %self.source.url, "provider rejected the OAuth token; refreshing once");
                self.invalidate(&token).await;
                let token = self.token().await.map_err(&token_error)?;
                match call(token).await {
                    Ok(result) => result,
                    Err(TokenRejected) => Err(token_error(OAuthError::Status(401))),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let s = &self.source;
        let mut form: Vec<(String, String)> =
            vec![("grant_type".into(), "client_credentials".into())];
        let mut req = s.http.post(&s.url).timeout(Duration::from_secs(15));
        match s.credentials_in {
            CredentialsIn::BasicAuth => {
                let basic = STANDARD.encode(format!(
                    "{}:{}",
                    s.client_id,
                    s.client_secret.expose_secret()
                ));
                req = req.header("Authorization", format!("Basic {basic}"));
            }
            CredentialsIn::FormBody => {
                form.push(("client_id".into(), s.client_id.clone()));
                form.push((
                    "client_secret".into(),
                    s.client_secret.expose_secret().to_owned(),
                ));
            }
        }
        form.extend(s.extra.iter().cloned());
        let res = req
            .form(&form)
            .send()
            .await
            .map_err(OAuthError::Transport)?;
        if !res.status().is_success() {
            return Err(OAuthError::Status(res.status().as_u16()));
        }
        let answer: TokenAnswer = res
            .json()
            .await
            .map_err(|e| OAuthError::Malformed(format!("not JSON ({e})")))?;
        let token = answer
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::Malformed("no access_token".into()))?;
        let expires_in = answer
            .expires_in
            .as_ref()
            .and_then(seconds)
            .filter(|s| *s > 0)
            .ok_or_else(|| OAuthError::Malformed("no positive expires_in".into()))?
            // Longer lifetimes buy nothing, and an absurd one would overflow the clock.
            .min(MAX_LIFETIME_SECS);
        let valid_until =
            self.clock.now() + chrono::Duration::seconds(expires_in - margin(expires_in));
        tracing::info!(url = %s.url, expires_in, "OAuth token refreshed");
        Ok(Cached {
            token: SecretString::from(token),
            valid_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use wiremock::matchers::{body_string_contains, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::state::ManualClock;

    fn cache(server: &MockServer, clock: Arc<ManualClock>, style: CredentialsIn) -> TokenCache {
        TokenCache::new(
            ClientCredentials {
                url: format!("{}/token", server.uri()),
                client_id: "key".into(),
                client_secret: SecretString::from("secret"),
                credentials_in: style,
                extra: vec![("scope".into(), "payment".into())],
                http: reqwest::Client::new(),
            },
            clock,
        )
    }

    /// Answers tokens "t1", "t2", … so a test can tell fetches apart.
    async fn token_server(expires_in: Value) -> (MockServer, Arc<AtomicUsize>) {
        let server = MockServer::start().await;
        let n = Arc::new(AtomicUsize::new(0));
        let counter = n.clone();
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=client_credentials"))
            .respond_with(move |_: &wiremock::Request| {
                let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": format!("t{i}"), "token_type": "Bearer", "expires_in": expires_in}))
                    .set_delay(Duration::from_millis(50))
            })
            .mount(&server)
            .await;
        (server, n)
    }

    #[tokio::test]
    async fn a_hundred_callers_on_a_cold_cache_make_one_request() {
        let (server, n) = token_server(json!(3600)).await;
        let c = Arc::new(cache(
            &server,
            Arc::new(ManualClock::default()),
            CredentialsIn::BasicAuth,
        ));
        let tokens = futures::future::join_all((0..100).map(|_| {
            let c = c.clone();
            async move { c.token().await.map(|t| t.expose_secret().to_owned()) }
        }))
        .await;
        assert!(tokens.iter().all(|t| t.as_deref().ok() == Some("t1")));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    /// A failed fetch is the answer for every caller that was waiting for it: ten callers on a
    /// cold cache with the endpoint down make one request and hear at once, instead of queueing
    /// for ten timeouts one after another. A caller that comes later tries again.
    #[tokio::test]
    async fn callers_waiting_for_a_fetch_that_fails_share_its_failure() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_millis(300)))
            .mount(&server)
            .await;
        let c = Arc::new(cache(
            &server,
            Arc::new(ManualClock::default()),
            CredentialsIn::BasicAuth,
        ));
        let started = std::time::Instant::now();
        let answers = futures::future::join_all((0..10).map(|_| {
            let c = c.clone();
            async move { c.token().await }
        }))
        .await;
        assert!(answers.iter().all(Result::is_err));
        let requests = server.received_requests().await.expect("recorded").len();
        assert_eq!(requests, 1, "one request for ten waiting callers");
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
        assert!(c.token().await.is_err());
        assert_eq!(
            server.received_requests().await.expect("recorded").len(),
            2,
            "a later caller asks again"
        );
    }

    #[tokio::test]
    async fn expires_in_is_honoured_with_a_margin() {
        let (server, n) = token_server(json!("3600")).await;
        let clock = Arc::new(ManualClock::default());
        let c = cache(&server, clock.clone(), CredentialsIn::BasicAuth);
        assert_eq!(c.token().await.expect("token").expose_secret(), "t1");
        clock.advance(chrono::Duration::seconds(3539));
        assert_eq!(
            c.token().await.expect("token").expose_secret(),
            "t1",
            "still inside the margin"
        );
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(
            c.token().await.expect("token").expose_secret(),
            "t2",
            "refreshed a minute early"
        );
        assert_eq!(n.load(Ordering::SeqCst), 2);
        assert_eq!((margin(3600), margin(300), margin(5)), (60, 30, 0));
    }

    #[tokio::test]
    async fn an_absurd_lifetime_is_capped_at_a_day_instead_of_overflowing() {
        let (server, n) = token_server(json!(9_000_000_000_000_000i64)).await;
        let clock = Arc::new(ManualClock::default());
        let c = cache(&server, clock.clone(), CredentialsIn::BasicAuth);
        assert_eq!(c.token().await.expect("token").expose_secret(), "t1");
        clock.advance(chrono::Duration::hours(23));
        assert_eq!(c.token().await.expect("token").expose_secret(), "t1");
        clock.advance(chrono::Duration::hours(1));
        assert_eq!(c.token().await.expect("token").expose_secret(), "t2");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_rejected_token_is_refreshed_and_the_call_retried_once() {
        let (server, n) = token_server(json!(3600)).await;
        let c = cache(
            &server,
            Arc::new(ManualClock::default()),
            CredentialsIn::BasicAuth,
        );
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let result: Result<&str, OAuthError> = c
            .with_token(
                |e| e,
                |t| {
                    let seen = seen.clone();
                    async move {
                        let t = t.expose_secret().to_owned();
                        seen.lock().expect("lock").push(t.clone());
                        if t == "t1" {
                            Err(TokenRejected)
                        } else {
                            Ok(Ok("paid"))
                        }
                    }
                },
            )
            .await;
        assert_eq!(result.expect("retried"), "paid");
        assert_eq!(*seen.lock().expect("lock"), ["t1", "t2"]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // A second rejection in a row is an error, not a loop.
        let always: Result<(), OAuthError> =
            c.with_token(|e| e, |_| async { Err(TokenRejected) }).await;
        assert!(matches!(always, Err(OAuthError::Status(401))));
    }

    #[tokio::test]
    async fn credentials_travel_as_the_provider_expects() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(header(
                "authorization",
                format!("Basic {}", STANDARD.encode("key:secret")).as_str(),
            ))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": "basic", "expires_in": 60})),
            )
            .mount(&server)
            .await;
        let c = cache(
            &server,
            Arc::new(ManualClock::default()),
            CredentialsIn::BasicAuth,
        );
        assert_eq!(c.token().await.expect("token").expose_secret(), "basic");

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("client_id=key"))
            .and(body_string_contains("client_secret=secret"))
            .and(body_string_contains("scope=payment"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": "form", "expires_in": "60"})),
            )
            .mount(&server)
            .await;
        let c = cache(
            &server,
            Arc::new(ManualClock::default()),
            CredentialsIn::FormBody,
        );
        assert_eq!(c.token().await.expect("token").expose_secret(), "form");
    }

    #[tokio::test]
    async fn bad_token_answers_are_errors_and_nothing_is_cached() {
        for (status, body) in [
            (500, json!({"error": "down"})),
            (401, json!({"error": "invalid_client"})),
            (200, json!({"token_type": "Bearer"})),
            (200, json!({"access_token": "x", "expires_in": "soon"})),
            (200, json!({"access_token": "x", "expires_in": 0})),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(status).set_body_json(body.clone()))
                .expect(2)
                .mount(&server)
                .await;
            let c = cache(
                &server,
                Arc::new(ManualClock::default()),
                CredentialsIn::BasicAuth,
            );
            assert!(c.token().await.is_err(), "{status} {body}");
            assert!(c.token().await.is_err(), "not cached: {status} {body}");
        }
        let unreachable = TokenCache::new(
            ClientCredentials {
                url: "http://127.0.0.1:9/token".into(),
                client_id: "k".into(),
                client_secret: SecretString::from("s"),
                credentials_in: CredentialsIn::BasicAuth,
                extra: vec![],
                http: reqwest::Client::new(),
            },
            Arc::new(ManualClock::default()),
        );
        assert!(matches!(
            unreachable.token().await,
            Err(OAuthError::Transport(_))
        ));
    }

    #[test]
    fn tokens_do_not_show_in_debug_output() {
        let s = SecretString::from("very-secret-token");
        assert!(!format!("{s:?}").contains("very-secret-token"));
    }
}
