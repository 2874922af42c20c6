//! Payme (Paycom) Merchant API: Payme calls `POST /v1/payme` (JSON-RPC 2.0, Basic auth
//! `Paycom:<key>`); the payer pays on Payme's checkout page, reached by the link built here.

mod checkout;
pub mod errors;
pub mod key;
pub mod rpc;

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};

use self::errors::PaymeError;
use self::key::{key_from_header, PaymeKey};
use self::rpc::Call;
use super::{Provider, ProviderContext, ProviderError, RefundPolicy};
use crate::api::client_ip::{self, Caller};
use crate::config::PaymeSettings;
use crate::domain::{
    truncate_to_millis, NewPayment, Payment, PaymentStatus, ProviderKind, TransactionUpdate,
};
use crate::state::AppState;
use crate::store::{Store, StoreError};

pub use key::LOGIN;

pub struct Payme {
    settings: PaymeSettings,
    key: Arc<PaymeKey>,
    store: Arc<dyn Store>,
    clock: Arc<dyn crate::state::Clock>,
}

impl Payme {
    /// The payment's transaction still in state 1 once its 12 hours ran out, ended as Payme
    /// would end it: state -1 with reason 4 (§1.7), so CheckTransaction and GetStatement say
    /// so before Payme calls again.
    async fn end_timed_out(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        let live = self
            .store
            .list_transactions(&payment.id)
            .await?
            .into_iter()
            .find(|t| t.state == rpc::STATE_CREATED);
        Ok(live.map(|t| TransactionUpdate {
            cancel_time: Some(truncate_to_millis(now).timestamp_millis()),
            reason: Some(rpc::REASON_TIMEOUT),
            ..TransactionUpdate::to_state(&t, rpc::STATE_CANCELLED, now)
        }))
    }

    pub fn new(ctx: &ProviderContext) -> Self {
        Payme {
            key: ctx.payme_key.clone(),
            settings: ctx.settings.payme.clone(),
            store: ctx.store.clone(),
            clock: ctx.clock.clone(),
        }
    }
}

#[async_trait]
impl Provider for Payme {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Payme
    }

    async fn start(&self, payment: &NewPayment) -> Result<Value, ProviderError> {
        let mut data = json!({ "checkout_url": checkout::checkout_url(&self.settings, payment)? });
        // Kept for CheckPerformTransaction, which answers with it as `detail` (§1.6).
        if let Some(receipt) = &payment.receipt {
            data["detail"] =
                serde_json::to_value(receipt).map_err(|e| ProviderError::InvalidRequest {
                    field: "receipt",
                    message: e.to_string(),
                })?;
        }
        Ok(data)
    }

    /// The Merchant API has no refund call: Payme refunds from its merchant cabinet and then
    /// cancels the performed transaction (§1.6 CancelTransaction), which records the refund here.
    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy::Elsewhere(
            "Payme payments are refunded in the Payme merchant cabinet; Payme then cancels the \
             transaction (CancelTransaction) and the payment becomes refunded here",
        )
    }

    /// A transaction in state 1 reserves the order until Payme performs or cancels it, or its
    /// 12 hours run out (§1.6, §1.7): the merchant's cancel waits for that. Otherwise Payme
    /// would perform it and be refused while CheckTransaction still said state 1.
    async fn cancel(&self, payment: &Payment) -> Result<(), ProviderError> {
        let now_ms = self.clock.now().timestamp_millis();
        let live = self
            .store
            .list_transactions(&payment.id)
            .await
            .map_err(|e| ProviderError::Unavailable(ProviderKind::Payme, e.into()))?
            .into_iter()
            .find(|t| rpc::holds_order(t, now_ms));
        match live {
            Some(t) => Err(ProviderError::Rejected {
                provider: ProviderKind::Payme,
                code: "payment_in_progress".into(),
                message: format!(
                    "Payme transaction {} holds the order until Payme performs or cancels it \
                     (at most 12 h after it began); cancel after that, or once paid refund it in \
                     the Payme merchant cabinet",
                    t.external_id
                ),
            }),
            None => Ok(()),
        }
    }

    /// An expired payment's transaction is one Payme's 12 hours ran out on (expiry keeps the
    /// payment while one is younger): it ends in the same change (see `end_timed_out`).
    async fn attempt_settlement(
        &self,
        payment: &Payment,
        to: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        if to != PaymentStatus::Expired {
            return Ok(None);
        }
        self.end_timed_out(payment, now).await
    }

    /// The merchant's cancel goes through only once no transaction holds the order (`cancel`
    /// above), so one still in state 1 is past its 12 hours and ends with the cancel.
    async fn attempt_settlement_on_merchant_cancel(
        &self,
        payment: &Payment,
        now: DateTime<Utc>,
    ) -> Result<Option<TransactionUpdate>, StoreError> {
        self.end_timed_out(payment, now).await
    }

    fn routes(self: Arc<Self>) -> Router<AppState> {
        Router::new().route(
            "/v1/payme",
            any(
                move |State(state): State<AppState>,
                      Caller(caller): Caller,
                      method: Method,
                      headers: HeaderMap,
                      body: Body| {
                    let payme = self.clone();
                    async move { endpoint(&state, &payme, caller, &method, &headers, body).await }
                },
            ),
        )
    }
}

