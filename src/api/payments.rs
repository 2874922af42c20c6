//! `/v1/payments`: create, read, list, cancel, events.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Duration;
use serde::Deserialize;

use super::auth::MerchantAuth;
use super::extract::{ApiPath, ApiQuery, JsonBody};
use super::idempotency;
use super::resource::{EventList, PaymentList, PaymentResource};
use super::text;
use crate::checkout::{client_secret, client_secret_hash};
use crate::domain::{
    truncate_to_millis, Actor, IdempotencyRecord, Language, NewEvent, NewPayment, Payment,
    PaymentId, PaymentQuery, PaymentStatus, ProviderKind, Receipt,
};
use crate::error::{ApiError, FieldError};
use crate::lifecycle::{self, LifecycleError};
use crate::money::{Currency, Money};
use crate::providers::ProviderError;
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// payme | click | atmos | epay
    pub provider: String,
    /// Minor units: 150000 = 1 500.00 UZS.
    pub amount: i64,
    /// UZS for payme/click/atmos, KZT for epay.
    pub currency: String,
    /// Your reference for the order (not unique: retries of one order may create several payments).
    pub order_id: String,
    pub description: Option<String>,
    pub return_url: Option<String>,
    /// uz | ru | en (default ru)
    pub language: Option<String>,
    /// Up to 50 keys, 8 KiB serialized; returned as given.
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
    /// Fiscal receipt lines (payme only): sent to Payme as CheckPerformTransaction `detail`.
    pub receipt: Option<Receipt>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub order_id: Option<String>,
    pub status: Option<String>,
    pub provider: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<u32>,
    /// A payment id: return payments created before it.
    pub starting_after: Option<String>,
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

struct Validated {
    provider: ProviderKind,
    amount: Money,
    order_id: String,
    description: Option<String>,
    return_url: Option<String>,
    language: Language,
    metadata: serde_json::Value,
    receipt: Option<Receipt>,
}

fn validate(state: &AppState, r: CreatePaymentRequest) -> Result<Validated, ApiError> {
    let mut errors = Vec::new();
    let provider = r.provider.parse::<ProviderKind>().map_err(|_| {
        errors.push(field(
            "provider",
            "must be one of payme, click, atmos, epay",
        ));
    });
    let currency = r.currency.parse::<Currency>().map_err(|_| {
        errors.push(field("currency", "must be UZS or KZT"));
    });
    if r.amount <= 0 {
        errors.push(field("amount", "must be a positive integer of minor units"));
    }
    if let Err(m) = text::single_line(&r.order_id, 128) {
        errors.push(field("order_id", m));
    }
    if let Some(Err(m)) = r.description.as_deref().map(|d| text::free_text(d, 500)) {
        errors.push(field("description", m));
    }
    if let Some(Err(m)) = r.return_url.as_deref().map(text::http_url) {
        errors.push(field("return_url", m));
    }
    let language = match r.language.as_deref() {
        None => Ok(Language::default()),
        Some(l) => l
            .parse::<Language>()
            .map_err(|_| errors.push(field("language", "must be uz, ru or en"))),
    };
    let metadata = r.metadata.unwrap_or_else(|| serde_json::json!({}));
    match metadata.as_object() {
        Some(m) if m.len() > 50 => errors.push(field("metadata", "may hold at most 50 keys")),
        Some(_) if metadata.to_string().len() > 8192 => {
            errors.push(field("metadata", "may be at most 8 KiB"))
        }
        Some(_) => {}
        None => errors.push(field("metadata", "must be a JSON object")),
    }
    if let Some(receipt) = &r.receipt {
        if provider.is_ok_and(|p| p != ProviderKind::Payme) {
            errors.push(field(
                "receipt",
                "fiscal receipt lines are taken by payme only",
            ));
        }
        errors.extend(receipt.problems().into_iter().map(|(f, m)| field(&f, m)));
    }
    let (Ok(provider), Ok(currency), Ok(language), true) =
        (provider, currency, language, errors.is_empty())
    else {
        return Err(ApiError::validation(errors));
    };
    if state.providers.get(provider).is_none() {
        return Err(ApiError::unprocessable(
            "provider_disabled",
            format!("provider {provider} is not enabled on this gateway"),
        ));
    }
    if provider.currency() != currency {
        return Err(ApiError::unprocessable(
            "currency_mismatch",
            format!("{provider} accepts only {}", provider.currency()),
        ));
    }
    let limits = state.settings.limits(provider);
    if r.amount < limits.min_amount() || r.amount > limits.max_amount() {
        return Err(ApiError::unprocessable(
            "amount_out_of_range",
            format!(
                "{provider} accepts amounts from {} to {} minor units",
                limits.min_amount(),
                limits.max_amount()
            ),
        ));
    }
    let amount = Money::from_minor(r.amount, currency)
        .map_err(|e| ApiError::validation(vec![field("amount", e.to_string())]))?;
    Ok(Validated {
        provider,
        amount,
        order_id: r.order_id,
        description: r.description,
        return_url: r.return_url,
        language,
        metadata,
        receipt: r.receipt,
    })
}

