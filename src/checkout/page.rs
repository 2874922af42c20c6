use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::labels;
use super::verify_client_secret;
use crate::api::extract::ApiPath;
use crate::domain::{
    truncate_to_millis, Change, Payment, PaymentId, PaymentStatus, PaymentUpdate, ProviderKind,
};
use crate::error::ApiError;
use crate::money::Currency;
use crate::state::AppState;

/// What the payer's browser may know about a payment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckoutView {
    pub id: String,
    pub status: PaymentStatus,
    pub provider: ProviderKind,
    pub amount: i64,
    pub currency: Currency,
    pub description: Option<String>,
    pub return_url: Option<String>,
    pub expires_at: String,
    pub provider_data: serde_json::Value,
}

impl From<&Payment> for CheckoutView {
    fn from(p: &Payment) -> Self {
        CheckoutView {
            id: p.id.to_string(),
            status: p.status,
            provider: p.provider,
            amount: p.amount.minor(),
            currency: p.amount.currency(),
            description: p.description.clone(),
            return_url: p.return_url.clone(),
            expires_at: p
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            provider_data: payer_provider_data(p),
        }
    }
}

/// What of `provider_data` the payer's browser gets: all of it while the payment is open;
/// after, not the ePay widget with its payment token, which could still pay (for two hours)
/// a payment that is closed.
fn payer_provider_data(p: &Payment) -> serde_json::Value {
    let mut data = p.provider_data.clone();
    if !p.status.is_open() {
        if let Some(map) = data.as_object_mut() {
            map.remove("widget");
        }
    }
    data
}

async fn load(state: &AppState, id: &str) -> Result<Payment, ApiError> {
    let id = PaymentId::parse(id).ok_or_else(|| ApiError::not_found("payment"))?;
    let payment = state
        .store
        .get_payment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    tracing::Span::current().record("payment_id", tracing::field::display(&payment.id));
    Ok(payment)
}

/// The payment as the checkout page sees it; requires the payment's client secret. An ePay
/// widget token older than 10 minutes is replaced by a fresh one first.
#[utoipa::path(get, path = "/v1/checkout/{id}", tag = "checkout",
    params(("id" = String, Path), ("X-Client-Secret" = String, Header)),
    responses((status = 200, body = CheckoutView), (status = 401, body = crate::error::Problem), (status = 404, body = crate::error::Problem)))]
pub async fn checkout_view(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let payment = load(&state, &id).await?;
    let presented = headers
        .get("x-client-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify_client_secret(&payment, presented) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client_secret",
            "X-Client-Secret does not match this payment",
        ));
    }
    let payment = refreshed_for_payer(&state, payment).await;
    // It can carry the ePay widget's payment token: no cache may keep it.
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(CheckoutView::from(&payment)),
    )
        .into_response())
}

/// `payment` with what the payer needs renewed by its provider (an ePay widget token grown
/// old), stored with a compare-and-set; a payment changed meanwhile is read again, and a
/// provider that cannot renew now leaves what is stored (it may still do).
async fn refreshed_for_payer(state: &AppState, payment: Payment) -> Payment {
    let Some(provider) = state.providers.get(payment.provider) else {
        return payment;
    };
    let now = truncate_to_millis(state.now());
    let data = match provider.refresh_payer_data(&payment, now).await {
        Ok(Some(data)) => data,
        Ok(None) => return payment,
        Err(e) => {
            tracing::warn!(payment_id = %payment.id, error = %e, "could not renew the payer's provider data; serving the stored one");
            return payment;
        }
    };
    let update = PaymentUpdate::keeping_status(&payment, Some(data), now);
    let renewed = update.applied_to(&payment);
    let change = Change {
        payment: Some(update),
        ..Change::default()
    };
    match state.store.apply(&change).await {
        Ok(()) => renewed,
        Err(e) => {
            tracing::info!(payment_id = %payment.id, error = %e, "payment changed while renewing the payer's data; reading it again");
            match state.store.get_payment(&payment.id).await {
                Ok(Some(current)) => current,
                _ => payment,
            }
        }
    }
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A minimal hosted page: what is being paid (to the holder of the client secret) and where
/// to pay it: a provider's link, ATMOS's card form, or ePay's widget.
#[utoipa::path(get, path = "/pay/{id}", tag = "checkout", params(("id" = String, Path)),
    description = "Hosted payment page (HTML) in the payment's language. Open it with \
        `#cs=<client_secret>`: the fragment never reaches a server; the page's script sends the \
        secret as `X-Client-Secret` to the checkout routes and only then shows what is being paid \
        (amount, description, status, the link back to `return_url`). An ATMOS payment's page is \
        the card form.",
    responses((status = 200, content_type = "text/html", body = String),
        (status = 404, content_type = "text/html", body = String)))]