/// The JSON-RPC endpoint. Every answer is HTTP 200 (Payme reads any other status as -32400),
/// echoes the request `id`, and carries either `result` or `error`.
async fn endpoint(
    state: &AppState,
    payme: &Payme,
    caller: Option<IpAddr>,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // Payme must get JSON-RPC in HTTP 200 even when tolov fails: answer -32400 ("retry")
    // before the server-wide timeout would answer 503. That timeout counts from the request's
    // arrival, and so does this deadline (the body is read within it).
    let deadline = Instant::from_std(crate::telemetry::arrived())
        + Duration::from_secs(state.settings.server.request_timeout_secs) * 9 / 10;
    // Authenticate from the headers before waiting for anything else: a caller without the key
    // is told -32504 whatever its body or the database are doing (§1.2).
    let access = if client_ip::admitted(caller, &payme.settings.allowed_ips) {
        authenticate(state, payme, method, headers, deadline).await
    } else {
        tracing::warn!(security = true, caller = ?caller, "payme call from outside payme.allowed_ips refused");
        Err(PaymeError::InsufficientPrivilege)
    };
    // Read also for a refused call, so that its answer carries the request's id.
    let (body, read_in_time) = match timeout_at(
        deadline,
        axum::body::to_bytes(body, state.settings.server.body_limit_bytes),
    )
    .await
    {
        Ok(read) => (read.ok(), true),
        Err(_) => (None, false),
    };
    let unreadable = body.is_none();
    let parsed: Option<Value> = body.and_then(|b| serde_json::from_slice(&b).ok());
    // JSON-RPC 2.0: an id that is neither a number nor a string is not the request's id, and
    // the answer's is null (the call itself is refused, -32600).
    let id = parsed
        .as_ref()
        .and_then(|v| v.get("id"))
        .filter(|id| id.is_number() || id.is_string())
        .cloned()
        .unwrap_or(Value::Null);
    let rpc_method = parsed
        .as_ref()
        .and_then(|v| v.get("method"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let outcome = match access {
        Err(e) => Err(e),
        Ok(()) if !read_in_time => {
            tracing::error!("payme call's body arrived too slowly; answered -32400");
            Err(PaymeError::Internal)
        }
        Ok(()) => {
            // A panic is -32400 too, instead of the server-wide 500. Each change is one atomic
            // compare-and-set, so a call cut short is done, not done, or done shortly after (a
            // statement waiting on a lock may still commit once it gets it), never half done;
            // Payme's retry gets the idempotent answer.
            let work = AssertUnwindSafe(dispatch(state, payme, parsed, unreadable)).catch_unwind();
            match timeout_at(deadline, work).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => {
                    tracing::error!(rpc_method, "payme call panicked; answered -32400");
                    Err(PaymeError::Internal)
                }
                Err(_) => {
                    tracing::error!(rpc_method, "payme call took too long; answered -32400");
                    Err(PaymeError::Internal)
                }
            }
        }
    };
    match &outcome {
        Ok(_) => tracing::info!(rpc_method, "payme call answered"),
        Err(e) => tracing::info!(rpc_method, code = e.code(), "payme call refused"),
    }
    let body = match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    };
    let mut res = Json(body).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

/// -32300 for anything but POST, then `Paycom:<key>` checked in constant time (-32504). A read
/// of the stored key that outlasts the deadline is -32400 ("retry") only for the key last
/// known to be right; any other caller learns nothing of the database (-32504).
async fn authenticate(
    state: &AppState,
    payme: &Payme,
    method: &Method,
    headers: &HeaderMap,
    deadline: Instant,
) -> Result<(), PaymeError> {
    if method != Method::POST {
        return Err(PaymeError::NotPost);
    }
    let Some(presented) = key_from_header(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) else {
        return Err(PaymeError::InsufficientPrivilege);
    };
    let verify = payme
        .key
        .verify(state.store.as_ref(), &presented, state.now());
    match timeout_at(deadline, AssertUnwindSafe(verify).catch_unwind()).await {
        Ok(Ok(Ok(true))) => Ok(()),
        Ok(Ok(Ok(false))) => Err(PaymeError::InsufficientPrivilege),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_)) | Err(_) if payme.key.is_last_known(&presented) => {
            tracing::error!("payme key check failed or took too long; answered -32400");
            Err(PaymeError::Internal)
        }
        Ok(Err(_)) | Err(_) => Err(PaymeError::InsufficientPrivilege),
    }
}