pub fn provider_error(e: ProviderError) -> ApiError {
    match e {
        ProviderError::Unsupported(p, what) => {
            ApiError::unprocessable("not_supported", format!("{p} does not support {what}"))
        }
        ProviderError::InvalidRequest {
            field: name,
            message,
        } => ApiError::validation(vec![field(name, message)]),
        ProviderError::Rejected {
            provider,
            code,
            message,
        } => ApiError::unprocessable(
            "provider_rejected",
            format!("{provider} refused the request ({code}): {message}"),
        ),
        ProviderError::Unavailable(p, source) => ApiError {
            source: Some(source),
            ..ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                format!("{p} could not be reached; retry later"),
            )
        },
        ProviderError::NotSent(p, source) => ApiError {
            source: Some(source),
            ..ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                format!("{p} could not be reached, so nothing was done; retry later"),
            )
        },
        ProviderError::Malformed(p, what) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_error",
            format!("{p} sent an answer tolov could not understand: {what}"),
        ),
    }
}

/// The stored creation response plus the client secret, which is never stored: as
/// `client_secret`, and in the hosted page's `checkout_url` as the fragment `#cs=…` (a fragment
/// never reaches a server's logs or a referrer).
fn creation_response(state: &AppState, status: u16, body: &str) -> Response {
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if let Some(id) = value
        .get("id")
        .and_then(|v| v.as_str())
        .and_then(PaymentId::parse)
    {
        let secret = client_secret(&state.settings, &id);
        if let Some(url) = value.get("checkout_url").and_then(|v| v.as_str()) {
            value["checkout_url"] = serde_json::Value::String(format!("{url}#cs={secret}"));
        }
        value["client_secret"] = serde_json::Value::String(secret);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    (status, Json(value)).into_response()
}

fn replayed(mut res: Response) -> Response {
    res.headers_mut().insert(
        idempotency::REPLAYED_HEADER,
        HeaderValue::from_static("true"),
    );
    res
}

/// Create a payment.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and body")),
    responses((status = 201, body = PaymentResource), (status = 400, body = crate::error::Problem),
        (status = 401, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, body = crate::error::Problem), (status = 502, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    headers: HeaderMap,
    body: JsonBody<CreatePaymentRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let hash = idempotency::request_hash("POST /v1/payments", &body.canonical);
    if let Some(k) = &key {
        if let Some(existing) = state.store.get_idempotency_key(&auth.scope, k).await? {
            if let Some((status, stored)) = idempotency::check_existing(&existing, &hash)? {
                return Ok(replayed(creation_response(&state, status, &stored)));
            }
        }
    }
    let v = validate(&state, body.value)?;
    let provider = state
        .providers
        .get(v.provider)
        .ok_or_else(|| ApiError::unprocessable("provider_disabled", "provider is not enabled"))?;
    let now = truncate_to_millis(state.now());
    let id = PaymentId::generate();
    tracing::Span::current().record("payment_id", tracing::field::display(&id));
    let secret = client_secret(&state.settings, &id);
    let mut new = NewPayment {
        id,
        order_id: v.order_id,
        provider: v.provider,
        amount: v.amount,
        description: v.description,
        return_url: v.return_url,
        language: v.language,
        metadata: v.metadata,
        provider_data: serde_json::json!({}),
        client_secret_hash: client_secret_hash(&secret),
        expires_at: now + Duration::minutes(state.settings.api.payment_ttl_minutes),
        created_at: now,
        receipt: v.receipt,
    };
    new.provider_data = provider.start(&new).await.map_err(provider_error)?;
    let body_json = PaymentResource::new(&state.settings, &Payment::from_new(&new))
        .to_json()
        .to_string();
    let record = key.as_ref().map(|k| IdempotencyRecord {
        scope: auth.scope.clone(),
        key: k.clone(),
        request_hash: hash.clone(),
        payment_id: Some(new.id.clone()),
        response_status: Some(StatusCode::CREATED.as_u16()),
        response_body: Some(body_json.clone()),
        created_at: now,
    });
    let event = NewEvent::created(&new, Actor::Merchant);
    match state
        .store
        .create_payment(&new, &event, record.as_ref())
        .await
    {
        Ok(_) => {
            tracing::info!(payment_id = %new.id, provider = %new.provider, amount = new.amount.minor(), "payment created");
            Ok(creation_response(
                &state,
                StatusCode::CREATED.as_u16(),
                &body_json,
            ))
        }
        // A concurrent request with the same key won: answer what it answered.
        Err(StoreError::Duplicate(what)) if what == "idempotency_keys" => {
            let k = key.as_deref().unwrap_or_default();
            let existing = state
                .store
                .get_idempotency_key(&auth.scope, k)
                .await?
                .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry shortly"))?;
            let (status, stored) = idempotency::check_existing(&existing, &hash)?
                .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry shortly"))?;
            Ok(replayed(creation_response(&state, status, &stored)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn load_payment(state: &AppState, id: &str) -> Result<Payment, ApiError> {
    let id = PaymentId::parse(id).ok_or_else(|| ApiError::not_found("payment"))?;
    tracing::Span::current().record("payment_id", tracing::field::display(&id));
    state
        .store
        .get_payment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))
}

/// Retrieve a payment.
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", params(("id" = String, Path)),
    responses((status = 200, body = PaymentResource), (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PaymentResource>, ApiError> {
    let payment = load_payment(&state, &id).await?;
    Ok(Json(
        PaymentResource::new(&state.settings, &payment)
            .with_payer_link(&state.settings, &payment.id),
    ))
}

/// List payments, newest first.
#[utoipa::path(get, path = "/v1/payments", tag = "payments", params(ListParams),
    responses((status = 200, body = PaymentList), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<PaymentList>, ApiError> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 100",
        ));
    }
    let status = params
        .status
        .as_deref()
        .map(|s| s.parse::<PaymentStatus>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let provider = params
        .provider
        .as_deref()
        .map(|s| s.parse::<ProviderKind>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let starting_after = params
        .starting_after
        .as_deref()
        .map(|s| {
            PaymentId::parse(s).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "starting_after must be a payment id")
            })
        })
        .transpose()?;
    if let Some(Err(m)) = params
        .order_id
        .as_deref()
        .map(|o| text::single_line(o, 128))
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("order_id {m}"),
        ));
    }
    let query = PaymentQuery {
        order_id: params.order_id,
        status,
        provider,
        starting_after,
        limit: limit + 1,
    };
    let mut rows = state.store.list_payments(&query).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_starting_after = if has_more {
        rows.last().map(|p| p.id.to_string())
    } else {
        None
    };
    Ok(Json(PaymentList {
        data: rows
            .iter()
            .map(|p| {
                PaymentResource::new(&state.settings, p).with_payer_link(&state.settings, &p.id)
            })
            .collect(),
        has_more,
        next_starting_after,
    }))
}

