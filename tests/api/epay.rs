//! Halyk ePay: payment token and widget parameters, postLink (forged, duplicate, late),
//! check-status, partial and full refunds, provider faults.

use std::sync::Arc;

use chrono::Duration as Span;
use serde_json::{json, Value};
use tolov::startup::Overrides;
use tolov::state::ManualClock;
use tolov::workers::expiry::expire_once;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

pub(crate) async fn epay_payment(app: &TestApp, amount: i64) -> Value {
    let mut body = payment_body("epay", amount);
    body["language"] = json!("ru");
    let res = app.create_payment(&body).await;
    assert_eq!(res.status().as_u16(), 201);
    res.json().await.expect("json")
}

pub(crate) async fn status(app: &TestApp, id: &str) -> String {
    app.get_json(&format!("/v1/payments/{id}")).await["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

async fn pay(app: &TestApp, id: &str, card: &str) -> Value {
    let res = app
        .client
        .post(app.url(&format!("/sandbox/epay/{id}/pay")))
        .json(&json!({"card": card}))
        .send()
        .await
        .expect("pay");
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.expect("json")
}

/// A postLink as ePay would send it, with the fields the test wants to vary.
async fn post_link(app: &TestApp, id: &str, body: Value) -> (u16, String) {
    let res = app
        .client
        .post(app.url(&format!("/v1/epay/callback?payment_id={id}")))
        .json(&body)
        .send()
        .await
        .expect("postLink");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_widget_gets_everything_and_a_paid_invoice_succeeds_once() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_050).await;
    let id = p["id"].as_str().expect("id");
    let data = &p["provider_data"];
    let invoice = data["invoice_id"].as_str().expect("invoice");
    assert!(
        invoice.len() >= 6 && invoice.bytes().all(|b| b.is_ascii_digit()),
        "{invoice}"
    );
    let w = &data["widget"];
    assert_eq!(w["invoiceId"], invoice);
    assert_eq!(w["amount"], "1500.50", "tenge as an exact decimal string");
    assert_eq!(
        (
            w["currency"].clone(),
            w["language"].clone(),
            w["terminal"].clone()
        ),
        (
            json!("KZT"),
            json!("rus"),
            json!("67e34d63-102f-4bd1-898e-370781d0074d")
        )
    );
    assert!(w["auth"]["access_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(w["postLink"]
        .as_str()
        .is_some_and(|l| l.ends_with(&format!("/v1/epay/callback?payment_id={id}"))));
    assert!(w["failurePostLink"]
        .as_str()
        .is_some_and(|l| l.contains("outcome=failure")));
    assert!(
        !p.to_string().contains("secret_hash"),
        "the secret_hash never reaches the payer"
    );
    assert!(data["widget_js"]
        .as_str()
        .is_some_and(|u| u.ends_with("payment-api.js")));

    let paid = pay(&app, id, "4405639704015096").await;
    assert_eq!(
        (paid["approved"].clone(), paid["post_link_status"].clone()),
        (json!(true), json!(200))
    );
    assert_eq!(status(&app, id).await, "succeeded");
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(kinds, ["payment.created", "payment.succeeded"]);
    assert!(events["data"][1]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("check-status")));
}

#[tokio::test]
async fn invoice_ids_come_from_a_sequence() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            epay_payment(&app, 10_000).await["provider_data"]["invoice_id"]
                .as_str()
                .expect("invoice")
                .to_owned(),
        );
    }
    let numbers: Vec<u64> = ids.iter().map(|i| i.parse().expect("digits")).collect();
    assert!(
        ids.iter().all(|i| i.len() == 6),
        "6 digits, the last 6 unique: {ids:?}"
    );
    assert_eq!(numbers[1], numbers[0] + 1, "{ids:?}");
    assert_eq!(numbers[2], numbers[0] + 2, "{ids:?}");
    // A fresh database does not start at 000001, which ePay already knows from earlier ones.
    let other = spawn_app().await;
    let first_elsewhere = epay_payment(&other, 10_000).await["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    assert!(numbers[0] >= 100_000, "{ids:?}");
    assert_ne!(
        first_elsewhere, ids[0],
        "random start: 1 in 800 000 to clash"
    );
}