pub async fn hosted_page(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Response {
    let payment = match load(&state, &id).await {
        Ok(p) => p,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return (
                StatusCode::NOT_FOUND,
                Html("<!doctype html><title>Not found</title><p>No such payment.</p>".to_owned()),
            )
                .into_response()
        }
        Err(e) => return e.into_response(),
    };
    // What is being paid (amount, description, status, the way back) is shown only to whoever
    // holds the client secret: the page's script reads it from `GET /v1/checkout/{id}` with the
    // secret in the URL's fragment. The payment id alone (in logs, at the providers) shows
    // nothing but which provider takes the payment.
    let lang = payment.language;
    let words = labels::labels(lang);
    // ePay pays in Halyk's widget; in sandbox the simulator's page stands in for it.
    let sandbox_form = (payment.provider == ProviderKind::Epay && state.settings.is_sandbox())
        .then(|| format!("../sandbox/epay/payform/{}", payment.id));
    let has_link = matches!(payment.provider, ProviderKind::Payme | ProviderKind::Click)
        || sandbox_form.is_some();
    let pay_link = if has_link && payment.status.is_open() {
        format!(
            "<p id=\"pay\" hidden><a id=\"pay_a\">{}</a></p>",
            escape(&labels::pay_with(lang, payment.provider))
        )
    } else {
        String::new()
    };
    // ATMOS is paid on this page: card and expiry, then the SMS code, sent to the checkout
    // routes with the client secret. Outside sandbox an ePay payer pays on ePay's own page,
    // opened by Halyk's widget script.
    let (form, form_script) = match payment.provider {
        _ if !payment.status.is_open() => ("", ""),
        ProviderKind::Atmos => (ATMOS_FORM, ATMOS_SCRIPT),
        ProviderKind::Epay if sandbox_form.is_none() => (EPAY_BUTTON, EPAY_SCRIPT),
        _ => ("", ""),
    };
    let statuses: serde_json::Map<String, serde_json::Value> = PaymentStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), labels::status_name(lang, *s).into()))
        .collect();
    let script = labels::fill(&format!("{PAGE_SCRIPT}{form_script}"), lang)
        .replace("{ID}", payment.id.as_str())
        .replace(
            "{SANDBOX_FORM}",
            &serde_json::to_string(&sandbox_form).unwrap_or_else(|_| "null".to_owned()),
        )
        .replace(
            "{STATUSES}",
            &serde_json::Value::Object(statuses).to_string(),
        );
    let body = format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\"><title>{title}</title></head><body>\
         <h1 id=\"amount\"></h1><p id=\"desc\"></p><p>{status_label}: <strong id=\"status\"></strong></p>\
         <p>{provider_label}: {provider}</p>{pay_link}{form}\
         <p id=\"back\" hidden><a id=\"back_a\">{back}</a></p><p id=\"msg\" role=\"status\"></p>\
         <script>{script}</script></body></html>",
        lang = lang.as_str(),
        title = escape(words.title),
        status_label = escape(words.status),
        provider_label = escape(words.provider),
        provider = escape(labels::provider_name(payment.provider)),
        form = labels::fill(form, lang),
        back = escape(words.back),
    );
    let mut res = Html(body).into_response();
    // The page takes card data: no other site may frame it (clickjacking), no cache may keep
    // it, no link on it tells where it was, no injected `<base>` or form may send its inputs
    // elsewhere (its scripts post them; its forms never submit), and no plugin runs in it.
    // Scripts are not restricted: ePay's widget script comes from a host set in configuration.
    for (name, value) in [
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        res.headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    res
}

/// The page's script, first part: with the client secret from the URL's fragment (`#cs=…`,
/// see `checkout_url` in the creation response; sent only as the `X-Client-Secret` header,
/// never to this page's server), it reads the payment and shows it; `loaded` settles then.
/// Links and calls are relative to the page, so tolov may sit under a path of the shop's site.
const PAGE_SCRIPT: &str = r#"
const cs = new URLSearchParams(location.hash.slice(1)).get("cs") || "";
const el = (id) => document.getElementById(id);
const say = (text) => { el("msg").textContent = text; };
const STATUSES = {STATUSES};
const SANDBOX_FORM = {SANDBOX_FORM};
const OPEN = ["pending", "processing"];
const major = (minor) => { const s = String(minor).padStart(3, "0"); return s.slice(0, -2) + "." + s.slice(-2); };
const hide = (...ids) => ids.forEach((id) => { if (el(id)) el(id).hidden = true; });
// An error the payer can act on comes in their language (with `messages`); any other, or no
// answer at all, is "something went wrong".
const problem = (j) => (j.code === "payment_already_paid" ? {J.paid} : (j.messages && j.detail) || {J.went_wrong});
async function view() {
  try {
    const r = await fetch("../v1/checkout/{ID}", {headers: {"x-client-secret": cs}});
    return [r.ok, await r.json().catch(() => ({}))];
  } catch (e) { return [false, {}]; }
}
async function load() {
  if (!cs) { hide("card", "epay"); say({J.open_link}); return; }
  const [ok, j] = await view();
  if (!ok) { hide("card", "epay"); say(j.status === 401 ? {J.open_link} : problem(j)); return; }
  el("amount").textContent = major(j.amount) + " " + j.currency;
  el("desc").textContent = j.description || "";
  el("status").textContent = STATUSES[j.status] || j.status;
  if (j.return_url) { el("back_a").href = j.return_url; el("back").hidden = false; }
  const link = (j.provider_data || {}).checkout_url || SANDBOX_FORM;
  if (el("pay") && link && OPEN.includes(j.status)) { el("pay_a").href = link; el("pay").hidden = false; }
  if (!OPEN.includes(j.status)) { hide("card", "code", "epay"); }
}
const loaded = load();
"#;