/// Cancel a payment that has not been paid.
#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "payments", params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Option<CancelRequest>),
    responses((status = 200, body = PaymentResource), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem),
        (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem),
        (status = 422, description = "the provider refused: money already moved (ATMOS already_debited, ePay or Click already_charged; the payment is then recorded succeeded at once, refund it instead) or a Payme transaction holds the order (payment_in_progress); provider_disabled while the payment's provider is switched off and may still take money", body = crate::error::Problem),
        (status = 502, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<CancelRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let hash =
        idempotency::request_hash(&format!("POST /v1/payments/{id}/cancel"), &body.canonical);
    let reason = body.value.reason;
    if let Some(Err(m)) = reason.as_deref().map(|r| text::free_text(r, 500)) {
        return Err(ApiError::validation(vec![field("reason", m)]));
    }
    let payment = load_payment(&state, &id).await?;
    idempotency::run_once(&state, &auth.scope, key, hash, move |state| async move {
        let mut payment = payment;
        for _ in 0..lifecycle::CAS_ATTEMPTS {
            if !payment.status.is_open() {
                return Err(not_cancelable(payment.status));
            }
            match state.providers.get(payment.provider) {
                Some(provider) => {
                    if let Err(e) = provider.cancel(&payment).await {
                        if e.money_moved() {
                            crate::workers::reconcile::reconcile_now(&state, &payment).await;
                        }
                        return Err(provider_error(e));
                    }
                }
                // Switched off, the provider cannot be asked or told, and nothing would ask it
                // later: a payment it may still take money for stays open until it is back.
                None if payment.status == PaymentStatus::Processing
                    || payment.provider.pending_may_be_paid() =>
                {
                    return Err(ApiError::unprocessable(
                        "provider_disabled",
                        format!(
                            "{} is switched off and may still take money for this payment; \
                             cancel it once the provider is enabled again",
                            payment.provider
                        ),
                    ))
                }
                None => {}
            }
            // Applied only to the version the provider's check saw: a payer's attempt that
            // began since (a Payme transaction, a Click prepare, an ePay block) is checked
            // again, and the provider's cancel run again for it (ePay's void of a block it
            // already voided finds it cancelled and does nothing).
            match merchant_change(
                &state,
                &payment,
                Some(payment.version),
                PaymentStatus::Canceled,
                reason.clone(),
                |t| not_cancelable(t.from),
            )
            .await
            {
                Ok(updated) => {
                    return Ok((
                        StatusCode::OK,
                        PaymentResource::new(&state.settings, &updated).to_json(),
                    ))
                }
                Err(e) if e.code == "concurrent_update" => {
                    payment = load_payment(&state, payment.id.as_str()).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(
            "concurrent_update",
            "the payment is being changed; retry",
        ))
    })
    .await
}

/// A status change the merchant asked for; `refuse` words the answer when the status moved on.
async fn merchant_change(
    state: &AppState,
    payment: &Payment,
    only_version: Option<i64>,
    to: PaymentStatus,
    reason: Option<String>,
    refuse: impl Fn(crate::domain::TransitionError) -> ApiError,
) -> Result<Payment, ApiError> {
    let now = truncate_to_millis(state.now());
    let provider = state.providers.get(payment.provider);
    lifecycle::merchant_status_change(
        state.store.as_ref(),
        provider.as_deref(),
        &payment.id,
        only_version,
        to,
        reason,
        now,
    )
    .await
    .map_err(|e| match e {
        LifecycleError::Transition(t) => refuse(t),
        LifecycleError::NotFound => ApiError::not_found("payment"),
        LifecycleError::Moved => {
            ApiError::conflict("concurrent_update", "the payment is being changed; retry")
        }
        LifecycleError::Store(s) => s.into(),
    })
}

fn not_cancelable(status: PaymentStatus) -> ApiError {
    ApiError::conflict(
        "payment_not_cancelable",
        format!("a {status} payment cannot be canceled"),
    )
}

/// The payment's audit trail, oldest first.
#[utoipa::path(get, path = "/v1/payments/{id}/events", tag = "payments", params(("id" = String, Path)),
    responses((status = 200, body = EventList), (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn events(
    State(state): State<AppState>,
    _auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventList>, ApiError> {
    let payment = load_payment(&state, &id).await?;
    Ok(Json(EventList {
        data: state.store.list_events(&payment.id).await?,
    }))
}

/// Captures an authorized (two-step) payment: funds blocked at the provider become the
/// merchant's. Only ePay two-step terminals authorize without capturing.
#[utoipa::path(post, path = "/v1/payments/{id}/capture", tag = "payments", params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Option<CancelRequest>, description = "optional `reason`, recorded in the payment's event"),
    responses((status = 200, body = PaymentResource), (status = 400, body = crate::error::Problem), (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem),
        (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem),
        (status = 502, body = crate::error::Problem)),
    security(("api_key" = [])))]
pub async fn capture(
    State(state): State<AppState>,
    auth: MerchantAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: JsonBody<CancelRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key_from_headers(&headers)?;
    let hash =
        idempotency::request_hash(&format!("POST /v1/payments/{id}/capture"), &body.canonical);
    let reason = body.value.reason;
    if let Some(Err(m)) = reason.as_deref().map(|r| text::free_text(r, 500)) {
        return Err(ApiError::validation(vec![field("reason", m)]));
    }
    let payment = load_payment(&state, &id).await?;
    idempotency::run_once(&state, &auth.scope, key, hash, move |state| async move {
        if payment.status != PaymentStatus::Processing {
            return Err(ApiError::conflict(
                "payment_not_capturable",
                format!("a {} payment cannot be captured", payment.status),
            ));
        }
        let provider = state.providers.get(payment.provider).ok_or_else(|| {
            ApiError::unprocessable("provider_disabled", "the payment's provider is not enabled")
        })?;
        provider.capture(&payment).await.map_err(provider_error)?;
        // The money moved: recorded on whatever the payment has become since.
        let updated = merchant_change(
            &state,
            &payment,
            None,
            PaymentStatus::Succeeded,
            Some(reason.unwrap_or_else(|| "captured".into())),
            |t| ApiError::conflict("payment_not_capturable", t.to_string()),
        )
        .await?;
        Ok((
            StatusCode::OK,
            PaymentResource::new(&state.settings, &updated).to_json(),
        ))
    })
    .await
}