#[tokio::test]
async fn a_declined_card_leaves_the_payment_payable() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let declined = pay(&app, id, "4003032704547597").await;
    assert_eq!(declined["approved"], false);
    assert_eq!(status(&app, id).await, "pending");
    pay(&app, id, "5522042705066736").await;
    assert_eq!(status(&app, id).await, "succeeded");
}

#[tokio::test]
async fn forged_or_mismatched_post_links_change_nothing() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let invoice = p["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    // Without the payment's secret_hash nothing is believed (each other check with the right
    // hash: epay_more::post_links_with_the_right_secret_but_another_invoice_currency_or_terminal_change_nothing).
    let good = json!({"invoiceId": invoice, "amount": 1500, "currency": "KZT", "terminal": "67e34d63-102f-4bd1-898e-370781d0074d",
                      "code": "ok", "reasonCode": 0, "secret_hash": "guessed"});
    let before = app.snapshot().await;
    let mut cases = vec![good.clone()];
    for (field, value) in [
        ("invoiceId", json!("999999")),
        ("amount", json!(1499.99)),
        ("currency", json!("USD")),
        ("terminal", json!("other")),
    ] {
        let mut c = good.clone();
        c[field] = value;
        cases.push(c);
    }
    for body in cases {
        assert_eq!(
            post_link(&app, &id, body).await,
            (200, "OK".to_owned()),
            "always 200"
        );
    }
    let garbage = app
        .client
        .post(app.url(&format!("/v1/epay/callback?payment_id={id}")))
        .body("not json")
        .send()
        .await
        .expect("post");
    assert_eq!(garbage.status().as_u16(), 200);
    let unknown = post_link(&app, "pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C", good.clone()).await;
    assert_eq!(unknown.0, 200);
    let no_payment = app
        .client
        .post(app.url("/v1/epay/callback"))
        .json(&good)
        .send()
        .await
        .expect("post");
    assert_eq!(no_payment.status().as_u16(), 200);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn duplicate_post_links_have_one_effect() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    pay(&app, id, "4405639704015096").await;
    let before = app.snapshot().await;
    // ePay retries the same postLink: the sandbox payer's invoice is paid, so replay by hand.
    let secret_free = app.get_json(&format!("/v1/payments/{id}/events")).await;
    assert_eq!(secret_free["data"].as_array().expect("data").len(), 2);
    let again = app
        .client
        .post(app.url(&format!("/sandbox/epay/{id}/pay")))
        .json(&json!({}))
        .send()
        .await
        .expect("pay");
    assert_problem(again, 409, "already_paid").await;
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn partial_and_full_refunds_never_exceed_the_payment() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    pay(&app, id, "4405639704015096").await;
    let path = format!("/v1/payments/{id}/refunds");
    assert_problem(
        app.post_json(&path, &json!({"amount": 999})).await,
        422,
        "refund_below_minimum",
    )
    .await;
    let r1 = app.post_json(&path, &json!({"amount": 50_000})).await;
    assert_eq!(r1.status().as_u16(), 201);
    assert_eq!(status(&app, id).await, "partially_refunded");
    assert_problem(
        app.post_json(&path, &json!({"amount": 100_001})).await,
        422,
        "refund_exceeds_payment",
    )
    .await;
    let rest = app.post_json(&path, &json!({})).await;
    assert_eq!(rest.status().as_u16(), 201);
    assert_eq!(rest.json::<Value>().await.expect("json")["amount"], 100_000);
    assert_eq!(status(&app, id).await, "refunded");
}

#[tokio::test]
async fn a_post_link_for_an_expired_payment_is_resolved_by_check_status() {
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = spawn_app_with(
        Db::Sqlite,
        |s| {
            s.workers.expiry_enabled = false;
            s.webhooks.enabled = false;
        },
        overrides,
    )
    .await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    clock.advance(Span::minutes(31));
    let report = expire_once(&app.state).await.expect("expiry");
    assert_eq!(
        report.expired, 1,
        "ePay knows no payment for the invoice: expired"
    );
    assert_eq!(status(&app, id).await, "expired");
    // The payer paid anyway (a late postLink): money moved, so the record says so.
    pay(&app, id, "4405639704015096").await;
    assert_eq!(status(&app, id).await, "succeeded");
}