async fn dispatch(
    state: &AppState,
    payme: &Payme,
    parsed: Option<Value>,
    unreadable: bool,
) -> Result<Value, PaymeError> {
    if unreadable {
        return Err(PaymeError::InvalidRequest(
            "the request body is too large or unreadable".into(),
        ));
    }
    let request = parsed.ok_or(PaymeError::Parse)?;
    let envelope = request
        .as_object()
        .ok_or_else(|| PaymeError::InvalidRequest("the request must be an object".into()))?;
    match envelope.get("id") {
        Some(Value::Number(_) | Value::String(_)) => {}
        _ => {
            return Err(PaymeError::InvalidRequest(
                "id must be a number (or a string)".into(),
            ))
        }
    }
    let rpc_method = envelope
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| PaymeError::InvalidRequest("method must be a string".into()))?;
    if !METHODS.contains(&rpc_method) {
        return Err(PaymeError::MethodNotFound(rpc_method.to_owned()));
    }
    let params = envelope
        .get("params")
        .and_then(Value::as_object)
        .ok_or_else(|| PaymeError::InvalidRequest("params must be an object".into()))?;
    let call = Call {
        state,
        payme,
        params,
        // Storage keeps milliseconds: rows built in memory then equal what a read returns.
        now: truncate_to_millis(state.now()),
    };
    match rpc_method {
        "CheckPerformTransaction" => call.check_perform().await,
        "CreateTransaction" => call.create().await,
        "PerformTransaction" => call.perform().await,
        "CancelTransaction" => call.cancel().await,
        "CheckTransaction" => call.check().await,
        "GetStatement" => call.statement().await,
        "ChangePassword" => call.change_password().await,
        "SetFiscalData" => call.set_fiscal_data().await,
        other => Err(PaymeError::MethodNotFound(other.to_owned())),
    }
}

/// The methods of §1.6; any other name is -32601, whatever else the request holds.
const METHODS: [&str; 8] = [
    "CheckPerformTransaction",
    "CreateTransaction",
    "PerformTransaction",
    "CancelTransaction",
    "CheckTransaction",
    "GetStatement",
    "ChangePassword",
    "SetFiscalData",
];

/// Payme Merchant API (called by Payme, not by merchants): JSON-RPC 2.0 with Basic auth
/// `Paycom:<key>`; methods CheckPerformTransaction, CreateTransaction, PerformTransaction,
/// CancelTransaction, CheckTransaction, GetStatement, ChangePassword, SetFiscalData. Every answer
/// is HTTP 200 with `result` or `error {code, message {ru, uz, en}, data}`.
#[utoipa::path(post, path = "/v1/payme", tag = "providers",
    request_body(content = Object, content_type = "application/json", description = "{\"method\", \"params\", \"id\"}"),
    responses((status = 200, description = "JSON-RPC answer: result or error", content_type = "application/json")))]
pub fn payme_endpoint_doc() {}