/// The pay button of an ePay payment. The widget parameters (with the payment's ePay token)
/// come from `GET /v1/checkout/{id}` with the client secret, so the page holds no token;
/// `halyk.pay` then opens ePay's payment page (B4).
const EPAY_BUTTON: &str = r#"<p><button id="epay">{L.pay_epay}</button></p>"#;

const EPAY_SCRIPT: &str = r#"
el("epay").onclick = async () => {
  say("");
  const [ok, j] = await view();
  const d = j.provider_data || {};
  if (ok && !OPEN.includes(j.status)) { hide("epay"); say({J.closed}); return; }
  if (!ok || !d.widget || !d.widget_js) { say(problem(j)); return; }
  const s = document.createElement("script");
  s.src = d.widget_js;
  s.onload = () => halyk.pay(d.widget);
  s.onerror = () => { say({J.epay_unreachable}); };
  document.head.appendChild(s);
};
"#;

/// The card form of an ATMOS payment.
const ATMOS_FORM: &str = r#"<form id="card"><p><label>{L.card_number} <input id="pan" inputmode="numeric" autocomplete="cc-number" required></label></p>
<p><label>{L.expiry} <input id="exp" autocomplete="cc-exp" placeholder="MM/YY" required></label></p>
<p><button>{L.send_code}</button></p></form>
<form id="code" hidden><p><label>{L.sms_code} <input id="otp" inputmode="numeric" autocomplete="one-time-code" required></label></p>
<p><button>{L.pay}</button> <button type="button" id="resend">{L.resend}</button></p></form>"#;

const ATMOS_SCRIPT: &str = r#"
const again = ["attempt_expired", "card_rejected", "insufficient_funds", "payment_failed", "sms_not_connected", "no_otp_pending"];
async function call(action, body) {
  let r;
  try {
    r = await fetch("../v1/checkout/{ID}/atmos/" + action, {method: "POST",
      headers: {"content-type": "application/json", "x-client-secret": cs}, body: JSON.stringify(body)});
  } catch (e) { say({J.went_wrong}); return [false, {}]; }
  const j = await r.json().catch(() => ({}));
  say(r.ok ? "" : problem(j));
  return [r.ok, j];
}
el("card").onsubmit = async (e) => {
  e.preventDefault();
  const [ok, j] = await call("pre-apply", {card_number: el("pan").value.replace(/\s/g, ""), expiry: el("exp").value.trim()});
  if (ok) { el("card").hidden = true; el("code").hidden = false; el("pan").value = ""; }
  // No answer in time, the call still going: the SMS may come, so its code can be entered (or
  // the card sent again).
  else if (j.code === "provider_slow") { el("code").hidden = false; }
};
el("code").onsubmit = async (e) => {
  e.preventDefault();
  const [ok, j] = await call("confirm", {otp: el("otp").value.trim()});
  el("otp").value = "";
  if (ok) { el("code").hidden = true; say(j.status === "succeeded" ? {J.paid} : {J.processing}); }
  // The attempt is over but the payment is not: the payer attaches a card again.
  else if (again.includes(j.code)) { el("code").hidden = true; el("card").hidden = false; }
};
el("resend").onclick = async () => {
  const [ok] = await call("resend-otp");
  if (ok) { say({J.code_resent}); }
};
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Language;

    #[test]
    fn every_template_placeholder_is_filled() {
        for lang in [Language::Uz, Language::Ru, Language::En] {
            for template in [
                PAGE_SCRIPT,
                ATMOS_FORM,
                ATMOS_SCRIPT,
                EPAY_BUTTON,
                EPAY_SCRIPT,
            ] {
                let page = labels::fill(template, lang);
                assert!(!page.contains("{L.") && !page.contains("{J."), "{page}");
            }
        }
    }
}