/// tolov on `db` with ePay's token endpoint and API on `mock`, more settings from `configure`.
pub(crate) async fn epay_app_with(
    db: Db,
    mock: &MockServer,
    configure: impl FnOnce(&mut tolov::config::Settings),
    overrides: Overrides,
) -> TestApp {
    let (oauth, api) = (
        format!("{}/oauth2/token", mock.uri()),
        format!("{}/api", mock.uri()),
    );
    spawn_app_with(
        db,
        move |s| {
            s.epay.oauth_url = oauth;
            s.epay.api_url = api;
            configure(s);
        },
        overrides,
    )
    .await
}

async fn app_on_mock(mock: &MockServer) -> TestApp {
    epay_app_with(Db::Sqlite, mock, |_| {}, Overrides::default()).await
}

#[tokio::test]
async fn provider_faults_store_nothing_and_change_nothing() {
    // Token endpoint down: no payment.
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    let app = app_on_mock(&mock).await;
    let before = app.snapshot().await;
    assert_problem(
        app.create_payment(&payment_body("epay", 10_000)).await,
        502,
        "provider_unavailable",
    )
    .await;
    assert_eq!(app.snapshot().await, before);

    // Credentials refused: a clear refusal, still nothing stored.
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&mock)
        .await;
    let app = app_on_mock(&mock).await;
    assert_problem(
        app.create_payment(&payment_body("epay", 10_000)).await,
        422,
        "provider_rejected",
    )
    .await;

    // check-status failing during a postLink: answered OK, nothing recorded (expiry asks again
    // before the payment expires; tests/api/epay_more.rs).
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "t", "expires_in": "7200", "token_type": "Bearer"}),
        ))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/api/check-status/payment/transaction/\d+$"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let app = app_on_mock(&mock).await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let invoice = p["provider_data"]["invoice_id"].as_str().expect("invoice");
    let secret_hash = tolov::providers::epay::Epay::secret_hash(
        &app.state.settings,
        &tolov::domain::PaymentId::parse(id).expect("id"),
    );
    let before = app.snapshot().await;
    let body = json!({"invoiceId": invoice, "amount": 1500, "currency": "KZT", "terminal": "67e34d63-102f-4bd1-898e-370781d0074d",
                      "code": "ok", "reasonCode": 0, "secret_hash": secret_hash, "id": "txn-1"});
    assert_eq!(post_link(&app, id, body).await, (200, "OK".to_owned()));
    assert_eq!(app.snapshot().await, before);
    assert_eq!(status(&app, id).await, "pending");
}

async fn pay_two_step(app: &TestApp, id: &str) {
    let res = app
        .client
        .post(app.url(&format!("/sandbox/epay/{id}/pay")))
        .json(&json!({"two_step": true}))
        .send()
        .await
        .expect("pay");
    assert_eq!(res.status().as_u16(), 200);
}

#[tokio::test]
async fn a_two_step_payment_is_captured_by_the_merchant() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    assert_problem(
        app.post_json(&format!("/v1/payments/{id}/capture"), &json!({}))
            .await,
        409,
        "payment_not_capturable",
    )
    .await;
    pay_two_step(&app, id).await;
    assert_eq!(
        status(&app, id).await,
        "processing",
        "AUTH: funds blocked, not yet the merchant's"
    );
    let captured = app
        .post_json(
            &format!("/v1/payments/{id}/capture"),
            &json!({"reason": "shipped"}),
        )
        .await;
    assert_eq!(captured.status().as_u16(), 200);
    assert_eq!(
        captured.json::<Value>().await.expect("json")["status"],
        "succeeded"
    );
    // The merchant's reason is the event's, as for a cancel.
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let last = events["data"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("event");
    assert_eq!(
        (last["type"].as_str(), last["reason"].as_str()),
        (Some("payment.succeeded"), Some("shipped")),
        "{last}"
    );
    // Captured: refundable, and no longer cancelable.
    assert_problem(
        app.post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await,
        409,
        "payment_not_cancelable",
    )
    .await;
    assert_eq!(
        app.post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 10_000})
        )
        .await
        .status()
        .as_u16(),
        201
    );
}

