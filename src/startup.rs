//! Builds the application: store, providers, router and listener; runs it until shut down.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{middleware, BoxError, Router};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api;
use crate::api::auth::digest;
use crate::checkout;
use crate::config::Settings;
use crate::error::ApiError;
use crate::providers::payme::key::PaymeKey;
use crate::providers::{Provider, ProviderContext, ProviderRegistry};
use crate::state::{AppState, Clock, SystemClock};
use crate::store;
use crate::telemetry::{self, Metrics, REQUEST_ID_HEADER};

/// Things tests (and embedders) may replace.
#[derive(Default)]
pub struct Overrides {
    pub clock: Option<Arc<dyn Clock>>,
    /// Registered after (and so replacing) the configured providers of the same kind.
    pub providers: Vec<Arc<dyn Provider>>,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Overrides::default()).await
    }

    pub async fn build_with(settings: Settings, overrides: Overrides) -> anyhow::Result<Self> {
        let store = store::connect(&settings.database).await?;
        // No redirects: a provider call or a webhook reaches exactly the configured URL, and a
        // 3xx is an answer of its own (a webhook receiver answering one has not taken the event).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("tolov/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let listener = TcpListener::bind(settings.server.listen).await?;
        let local = listener.local_addr()?;
        let self_host = if local.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local.ip().to_string()
        };
        let self_url = format!("http://{self_host}:{}", local.port());
        let settings = Arc::new(settings);
        let clock = overrides.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let payme_key = Arc::new(PaymeKey::new(&settings.payme.key));
        let ctx = ProviderContext {
            payme_key: payme_key.clone(),
            clock: clock.clone(),
            settings: settings.clone(),
            http: http.clone(),
            store: store.clone(),
            self_url: self_url.clone(),
        };
        let mut providers = ProviderRegistry::from_context(&ctx);
        for p in overrides.providers {
            providers.register(p);
        }
        let api_key_digests = settings
            .api
            .keys
            .iter()
            .map(|k| digest(k.expose_secret()))
            .collect();
        let state = AppState {
            self_url,
            settings,
            store,
            providers: Arc::new(providers),
            http,
            clock,
            metrics: Metrics::global(),
            api_key_digests: Arc::new(api_key_digests),
            payme_key,
        };
        let router = router(state.clone());
        Ok(Application {
            listener,
            router,
            state,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token stops accepting connections; in-flight requests finish.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves HTTP and runs the background workers until the shutdown token is cancelled;
    /// in-flight requests and each worker's current pass finish first.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let token = self.shutdown.clone();
        let workers = spawn_workers(&self.state, &token);
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
        self.shutdown.cancel();
        for worker in workers {
            let _ = worker.await;
        }
        served
    }
}

fn spawn_workers(state: &AppState, token: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::workers::{every, expiry, reconcile};
    let s = &state.settings;
    let mut handles = Vec::new();
    if s.webhooks.enabled {
        handles.push(tokio::spawn(crate::webhooks::dispatcher::run(
            state.clone(),
            token.clone(),
        )));
    }
    if s.webhooks.enabled && s.webhooks.retention_days > 0 {
        let st = state.clone();
        handles.push(tokio::spawn(every(
            Duration::from_secs(3_600),
            token.clone(),
            "outbox retention",
            move || {
                let st = st.clone();
                async move {
                    crate::webhooks::dispatcher::prune_once(&st).await.map(|n| {
                        if n == 0 {
                            String::new()
                        } else {
                            format!("{n} delivered messages deleted")
                        }
                    })
                }
            },
        )));
    }
    if s.workers.expiry_enabled {
        let st = state.clone();
        let interval = Duration::from_secs(s.workers.expiry_interval_secs);
        handles.push(tokio::spawn(every(
            interval,
            token.clone(),
            "expiry",
            move || {
                let st = st.clone();
                async move {
                    expiry::expire_once(&st).await.map(|r| {
                        if r == Default::default() {
                            String::new()
                        } else {
                            format!("{r:?}")
                        }
                    })
                }
            },
        )));
    }
    if s.workers.reconcile_enabled {
        let st = state.clone();
        let interval = Duration::from_secs(s.workers.reconcile_interval_secs);
        let after = chrono::Duration::minutes(s.workers.reconcile_after_minutes);
        handles.push(tokio::spawn(every(
            interval,
            token.clone(),
            "reconcile",
            move || {
                let st = st.clone();
                async move {
                    let since = st.now() - after;
                    reconcile::reconcile_once(&st, since).await.map(|r| {
                        if r == Default::default() {
                            String::new()
                        } else {
                            format!("{r:?}")
                        }
                    })
                }
            },
        )));
    }
    handles
}

pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    let timeout = Duration::from_secs(settings.server.request_timeout_secs);
    let mut routes = Router::new()
        .merge(api::router())
        .merge(checkout::router())
        .merge(state.providers.routes());
    if settings.is_sandbox() {
        routes = routes.merge(crate::sandbox::router());
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(telemetry::track_http))
        .layer(DefaultBodyLimit::max(settings.server.body_limit_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        "internal error; it has been logged",
                    )
                    .into_response()
                }))
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::unavailable("request_timeout", "the request took too long; retry")
                        .into_response()
                }))
                .timeout(timeout),
        )
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
    .into_response()
}
