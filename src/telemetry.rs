//! Logs (tracing, JSON in production), request ids and Prometheus metrics.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, Mode, Settings};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. Safe to call twice.
pub fn init_tracing(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log.level.clone()));
    let json = match settings.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => settings.mode == Mode::Production,
    };
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The span every request runs in; its fields appear on every log line inside it.
pub fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        payment_id = tracing::field::Empty,
    )
}

/// Handle to the process-wide Prometheus recorder (one per process: the `metrics` facade is global).
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    pub fn global() -> Metrics {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed already (only possible in odd embeddings):
                // keep a private one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        });
        Metrics {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}

tokio::task_local! {
    /// When the request being served arrived (set by [`track_http`]), so a deadline inside a
    /// handler counts from where the server-wide timeout counts, before the body was read.
    static ARRIVED: Instant;
}

/// When the request this task serves arrived; now, outside a request.
pub fn arrived() -> Instant {
    ARRIVED
        .try_with(|at| *at)
        .unwrap_or_else(|_| Instant::now())
}

/// `work` knowing when this task's request arrived: for work spawned on its behalf.
pub fn with_arrival<F: std::future::Future>(
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    ARRIVED.scope(arrived(), work)
}

/// Counts requests and records latency per route (the matched pattern, never the raw path, so
/// payment ids do not explode the label set) and method (made-up ones as `OTHER`).
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // Anyone can send any method; only the standard ones become label values.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().as_str().to_owned(),
        _ => "OTHER".to_owned(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = ARRIVED.scope(start, next.run(req)).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("tolov_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tolov_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    res
}