#[tokio::test]
async fn a_two_step_payment_canceled_by_the_merchant_is_voided() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    pay_two_step(&app, id).await;
    let canceled = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(canceled.status().as_u16(), 200);
    assert_eq!(status(&app, id).await, "canceled");
    // The block is released at ePay: a capture now finds nothing to capture.
    assert_problem(
        app.post_json(&format!("/v1/payments/{id}/capture"), &json!({}))
            .await,
        409,
        "payment_not_capturable",
    )
    .await;
    let pid = tolov::domain::PaymentId::parse(id).expect("id");
    let payment = app
        .state
        .store
        .get_payment(&pid)
        .await
        .expect("get")
        .expect("payment");
    let provider = app
        .state
        .providers
        .get(tolov::domain::ProviderKind::Epay)
        .expect("epay");
    assert!(
        matches!(
            provider.fetch_status(&payment).await,
            Ok(tolov::providers::ProviderStatus::Voided)
        ),
        "ePay reports the AUTH released"
    );
}

#[tokio::test]
async fn capture_is_refused_where_the_provider_has_no_two_step_payments() {
    let app = spawn_app().await;
    let p = app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let paid = app
        .client
        .post(app.url(&format!("/sandbox/payme/{id}/pay")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status().as_u16(), 200);
    assert_problem(
        app.post_json(&format!("/v1/payments/{id}/capture"), &json!({}))
            .await,
        409,
        "payment_not_capturable",
    )
    .await;
    // A processing Payme payment (transaction created, not performed) cannot be captured by the merchant.
    let q = app.new_payment("payme", 150_000).await;
    let qid = q["id"].as_str().expect("id");
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "Paycom:sandbox-payme-key"
        )
    );
    let create = json!({"method": "CreateTransaction", "id": 1, "params": {"id": "b".repeat(24), "time": app.state.now().timestamp_millis(), "amount": 150_000, "account": {"order_id": qid}}});
    app.client
        .post(app.url("/v1/payme"))
        .header("authorization", auth)
        .json(&create)
        .send()
        .await
        .expect("rpc");
    assert_eq!(status(&app, qid).await, "processing");
    let before = app.snapshot().await;
    assert_problem(
        app.post_json(&format!("/v1/payments/{qid}/capture"), &json!({}))
            .await,
        422,
        "not_supported",
    )
    .await;
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn the_hosted_page_leads_to_the_sandbox_payment_form() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let page = app.hosted_page(id).await;
    assert!(
        page.contains(&format!("/sandbox/epay/payform/{id}")),
        "{page}"
    );
    let form = app
        .client
        .get(app.url(&format!("/sandbox/epay/payform/{id}")))
        .send()
        .await
        .expect("form");
    assert_eq!(form.status().as_u16(), 200);
    let html = form.text().await.expect("html");
    for card in [
        "4405639704015096",
        "5522042705066736",
        "4003032704547597",
        "5578342710750560",
    ] {
        assert!(html.contains(card), "{card}");
    }
    assert!(html.contains(&format!("/sandbox/epay/{id}/pay")));
}

#[tokio::test]
async fn a_payer_who_pays_after_the_merchant_cancelled_gets_the_money_back() {
    let app = spawn_app().await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    pay(&app, id, "4405639704015096").await;
    assert_eq!(status(&app, id).await, "canceled");
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let last = events["data"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("events");
    assert_eq!(last["type"], "payment.late_charge_refunded");
    // The sandbox's ePay refunded the charge: a second payment attempt finds the invoice closed.
    let again = app
        .client
        .post(app.url(&format!("/sandbox/epay/{id}/pay")))
        .json(&json!({}))
        .send()
        .await
        .expect("pay");
    assert_problem(again, 409, "already_paid").await;
}

/// An ePay mock that hands out `token` and finds no payment for any invoice (check-status 102).
async fn mock_where_nothing_is_paid(token: &str) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": token, "expires_in": "7200", "token_type": "Bearer"}),
        ))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/api/check-status/payment/transaction/\d+$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"resultCode": "102"})))
        .mount(&mock)
        .await;
    mock
}

/// B2: the token handed to the payer's browser (the widget's `auth`) is asked for with the
/// payment scope only (`epay.payment_scope`), not the general server-side scope (`epay.scope`:
/// statements, user management...), which only tolov's own calls use.
#[tokio::test]
async fn the_payer_s_token_carries_the_payment_scope_only() {
    let mock = mock_where_nothing_is_paid("t").await;
    let app = app_on_mock(&mock).await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let forms: Vec<Vec<(String, String)>> = mock
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.url.path() == "/oauth2/token")
        .map(|r| url::form_urlencoded::parse(&r.body).into_owned().collect())
        .collect();
    let field = |form: &Vec<(String, String)>, name: &str| {
        form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let payment = forms
        .iter()
        .find(|f| field(f, "invoiceID").is_some())
        .expect("a payment token request");
    assert_eq!(field(payment, "scope").as_deref(), Some("payment"));
    let general = forms
        .iter()
        .find(|f| field(f, "invoiceID").is_none())
        .expect("a general token request");
    assert_eq!(
        field(general, "scope"),
        Some(app.state.settings.epay.scope.clone())
    );
}

/// In production the hosted page is where the payer pays an ePay payment: its script fetches
/// the widget parameters with the client secret from the page's fragment, loads Halyk's widget
/// script and opens ePay's payment page (`halyk.pay`, B4). The page itself carries no token:
/// anyone who knows the payment id may open `/pay/{id}`.
#[tokio::test]
async fn the_hosted_page_opens_halyk_s_payment_page_in_production() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "tok-for-the-payer", "expires_in": "7200", "token_type": "Bearer"}),
        ))
        .mount(&mock)
        .await;
    let app = epay_app_with(
        Db::Sqlite,
        &mock,
        |s| s.mode = tolov::config::Mode::Production,
        Overrides::default(),
    )
    .await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let secret = p["client_secret"].as_str().expect("secret");
    let page = app.hosted_page(id).await;
    for needed in [
        format!("/v1/checkout/{id}"),
        "x-client-secret".to_owned(),
        "widget_js".to_owned(),
        "halyk.pay(".to_owned(),
    ] {
        assert!(page.contains(&needed), "{needed}: {page}");
    }
    assert!(!page.contains("/sandbox/"), "{page}");
    assert!(!page.contains("tok-for-the-payer"), "{page}");
    // What the page's script reads; it holds the payment token, so no cache may keep it.
    let res = app
        .client
        .get(app.url(&format!("/v1/checkout/{id}")))
        .header("x-client-secret", secret)
        .send()
        .await
        .expect("view");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let view: Value = res.json().await.expect("json");
    let data = &view["provider_data"];
    assert!(
        data["widget_js"]
            .as_str()
            .is_some_and(|u| u.ends_with(".js")),
        "{view}"
    );
    assert_eq!(data["widget"]["auth"]["access_token"], "tok-for-the-payer");
}

/// B2: ePay's payment token is short-lived (7 200 s in the docs, about 20 minutes reported),
/// while a payment may stay payable far longer (`api.payment_ttl_minutes`). The widget the
/// payer's browser gets (`GET /v1/checkout/{id}`, read when the pay button is pressed) carries
/// a token at most 10 minutes old: an older one is replaced by a fresh token for the same
/// invoice, amount and postLinks, once (the next view reuses it), and never after the deadline.
#[tokio::test]
async fn the_payer_gets_a_fresh_widget_token_for_a_payment_left_open() {
    let mock = MockServer::start().await;
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(move |_: &wiremock::Request| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(
                json!({"access_token": format!("tok-{n}"), "expires_in": "7200", "token_type": "Bearer"}),
            )
        })
        .mount(&mock)
        .await;
    let clock = Arc::new(ManualClock::default());
    let app = epay_app_with(
        Db::Sqlite,
        &mock,
        |s| s.api.payment_ttl_minutes = 24 * 60,
        Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        },
    )
    .await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let secret = p["client_secret"].as_str().expect("secret");
    let token_of = || async {
        let view: Value = app
            .client
            .get(app.url(&format!("/v1/checkout/{id}")))
            .header("x-client-secret", secret)
            .send()
            .await
            .expect("view")
            .json()
            .await
            .expect("json");
        view["provider_data"]["widget"]["auth"]["access_token"].clone()
    };
    assert_eq!(
        p["provider_data"]["widget"]["auth"]["access_token"],
        "tok-1"
    );
    clock.advance(Span::minutes(9));
    assert_eq!(token_of().await, "tok-1", "young enough");
    clock.advance(Span::minutes(2));
    assert_eq!(token_of().await, "tok-2", "replaced");
    assert_eq!(token_of().await, "tok-2", "and kept");
    let tokens: Vec<_> = mock
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|r| r.url.path() == "/oauth2/token")
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .into_owned()
                .collect::<std::collections::BTreeMap<String, String>>()
        })
        .collect();
    assert_eq!(tokens.len(), 2);
    for field in [
        "invoiceID",
        "amount",
        "currency",
        "terminal",
        "postLink",
        "failurePostLink",
        "secret_hash",
        "scope",
    ] {
        assert_eq!(tokens[0].get(field), tokens[1].get(field), "{field}");
    }
    // The merchant sees the payment as before, apart from the token.
    let seen = app.get_json(&format!("/v1/payments/{id}")).await;
    assert_eq!(seen["status"], "pending");
    assert_eq!(
        seen["provider_data"]["invoice_id"],
        p["provider_data"]["invoice_id"]
    );
    // Past the deadline no token is fetched (the payment is about to expire).
    clock.advance(Span::hours(24));
    assert_eq!(token_of().await, "tok-2");
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Once the payment is closed, the payer's browser no longer gets the widget and its ePay token
/// (`GET /v1/checkout/{id}`): a page left open would otherwise let the payer pay a canceled
/// payment (the money then has to go back) or an expired one.
#[tokio::test]
async fn a_closed_payment_s_checkout_gives_no_widget() {
    let mock = mock_where_nothing_is_paid("tok-for-the-payer").await;
    let app = app_on_mock(&mock).await;
    let p = epay_payment(&app, 150_000).await;
    let id = p["id"].as_str().expect("id");
    let secret = p["client_secret"].as_str().expect("secret");
    let view = || async {
        app.client
            .get(app.url(&format!("/v1/checkout/{id}")))
            .header("x-client-secret", secret)
            .send()
            .await
            .expect("view")
            .json::<Value>()
            .await
            .expect("json")
    };
    assert!(view().await["provider_data"]["widget"].is_object());
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let closed = view().await;
    assert_eq!(closed["status"], "canceled");
    assert!(closed["provider_data"].get("widget").is_none(), "{closed}");
    assert!(
        !closed.to_string().contains("tok-for-the-payer"),
        "{closed}"
    );
    assert!(
        closed["provider_data"]["invoice_id"].is_string(),
        "{closed}"
    );
}

/// B3: the widget's `description` is at most 125 bytes. A longer one (the merchant API takes
/// 500 characters; Cyrillic is two bytes each) is cut at a character boundary for ePay; the
/// payment keeps the whole text.
#[tokio::test]
async fn the_widget_description_is_cut_to_epay_s_125_bytes() {
    let app = spawn_app().await;
    let long = "Зелёный чай, две коробки. ".repeat(10);
    let mut body = payment_body("epay", 150_000);
    body["description"] = json!(long);
    let res = app.create_payment(&body).await;
    assert_eq!(res.status().as_u16(), 201);
    let p: Value = res.json().await.expect("json");
    let sent = p["provider_data"]["widget"]["description"]
        .as_str()
        .expect("description");
    assert!(
        sent.len() <= 125 && sent.len() > 120,
        "{} bytes",
        sent.len()
    );
    assert!(long.starts_with(sent), "{sent}");
    assert_eq!(p["description"], json!(long));
}
