//! Halyk ePay, more edges against a wiremock ePay: concurrent postLinks, check-status mapping
//! end to end, exact tenge amounts on the postLink, refund faults, token requests.

use std::sync::Arc;

use chrono::Duration as Span;
use serde_json::{json, Value};
use sqlx::Connection;
use tolov::domain::{PaymentId, RefundStatus};
use tolov::providers::epay::Epay;
use tolov::startup::Overrides;
use tolov::state::ManualClock;
use tolov::workers::expiry::{expire_once, ExpiryReport};
use tolov::workers::reconcile::reconcile_once;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::epay::{epay_app_with, epay_payment, status};
use crate::helpers::*;

const TERMINAL: &str = "67e34d63-102f-4bd1-898e-370781d0074d";

async fn event_types(app: &TestApp, id: &str) -> Vec<String> {
    app.get_json(&format!("/v1/payments/{id}/events")).await["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// A raw postLink body (so the test controls exactly how numbers are spelled).
async fn post_link_raw(app: &TestApp, id: &str, body: String) -> (u16, String) {
    let res = app
        .client
        .post(app.url(&format!("/v1/epay/callback?payment_id={id}")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("postLink");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

/// (payment id, invoice id, secret_hash) of a new ePay payment.
async fn paid_invoice(app: &TestApp, amount: i64) -> (String, String, String) {
    let p = epay_payment(app, amount).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let invoice = p["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    let hash = Epay::secret_hash(
        &app.state.settings,
        &PaymentId::parse(&id).expect("payment id"),
    );
    (id, invoice, hash)
}

/// A valid success postLink; `amount` is spliced in verbatim (a JSON number or string literal).
fn link_body(invoice: &str, hash: &str, amount: &str) -> String {
    format!(
        r#"{{"id":"txn-1","invoiceId":"{invoice}","amount":{amount},"currency":"KZT","terminal":"{TERMINAL}","code":"ok","reasonCode":0,"secret_hash":"{hash}"}}"#
    )
}

async fn mount_token(mock: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": "t", "expires_in": "7200", "refresh_token": "", "scope": "payment", "token_type": "Bearer"}),
        ))
        .mount(mock)
        .await;
}

/// check-status finding the invoice's transaction of 1500 KZT (the usual test payment).
fn found(status_name: &str, reason_code: i64) -> Value {
    found_of(status_name, reason_code, json!(1500))
}

/// check-status finding a transaction of `amount` KZT.
fn found_of(status_name: &str, reason_code: i64, amount: Value) -> Value {
    json!({"resultCode": "100", "resultMessage": "success", "transaction": {
        "id": "txn-1", "statusName": status_name, "reasonCode": reason_code, "amount": amount, "currency": "KZT"}})
}

async fn mount_status(
    mock: &MockServer,
    invoice: &str,
    http: u16,
    body: Value,
    times: Option<u64>,
) {
    let m = Mock::given(method("GET"))
        .and(path(format!(
            "/api/check-status/payment/transaction/{invoice}"
        )))
        .respond_with(ResponseTemplate::new(http).set_body_json(body));
    match times {
        Some(n) => m.up_to_n_times(n).mount(mock).await,
        None => m.mount(mock).await,
    }
}

async fn app_on_mock_db(db: Db, mock: &MockServer) -> TestApp {
    epay_app_with(db, mock, |_| {}, Overrides::default()).await
}

async fn requests_to(mock: &MockServer, prefix: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .expect("request recording is on")
        .into_iter()
        .filter(|r| r.url.path().starts_with(prefix))
        .collect()
}

fn form(r: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&r.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn assert_alive(app: &TestApp) {
    assert!(
        app.server.as_ref().is_some_and(|s| !s.is_finished()),
        "the server is still running"
    );
}

// 1. Twenty identical, valid postLinks at once: twenty "OK", one success.

async fn concurrent_identical_post_links_succeed_once(db: Db) {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(db, &mock).await;
    let (id, invoice, hash) = paid_invoice(&app, 150_050).await;
    mount_status(
        &mock,
        &invoice,
        200,
        found_of("CHARGE", 0, json!(1500.5)),
        None,
    )
    .await;
    let body = link_body(&invoice, &hash, "1500.5");
    let answers =
        futures::future::join_all((0..20).map(|_| post_link_raw(&app, &id, body.clone()))).await;
    for a in &answers {
        assert_eq!(a, &(200, "OK".to_owned()));
    }
    assert_eq!(status(&app, &id).await, "succeeded");
    let kinds = event_types(&app, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "payment.succeeded").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds, ["payment.created", "payment.succeeded"]);
}

on_both!(
    concurrent_identical_post_links_succeed_once,
    a_charge_after_the_merchant_cancelled_is_refunded
);

// 2. check-status decides, end to end through the postLink.

#[tokio::test]
async fn check_status_answers_map_onto_the_payment() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;

    // NEW → processing; then REJECT 484 (final decline) → back to pending, payable again.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("NEW", 0), Some(1)).await;
    mount_status(&mock, &inv, 200, found("REJECT", 484), None).await;
    let body = link_body(&inv, &hash, "1500");
    assert_eq!(post_link_raw(&app, &id, body.clone()).await.0, 200);
    assert_eq!(status(&app, &id).await, "processing", "NEW is in progress");
    assert_eq!(post_link_raw(&app, &id, body.clone()).await.0, 200);
    assert_eq!(
        status(&app, &id).await,
        "pending",
        "REJECT 484 on a processing payment: the payer may try again"
    );

    // REJECT with reasonCode 454 is not final: processing.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("REJECT", 454), None).await;
    assert_eq!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(status(&app, &id).await, "processing", "454 means re-query");

    // REJECT 484 on a pending payment: nothing to record.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("REJECT", 484), None).await;
    let before = app.snapshot().await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(app.snapshot().await, before);

    // resultCode 102 (no such invoice at ePay): unchanged.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(
        &mock,
        &inv,
        200,
        json!({"resultCode": "102", "resultMessage": "invoice not found"}),
        None,
    )
    .await;
    let before = app.snapshot().await;
    assert_eq!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(app.snapshot().await, before);
    assert_eq!(status(&app, &id).await, "pending");

    // The same 102 carried by an HTTP 400: parsed, not a crash, unchanged.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(
        &mock,
        &inv,
        400,
        json!({"resultCode": "102", "resultMessage": "invoice not found"}),
        None,
    )
    .await;
    let before = app.snapshot().await;
    assert_eq!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(app.snapshot().await, before);
    assert_alive(&app);

    // AUTH (funds blocked, 2-step): processing until the merchant captures or cancels.
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("AUTH", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "processing");
    let kinds = event_types(&app, &id).await;
    assert_eq!(kinds, ["payment.created", "payment.processing"]);
    assert_alive(&app);
}

// 3. Tenge decimals ↔ tiyn, exactly.

#[tokio::test]
async fn post_link_amounts_must_equal_the_payment_exactly() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;

    // 1.5005e3 and 1500.500 are the same JSON number as 1500.5.
    for accepted in [
        "1500.5",
        r#""1500.50""#,
        "1500.50",
        r#""1500.5""#,
        "1.5005e3",
        "1500.500",
        "150050e-2",
    ] {
        let (id, inv, hash) = paid_invoice(&app, 150_050).await;
        mount_status(&mock, &inv, 200, found_of("CHARGE", 0, json!(1500.5)), None).await;
        assert_eq!(
            post_link_raw(&app, &id, link_body(&inv, &hash, accepted)).await,
            (200, "OK".to_owned())
        );
        assert_eq!(status(&app, &id).await, "succeeded", "amount {accepted}");
    }

    let (id, inv, hash) = paid_invoice(&app, 150_050).await;
    mount_status(&mock, &inv, 200, found_of("CHARGE", 0, json!(1500.5)), None).await;
    let before = app.snapshot().await;
    let checks_before = requests_to(&mock, "/api/check-status").await.len();
    for refused in [
        "1500.49",
        "1500.501",
        // Regression: both round to the double 1500.5, but neither is 1500.50 tenge.
        "1500.50000000000001",
        "1500.4999999999999999",
        r#""1500.5.0""#,
        "-1500.5",
        r#""-1500.5""#,
        "1e3",
        r#""1500,50""#,
        r#"" 1500.50""#,
        r#""""#,
        "null",
        "150050",
    ] {
        assert_eq!(
            post_link_raw(&app, &id, link_body(&inv, &hash, refused)).await,
            (200, "OK".to_owned()),
            "amount {refused}"
        );
        assert_eq!(status(&app, &id).await, "pending", "amount {refused}");
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        requests_to(&mock, "/api/check-status").await.len(),
        checks_before,
        "a refused postLink never reaches check-status"
    );

    // 10 KZT = 1 000 tiyn (the smallest ePay payment tolov takes), sent as a bare integer.
    let (id, inv, hash) = paid_invoice(&app, 1_000).await;
    mount_status(&mock, &inv, 200, found_of("CHARGE", 0, json!(10)), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "10")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
}

// 4. Refund faults.

/// [`charged`] on an app whose clock the test moves (reconciliation looks only at refunds older
/// than the longest provider call).
async fn charged_with_clock(mock: &MockServer) -> (TestApp, String, Arc<ManualClock>) {
    let (app, clock) = clocked_app_on_mock(mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(mock, &inv, 200, found("CHARGE", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
    (app, id, clock)
}

/// A succeeded 1500 KZT payment on a mock whose check-status says CHARGE, txn-1.
async fn charged(mock: &MockServer) -> (TestApp, String) {
    charged_on(Db::Sqlite, mock).await
}

async fn charged_on(db: Db, mock: &MockServer) -> (TestApp, String) {
    mount_token(mock).await;
    let app = app_on_mock_db(db, mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(mock, &inv, 200, found("CHARGE", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
    (app, id)
}

/// ePay's refund operation for txn-1 answers with `answer`.
async fn mount_refund(mock: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(REFUND_PATH))
        .respond_with(answer)
        .mount(mock)
        .await;
}

const REFUND_PATH: &str = "/api/operation/txn-1/refund";

/// A refund of 500 KZT with Idempotency-Key `key`.
fn keyed_refund(app: &TestApp, id: &str, key: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(&format!("/v1/payments/{id}/refunds")))
        .bearer_auth(API_KEY)
        .header("Idempotency-Key", key)
        .json(&json!({"amount": 50_000}))
}

async fn refunds(app: &TestApp, id: &str) -> Vec<tolov::domain::Refund> {
    app.state
        .store
        .list_refunds(&PaymentId::parse(id).expect("payment id"))
        .await
        .expect("refunds")
}

fn query(r: &Request) -> Vec<(String, String)> {
    r.url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn a_refused_refund_fails_and_the_payment_stays_succeeded() {
    let mock = MockServer::start().await;
    mount_refund(
        &mock,
        ResponseTemplate::new(400)
            .set_body_json(json!({"code": 12, "message": "refund not allowed"})),
    )
    .await;
    let (app, id) = charged(&mock).await;
    let res = app
        .post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 50_000}),
        )
        .await;
    assert_problem(res, 422, "provider_rejected").await;
    let rows = refunds(&app, &id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, RefundStatus::Failed);
    assert_eq!(status(&app, &id).await, "succeeded");

    let sent = requests_to(&mock, REFUND_PATH).await;
    assert_eq!(sent.len(), 1);
    let q = query(&sent[0]);
    assert_eq!(field(&q, "amount"), Some("500.00"), "tenge, exact: {q:?}");
    assert_eq!(field(&q, "externalID"), Some(rows[0].id.as_str()));
    assert!(rows[0].id.as_str().starts_with("ref_"));
    assert!(sent[0]
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "Bearer t"));

    // A failed refund holds nothing: the whole payment can still be refunded.
    assert_problem(
        app.post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 150_001}),
        )
        .await,
        422,
        "refund_exceeds_payment",
    )
    .await;
}

#[tokio::test]
async fn an_unanswered_refund_stays_pending_and_holds_its_amount() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(500)).await;
    let (app, id) = charged(&mock).await;
    let path_ = format!("/v1/payments/{id}/refunds");
    assert_problem(
        app.post_json(&path_, &json!({"amount": 50_000})).await,
        502,
        "provider_unavailable",
    )
    .await;
    let rows = refunds(&app, &id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, RefundStatus::Pending);
    assert_eq!(rows[0].amount_minor, 50_000);
    assert_eq!(status(&app, &id).await, "succeeded");
    let sent = requests_to(&mock, REFUND_PATH).await;
    assert_eq!(sent.len(), 1);
    let q = query(&sent[0]);
    assert_eq!(field(&q, "amount"), Some("500.00"), "{q:?}");
    assert_eq!(field(&q, "externalID"), Some(rows[0].id.as_str()));

    let before = app.snapshot().await;
    assert_problem(
        app.post_json(&path_, &json!({"amount": 150_000})).await,
        422,
        "refund_exceeds_payment",
    )
    .await;
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        1,
        "the refused second refund never reaches ePay"
    );
}

// 5. Tokens.

#[tokio::test]
async fn token_requests_carry_the_invoice_and_string_expiry_is_understood() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_050).await;

    let tokens = requests_to(&mock, "/oauth2/token").await;
    assert_eq!(tokens.len(), 1, "one payment token per payment");
    let ct = tokens[0]
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("application/x-www-form-urlencoded"), "{ct}");
    let f = form(&tokens[0]);
    let public = app.state.settings.server.public_url.trim_end_matches('/');
    let post_link = format!("{public}/v1/epay/callback?payment_id={id}");
    for (name, want) in [
        ("grant_type", "client_credentials"),
        ("invoiceID", inv.as_str()),
        ("amount", "1500.50"),
        ("currency", "KZT"),
        ("terminal", TERMINAL),
        ("postLink", post_link.as_str()),
        ("secret_hash", hash.as_str()),
    ] {
        assert_eq!(field(&f, name), Some(want), "{name} in {f:?}");
    }
    assert_eq!(
        field(&f, "failurePostLink"),
        Some(format!("{post_link}&outcome=failure").as_str())
    );
    assert!(field(&f, "client_id").is_some_and(|c| !c.is_empty()));

    // The general token (expires_in "7200", a string) is fetched and used for check-status.
    mount_status(&mock, &inv, 200, found_of("CHARGE", 0, json!(1500.5)), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500.5")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
    let tokens = requests_to(&mock, "/oauth2/token").await;
    assert_eq!(tokens.len(), 2, "payment token + one general token");
    let general = form(&tokens[1]);
    assert_eq!(field(&general, "invoiceID"), None, "{general:?}");
    // B2/B6: the status token names the terminal too (without it check-status answers 104).
    assert_eq!(field(&general, "terminal"), Some(TERMINAL), "{general:?}");
    assert_eq!(field(&general, "grant_type"), Some("client_credentials"));
    let checks = requests_to(&mock, "/api/check-status").await;
    assert_eq!(checks.len(), 1);
    assert_eq!(
        checks[0]
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer t")
    );

    // A second payment's check-status reuses the cached general token.
    let (id2, inv2, hash2) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv2, 200, found("CHARGE", 0), None).await;
    post_link_raw(&app, &id2, link_body(&inv2, &hash2, "1500")).await;
    assert_eq!(status(&app, &id2).await, "succeeded");
    assert_eq!(
        requests_to(&mock, "/oauth2/token").await.len(),
        3,
        "one more payment token, no new general token"
    );
}

// 6. After a partial refund ePay reports REFUND ("refunded (full or partial)", B6): the rest of
// the payment can still be refunded, and ePay, not tolov, decides whether it may.

#[tokio::test]
async fn a_second_partial_refund_reaches_epay_after_its_status_says_refund() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    // CHARGE for the postLink's check and the first refund's, REFUND from then on.
    mount_status(&mock, &inv, 200, found("CHARGE", 0), Some(2)).await;
    mount_status(&mock, &inv, 200, found("REFUND", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
    let path_ = format!("/v1/payments/{id}/refunds");
    let first = app.post_json(&path_, &json!({"amount": 50_000})).await;
    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(status(&app, &id).await, "partially_refunded");
    let rest = app.post_json(&path_, &json!({})).await;
    assert_eq!(rest.status().as_u16(), 201, "{:?}", rest.text().await);
    assert_eq!(status(&app, &id).await, "refunded");
    let sent = requests_to(&mock, REFUND_PATH).await;
    let amounts: Vec<_> = sent
        .iter()
        .map(|r| field(&query(r), "amount").map(str::to_owned))
        .collect();
    assert_eq!(
        amounts,
        [Some("500.00".to_owned()), Some("1000.00".to_owned())]
    );
}

/// B5: a postLink can be lost. A merchant cancel that finds the payment charged at ePay is
/// refused ("refund it instead"), and what it learned is recorded at once: the payment is
/// `succeeded` (by reconciliation's word) and refundable now, not only after its deadline.
#[tokio::test]
async fn a_cancel_that_finds_a_charge_records_it_and_the_refund_can_follow() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, _) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("CHARGE", 0), None).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    let problem = assert_problem(cancel, 422, "provider_rejected").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already_charged")),
        "{problem}"
    );
    assert_eq!(status(&app, &id).await, "succeeded");
    assert_eq!(
        event_types(&app, &id).await,
        ["payment.created", "payment.succeeded"]
    );
    let refund = app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(refund.status().as_u16(), 201, "{:?}", refund.text().await);
    assert_eq!(status(&app, &id).await, "refunded");
}

// 7. The payer pays after the merchant cancelled (the payment token handed to the widget is
// still valid for two hours): the money goes back, the payment stays cancelled, once.

/// The merchant cancels while ePay knows nothing of the invoice (check-status 102, once); from
/// then on check-status finds `status_name` (the payer paid after all).
async fn cancel_before_the_money(
    app: &TestApp,
    mock: &MockServer,
    id: &str,
    inv: &str,
    status_name: &str,
) {
    mount_status(
        mock,
        inv,
        200,
        json!({"resultCode": "102", "resultMessage": "not found"}),
        Some(1),
    )
    .await;
    mount_status(mock, inv, 200, found(status_name, 0), None).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
}

async fn late_money_is_returned_once(db: Db, status_name: &str, operation: &str) {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/api/operation/txn-1/{operation}")))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    mount_token(&mock).await;
    let app = app_on_mock_db(db, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    // Nothing paid when the merchant cancels; then the payer's charge lands.
    cancel_before_the_money(&app, &mock, &id, &inv, status_name).await;
    let body = link_body(&inv, &hash, "1500");
    let answers =
        futures::future::join_all((0..20).map(|_| post_link_raw(&app, &id, body.clone()))).await;
    for a in &answers {
        assert_eq!(a, &(200, "OK".to_owned()));
    }
    assert_eq!(status(&app, &id).await, "canceled");
    let kinds = event_types(&app, &id).await;
    let returned = if operation == "refund" {
        "payment.late_charge_refunded"
    } else {
        "payment.late_authorization_voided"
    };
    assert_eq!(
        kinds,
        ["payment.created", "payment.canceled", returned],
        "one record of the money going back"
    );
    let sent = requests_to(&mock, &format!("/api/operation/txn-1/{operation}")).await;
    assert_eq!(
        sent.len(),
        1,
        "twenty postLinks, one request to return the money (B7 does not promise that ePay \
         ignores a repeated externalID)"
    );
    for r in &sent {
        let q = query(r);
        if operation == "refund" {
            assert_eq!(field(&q, "amount"), Some("1500.00"), "in full: {q:?}");
            assert_eq!(
                field(&q, "externalID"),
                Some(format!("late_{id}").as_str()),
                "one refund id, so ePay refunds once however often it is asked"
            );
        }
    }
    // A postLink ePay repeats later changes nothing and asks ePay for nothing more.
    let before = app.snapshot().await;
    let asked = sent.len();
    assert_eq!(post_link_raw(&app, &id, body).await, (200, "OK".to_owned()));
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        requests_to(&mock, &format!("/api/operation/txn-1/{operation}"))
            .await
            .len(),
        asked
    );
}

async fn a_charge_after_the_merchant_cancelled_is_refunded(db: Db) {
    late_money_is_returned_once(db, "CHARGE", "refund").await;
}

#[tokio::test]
async fn an_authorization_after_the_merchant_cancelled_is_voided() {
    late_money_is_returned_once(Db::Sqlite, "AUTH", "cancel").await;
}

// 8. check-status answers about the lookup itself (B6 resultCode): 104/106/109 are a terminal
// misconfiguration and 101 a refusal. Nothing is known about the money, so nothing is decided
// from them: a merchant cancel is refused (the payer may have paid), expiry keeps the payment.

#[tokio::test]
async fn a_refused_status_lookup_decides_nothing() {
    for code in ["101", "104", "106", "109"] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, _) = paid_invoice(&app, 150_000).await;
        mount_status(
            &mock,
            &inv,
            400,
            json!({"resultCode": code, "resultMessage": "terminal not found"}),
            None,
        )
        .await;
        let before = app.snapshot().await;
        let cancel = app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        let status_code = cancel.status().as_u16();
        let body: Value = cancel.json().await.expect("json");
        assert!(
            status_code == 422 || status_code == 502,
            "resultCode {code}: {status_code} {body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(code)),
            "the operator sees ePay's code: {body}"
        );
        assert_eq!(app.snapshot().await, before, "resultCode {code}");
        assert_eq!(status(&app, &id).await, "pending");
    }
}

// 8b. A check-status answer with a statusName outside B6's table is no verdict either: a merchant
// cancel is refused (the block it may hide is not skipped) and nothing changes.

#[tokio::test]
async fn an_unknown_status_name_decides_nothing() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, _) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("PARTIAL_CHARGE", 0), None).await;
    let before = app.snapshot().await;
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    let body = assert_problem(cancel, 502, "provider_error").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("PARTIAL_CHARGE")),
        "{body}"
    );
    assert_eq!(app.snapshot().await, before);
    assert_eq!(status(&app, &id).await, "pending");
}

// 8c. B5 check 3 holds for check-status too: a CHARGE for another amount or currency is not this
// payment's money (an invoice id ePay knows from an earlier database on the same terminal), so
// it pays nothing: the postLink records nothing and a merchant cancel is refused.

#[tokio::test]
async fn a_charge_for_another_amount_is_not_this_payment_s() {
    for (amount, currency) in [
        (json!(999), "KZT"),
        (json!("1500.01"), "KZT"),
        (json!(1500), "USD"),
    ] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, hash) = paid_invoice(&app, 150_000).await;
        let mut charge = found("CHARGE", 0);
        charge["transaction"]["amount"] = amount.clone();
        charge["transaction"]["currency"] = json!(currency);
        mount_status(&mock, &inv, 200, charge, None).await;
        let before = app.snapshot().await;
        assert_eq!(
            post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
            (200, "OK".to_owned())
        );
        assert_eq!(app.snapshot().await, before, "{amount} {currency}");
        let cancel = app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        assert_problem(cancel, 502, "provider_error").await;
        assert_eq!(status(&app, &id).await, "pending");
    }
}

/// The same holds for a charge of the right amount that check-status dates before the payment
/// existed, or names another account (tolov sends the order id as `accountId`): an old invoice
/// of the same amount must not pay this payment. Both fields as this payment's are accepted.
#[tokio::test]
async fn a_charge_of_another_account_or_from_before_the_payment_is_not_this_payment_s() {
    for (field, value) in [
        ("accountID", json!("order-from-another-shop")),
        ("createdDate", json!("2023-01-05T10:00:00+06:00")),
    ] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, hash) = paid_invoice(&app, 150_000).await;
        let mut charge = found("CHARGE", 0);
        charge["transaction"][field] = value.clone();
        mount_status(&mock, &inv, 200, charge, None).await;
        let before = app.snapshot().await;
        assert_eq!(
            post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
            (200, "OK".to_owned())
        );
        assert_eq!(app.snapshot().await, before, "{field} {value}");
        assert_eq!(status(&app, &id).await, "pending");
    }
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    let order_id = app.get_json(&format!("/v1/payments/{id}")).await["order_id"].clone();
    let mut charge = found("CHARGE", 0);
    charge["transaction"]["accountID"] = order_id;
    charge["transaction"]["createdDate"] = json!(app.state.now().to_rfc3339());
    mount_status(&mock, &inv, 200, charge, None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
}

// 9. A refund ePay may have received but did not answer: retrying it with the same
// Idempotency-Key replays the answer instead of refunding a second time under a new id.

#[tokio::test]
async fn retrying_an_unanswered_refund_with_its_key_does_not_refund_twice() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(500)).await;
    let (app, id) = charged(&mock).await;
    let send = || keyed_refund(&app, &id, "refund-r1").send();
    let first = send().await.expect("first");
    assert_eq!(first.status().as_u16(), 502);
    let second = send().await.expect("second");
    assert_eq!(second.status().as_u16(), 502);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the first answer, replayed"
    );
    let rows = refunds(&app, &id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        1,
        "ePay was asked once"
    );
}

// 8b. The merchant cancels while the block's postLink records it: the cancel's void at ePay is
// already made when the postLink's change commits. The cancel is decided again on the payment
// as it now is (ePay voids nothing twice) and recorded, not answered 409 with the block gone.

#[tokio::test]
async fn a_cancel_that_voids_a_block_while_its_post_link_lands_is_recorded() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("AUTH", 0), None).await;
    Mock::given(method("POST"))
        .and(path("/api/operation/txn-1/cancel"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(400)))
        .mount(&mock)
        .await;
    let (cancel_path, no_body) = (format!("/v1/payments/{id}/cancel"), json!({}));
    let cancel = app.post_json(&cancel_path, &no_body);
    let post_link = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await
    };
    let (cancel, link) = tokio::join!(cancel, post_link);
    assert_eq!(link, (200, "OK".to_owned()));
    assert_eq!(cancel.status().as_u16(), 200, "{:?}", cancel.text().await);
    assert_eq!(status(&app, &id).await, "canceled");
}

// 12b. check-status's REFUND says nothing about which refund: when another refund is made while
// reconciliation waits for ePay's answer, that answer may be about the new one, so the old
// refund is left pending instead of being credited with the new one's money.

#[tokio::test]
async fn a_refund_made_while_reconciliation_asks_is_not_credited_to_another() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(REFUND_PATH))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, id, clock) = charged_with_clock(&mock).await;
    let path_ = format!("/v1/payments/{id}/refunds");
    let first = app.post_json(&path_, &json!({"amount": 50_000})).await;
    assert_eq!(first.status().as_u16(), 502, "unanswered: pending");
    let inv = app.get_json(&format!("/v1/payments/{id}")).await["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    Mock::given(method("GET"))
        .and(path(format!("/api/check-status/payment/transaction/{inv}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(found("REFUND", 0))
                .set_delay(std::time::Duration::from_millis(600)),
        )
        .with_priority(1)
        .mount(&mock)
        .await;
    clock.advance(chrono::Duration::minutes(6));
    let since = app.state.now() - chrono::Duration::minutes(5);
    let pass = tolov::workers::reconcile::reconcile_once(&app.state, since);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        app.post_json(&path_, &json!({"amount": 50_000})).await
    };
    let (report, second) = tokio::join!(pass, second);
    assert_eq!(second.status().as_u16(), 201);
    let report = report.expect("pass");
    assert_eq!(
        (report.refunds_settled, report.refunds_failed),
        (0, 0),
        "{report:?}"
    );
    let states: Vec<&str> = refunds(&app, &id)
        .await
        .iter()
        .map(|r| r.status.as_str())
        .collect();
    assert_eq!(states, ["pending", "succeeded"]);
    assert_eq!(status(&app, &id).await, "partially_refunded");
}

/// An app on `mock` (tokens and API) whose requests may take `secs` seconds.
async fn app_with_request_timeout(mock: &MockServer, secs: u64) -> TestApp {
    let timeout = move |s: &mut tolov::config::Settings| s.server.request_timeout_secs = secs;
    epay_app_with(Db::Sqlite, mock, timeout, Overrides::default()).await
}

// 9c. ePay takes longer than the request may: the merchant (here without an Idempotency-Key)
// is answered 202 with the refund pending, not the server's 503 "retry" (a retry would make a
// second refund), and the refund goes on to be recorded when ePay answers.

/// A charged ePay payment on an app whose requests may take `secs`, and whose refunds ePay
/// answers only after 2.5 s.
async fn charged_with_a_slow_refund(secs: u64) -> (MockServer, TestApp, String) {
    let mock = MockServer::start().await;
    mount_refund(
        &mock,
        ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(2_500)),
    )
    .await;
    mount_token(&mock).await;
    let app = app_with_request_timeout(&mock, secs).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("CHARGE", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "succeeded");
    (mock, app, id)
}

#[tokio::test]
async fn a_refund_that_outlasts_the_request_is_answered_pending_and_recorded() {
    let (mock, app, id) = charged_with_a_slow_refund(2).await;
    let res = app
        .post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 50_000}),
        )
        .await;
    assert_eq!(res.status().as_u16(), 202);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "pending", "{body}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(&app, &id).await != "partially_refunded" && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status(&app, &id).await, "partially_refunded");
    let states: Vec<&str> = refunds(&app, &id)
        .await
        .iter()
        .map(|r| r.status.as_str())
        .collect();
    assert_eq!(states, ["succeeded"]);
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
}

/// The same with an Idempotency-Key (its work runs in a task of its own) and a body that
/// arrives slowly: the deadline still counts from the request's arrival, so the answer is 202
/// pending, not the server's 503.
#[tokio::test]
async fn a_keyed_refund_sent_slowly_that_outlasts_the_request_is_answered_pending() {
    let (_mock, app, id) = charged_with_a_slow_refund(1).await;
    let auth = format!("Bearer {API_KEY}");
    let (status_line, body) = post_slowly(
        &app,
        &format!("/v1/payments/{id}/refunds"),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "slow-refund-1"),
        ],
        &json!({"amount": 50_000}).to_string(),
        std::time::Duration::from_millis(400),
    )
    .await;
    assert_eq!(status_line, "HTTP/1.1 202 Accepted", "{body}");
}

// 9a. The refund never reached ePay: looking up the transaction to refund (check-status)
// failed first. Nothing was asked of ePay, so the refund fails and frees its amount, and the
// merchant's retry refunds; before, it stayed pending for good, holding its amount.

#[tokio::test]
async fn a_refund_whose_lookup_fails_was_not_sent_and_holds_nothing() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, id) = charged_on(Db::Sqlite, &mock).await;
    let inv = app.get_json(&format!("/v1/payments/{id}")).await["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    Mock::given(method("GET"))
        .and(path(format!("/api/check-status/payment/transaction/{inv}")))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    let first = keyed_refund(&app, &id, "refund-unsent")
        .send()
        .await
        .expect("first");
    assert_eq!(first.status().as_u16(), 502);
    assert!(requests_to(&mock, REFUND_PATH).await.is_empty());
    let states: Vec<&str> = refunds(&app, &id)
        .await
        .iter()
        .map(|r| r.status.as_str())
        .collect();
    assert_eq!(states, ["failed"], "nothing held");
    let second = keyed_refund(&app, &id, "refund-unsent")
        .send()
        .await
        .expect("second");
    assert_eq!(second.status().as_u16(), 201, "the retry refunds");
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
    assert_eq!(status(&app, &id).await, "partially_refunded");
}

// 9b. ePay refunded, but recording it failed (the database refused the write): the answer says
// the refund is pending, and a retry with the same Idempotency-Key gets that answer again
// instead of freeing the key for a second refund under a new id.

#[tokio::test]
async fn a_refund_epay_made_but_tolov_could_not_record_is_not_made_again() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, id) = charged_on(Db::Postgres, &mock).await;
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_settle() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER refuse_settle BEFORE UPDATE ON refunds FOR EACH ROW
           WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION refuse_settle();",
    )
    .execute(&mut db)
    .await
    .expect("install fault");
    let send = || keyed_refund(&app, &id, "refund-unrecorded").send();
    let first = send().await.expect("first");
    assert_eq!(
        first.status().as_u16(),
        202,
        "ePay refunded; tolov has it pending"
    );
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["status"], "pending", "{first}");
    sqlx::raw_sql("DROP TRIGGER refuse_settle ON refunds")
        .execute(&mut db)
        .await
        .expect("remove fault");
    let second = send().await.expect("second");
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the first answer, replayed"
    );
    assert_eq!(second.json::<Value>().await.expect("json"), first);
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        1,
        "ePay was asked once"
    );
    let rows = refunds(&app, &id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, RefundStatus::Pending);
}

// 10. The merchant's HTTP client gives up while ePay is still answering: the refund finishes
// anyway and its answer is kept for the key, so a retry gets it (not "in use" for ever, and not
// a second refund).

#[tokio::test]
async fn a_refund_whose_caller_hung_up_finishes_and_is_replayed() {
    let mock = MockServer::start().await;
    mount_refund(
        &mock,
        ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(1500)),
    )
    .await;
    let (app, id) = charged(&mock).await;
    let send = |timeout_ms: u64| {
        keyed_refund(&app, &id, "refund-hangup")
            .timeout(std::time::Duration::from_millis(timeout_ms))
            .send()
    };
    assert!(send(300).await.is_err(), "the caller hung up");
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let retry = send(10_000).await.expect("retry");
    assert_eq!(retry.status().as_u16(), 201);
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(status(&app, &id).await, "partially_refunded");
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
}

// 11. ePay's 10 KZT refund minimum holds for "the rest" too, not only for a written amount.

#[tokio::test]
async fn refunding_a_rest_below_the_minimum_is_refused_before_epay() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, id) = charged(&mock).await;
    let path_ = format!("/v1/payments/{id}/refunds");
    let most = app.post_json(&path_, &json!({"amount": 149_500})).await;
    assert_eq!(most.status().as_u16(), 201);
    let before = app.snapshot().await;
    assert_problem(
        app.post_json(&path_, &json!({})).await,
        422,
        "refund_below_minimum",
    )
    .await;
    assert_eq!(app.snapshot().await, before);
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
}

// 12. Refunds ePay did not answer, settled by reconciliation from check-status: REFUND means
// it happened while it is the payment's only refund; with an earlier refund REFUND says nothing
// about this one, which stays pending.

#[tokio::test]
async fn reconciliation_settles_an_unanswered_refund_only_when_check_status_can_tell() {
    let mock = MockServer::start().await;
    mount_refund(&mock, ResponseTemplate::new(500)).await;
    let (app, id, clock) = charged_with_clock(&mock).await;
    let path_ = format!("/v1/payments/{id}/refunds");
    assert_eq!(
        app.post_json(&path_, &json!({"amount": 50_000}))
            .await
            .status()
            .as_u16(),
        502
    );
    // A refund younger than the longest provider call may still be under way: not decided,
    // whatever `since` says.
    let report = tolov::workers::reconcile::reconcile_once(
        &app.state,
        app.state.now() + chrono::Duration::minutes(1),
    )
    .await
    .expect("pass");
    assert_eq!((report.refunds_settled, report.refunds_failed), (0, 0));
    clock.advance(chrono::Duration::minutes(6));
    let later = app.state.now() - chrono::Duration::minutes(5);
    // Still CHARGE: nothing was refunded, the amount is free again.
    let report = tolov::workers::reconcile::reconcile_once(&app.state, later)
        .await
        .expect("pass");
    assert_eq!((report.refunds_settled, report.refunds_failed), (0, 1));
    assert_eq!(status(&app, &id).await, "succeeded");
    // A second attempt, again unanswered; this time ePay did refund.
    assert_eq!(
        app.post_json(&path_, &json!({"amount": 50_000}))
            .await
            .status()
            .as_u16(),
        502
    );
    let inv = app.get_json(&format!("/v1/payments/{id}")).await["provider_data"]["invoice_id"]
        .as_str()
        .expect("invoice")
        .to_owned();
    Mock::given(method("GET"))
        .and(path(format!("/api/check-status/payment/transaction/{inv}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(found("REFUND", 0)))
        .with_priority(1)
        .mount(&mock)
        .await;
    clock.advance(chrono::Duration::minutes(6));
    let later = app.state.now() - chrono::Duration::minutes(5);
    let report = tolov::workers::reconcile::reconcile_once(&app.state, later)
        .await
        .expect("pass");
    assert_eq!((report.refunds_settled, report.refunds_failed), (1, 0));
    assert_eq!(status(&app, &id).await, "partially_refunded");
    // A third, unanswered: REFUND now cannot tell this one from the earlier one.
    assert_eq!(
        app.post_json(&path_, &json!({"amount": 50_000}))
            .await
            .status()
            .as_u16(),
        502
    );
    clock.advance(chrono::Duration::minutes(6));
    let later = app.state.now() - chrono::Duration::minutes(5);
    let report = tolov::workers::reconcile::reconcile_once(&app.state, later)
        .await
        .expect("pass");
    assert_eq!((report.refunds_settled, report.refunds_failed), (0, 0));
    assert_eq!(report.refunds_overdue, 0, "not yet a day old");
    let rows = refunds(&app, &id).await;
    let states: Vec<_> = rows.iter().map(|r| r.status).collect();
    assert_eq!(
        states,
        [
            RefundStatus::Failed,
            RefundStatus::Succeeded,
            RefundStatus::Pending
        ]
    );
    // B7: "the merchant must watch the refund result". A day on, still undecidable: it stays
    // pending (holding its amount) and each pass reports it, with an error in the log, for a
    // person to check at ePay.
    clock.advance(chrono::Duration::days(1));
    let later = app.state.now() - chrono::Duration::minutes(5);
    let report = tolov::workers::reconcile::reconcile_once(&app.state, later)
        .await
        .expect("pass");
    assert_eq!(
        (
            report.refunds_settled,
            report.refunds_failed,
            report.refunds_overdue
        ),
        (0, 0, 1)
    );
}

// 12. B7: "Success is HTTP 200 with an empty or irrelevant body". A refund ePay made and
// answered with a plain-text or HTML body is a refund made, not a 502 left pending for ever.

#[tokio::test]
async fn an_operation_answered_200_with_a_body_that_is_not_json_succeeded() {
    let mock = MockServer::start().await;
    mount_refund(
        &mock,
        ResponseTemplate::new(200).set_body_string("<html><body>OK</body></html>"),
    )
    .await;
    let (app, id) = charged(&mock).await;
    let res = app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(res.status().as_u16(), 201, "{:?}", res.text().await);
    assert_eq!(status(&app, &id).await, "refunded");
    let r = refunds(&app, &id).await;
    assert_eq!(
        r.iter().map(|r| r.status).collect::<Vec<_>>(),
        [RefundStatus::Succeeded]
    );
}

// 13. B6 resultCode 103 / 107 say "ask again later" about the lookup: nothing is known about the
// money, so a merchant cancel of an authorized payment must not go through without voiding
// the block at ePay.

#[tokio::test]
async fn a_lookup_that_says_ask_again_does_not_cancel_an_authorized_payment() {
    for code in ["103", "107"] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, hash) = paid_invoice(&app, 150_000).await;
        mount_status(&mock, &inv, 200, found("AUTH", 0), Some(1)).await;
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
        assert_eq!(status(&app, &id).await, "processing", "AUTH: funds blocked");
        mount_status(
            &mock,
            &inv,
            200,
            json!({"resultCode": code, "resultMessage": "try again later"}),
            None,
        )
        .await;
        let before = app.snapshot().await;
        let cancel = app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(cancel.status().as_u16(), 502, "resultCode {code}");
        assert_eq!(app.snapshot().await, before, "resultCode {code}");
        assert!(requests_to(&mock, "/api/operation/").await.is_empty());
    }
}

// 14. The payer pays on ePay's page; tolov hears of it only from the postLink (B5: it can come
// late, or not at all). A pending ePay payment is therefore asked about before it expires.

async fn clocked_app_on_mock(mock: &MockServer) -> (TestApp, Arc<ManualClock>) {
    mount_token(mock).await;
    let clock = Arc::new(ManualClock::default());
    let app = epay_app_with(
        Db::Sqlite,
        mock,
        workers_by_hand,
        Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        },
    )
    .await;
    (app, clock)
}

/// B5: "Postlinks can arrive 1–3 minutes late; poll check-status as a fallback." A pending
/// ePay payment (the payer pays in ePay's widget, unseen by tolov) is asked about by each
/// reconciliation pass once it is `workers.reconcile_after_minutes` old, not only at its
/// deadline: a charge whose postLink was lost is recorded `succeeded`, a block `processing`
/// (to capture or void), and a payer still in the widget changes nothing.
#[tokio::test]
async fn reconciliation_asks_about_a_pending_epay_payment_before_its_deadline() {
    for (answer, after) in [
        (found("CHARGE", 0), "succeeded"),
        (found("AUTH", 0), "processing"),
        (found("NEW", 0), "pending"),
        (
            json!({"resultCode": "102", "resultMessage": "not found"}),
            "pending",
        ),
    ] {
        let mock = MockServer::start().await;
        let (app, clock) = clocked_app_on_mock(&mock).await;
        let p = crate::epay::epay_payment(&app, 150_000).await;
        let id = p["id"].as_str().expect("id").to_owned();
        let inv = p["provider_data"]["invoice_id"].as_str().expect("invoice");
        mount_status(&mock, inv, 200, answer.clone(), None).await;
        let stuck_since = |app: &TestApp| app.state.now() - Span::minutes(15);
        clock.advance(Span::minutes(12));
        reconcile_once(&app.state, stuck_since(&app))
            .await
            .expect("pass");
        assert_eq!(
            requests_to(&mock, "/api/check-status").await.len(),
            0,
            "too young to ask"
        );
        // The payer presses Pay: the widget's token is renewed (the payment changes), which
        // must not put off the question: a payment is due by its age.
        let view = app
            .client
            .get(app.url(&format!("/v1/checkout/{id}")))
            .header(
                "x-client-secret",
                p["client_secret"].as_str().expect("secret"),
            )
            .send()
            .await
            .expect("view");
        assert_eq!(view.status().as_u16(), 200);
        assert_eq!(
            requests_to(&mock, "/oauth2/token").await.len(),
            2,
            "renewed"
        );
        clock.advance(Span::minutes(4));
        let report = reconcile_once(&app.state, stuck_since(&app))
            .await
            .expect("pass");
        assert_eq!(report.checked, 1, "{answer}: {report:?}");
        assert_eq!(
            (report.succeeded, report.authorized),
            match after {
                "succeeded" => (1, 0),
                "processing" => (0, 1),
                _ => (0, 0),
            },
            "{report:?}"
        );
        assert_eq!(status(&app, &id).await, after, "{answer}");
    }
}

#[tokio::test]
async fn a_pending_epay_payment_is_asked_about_before_it_expires() {
    let kept = || ExpiryReport {
        kept: 1,
        ..ExpiryReport::default()
    };
    let expired = || ExpiryReport {
        expired: 1,
        ..ExpiryReport::default()
    };
    let not_found = json!({"resultCode": "102", "resultMessage": "not found"});
    // (case, check-status HTTP status and body, minutes after creation, report, status after)
    for (what, http, answer, minutes, report, after) in [
        (
            "paid, but the postLink never came",
            200,
            found("CHARGE", 0),
            31,
            ExpiryReport {
                succeeded: 1,
                ..ExpiryReport::default()
            },
            "succeeded",
        ),
        (
            "authorized (two-step): recorded, so the merchant can capture or void it",
            200,
            found("AUTH", 0),
            31,
            kept(),
            "processing",
        ),
        (
            "the payer is still in the widget (3-D Secure)",
            200,
            found("NEW", 0),
            31,
            kept(),
            "pending",
        ),
        (
            "... but not past the widget token's two hours",
            200,
            found("NEW", 0),
            30 + 121,
            expired(),
            "expired",
        ),
        (
            "ePay cannot answer now: kept for the next pass",
            500,
            json!({}),
            31,
            kept(),
            "pending",
        ),
        (
            "... but not for more than a day",
            500,
            json!({}),
            30 + 24 * 60 + 1,
            expired(),
            "expired",
        ),
        (
            "ePay knows no payment for the invoice",
            200,
            not_found,
            31,
            expired(),
            "expired",
        ),
    ] {
        let mock = MockServer::start().await;
        let (app, clock) = clocked_app_on_mock(&mock).await;
        let (id, inv, _) = paid_invoice(&app, 150_000).await;
        mount_status(&mock, &inv, http, answer, None).await;
        clock.advance(Span::minutes(minutes));
        assert_eq!(
            expire_once(&app.state).await.expect("expiry"),
            report,
            "{what}"
        );
        assert_eq!(status(&app, &id).await, after, "{what}");
    }
}

// 14b. A provider switched off cannot be asked, and the payer may still pay at it (ePay's
// widget); its payments are kept past their deadline, as reconciliation keeps them, instead of
// being expired with a charge that nobody would then record or return.

/// No worker runs by itself: the test runs expiry, reconciliation and delivery.
fn workers_by_hand(s: &mut tolov::config::Settings) {
    s.workers.expiry_enabled = false;
    s.workers.reconcile_enabled = false;
    s.webhooks.enabled = false;
}

/// Another instance on `app`'s database and clock, its workers run by hand, with `switch_off`
/// applied (providers switched off).
async fn switched_off(
    app: &TestApp,
    clock: &Arc<ManualClock>,
    switch_off: impl FnOnce(&mut tolov::config::Settings),
) -> TestApp {
    app.second_instance_configured(
        |s| {
            workers_by_hand(s);
            switch_off(s);
        },
        Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        },
    )
    .await
}

/// [`switched_off`] with ePay off.
async fn without_epay(app: &TestApp, clock: &Arc<ManualClock>) -> TestApp {
    switched_off(app, clock, |s| s.epay.enabled = false).await
}

#[tokio::test]
async fn expiry_keeps_the_payments_of_a_provider_that_was_switched_off() {
    let mock = MockServer::start().await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, _, _) = paid_invoice(&app, 150_000).await;
    let without_epay = without_epay(&app, &clock).await;
    clock.advance(Span::minutes(31));
    assert_eq!(
        expire_once(&without_epay.state).await.expect("expiry"),
        ExpiryReport {
            kept: 1,
            ..ExpiryReport::default()
        }
    );
    assert_eq!(status(&app, &id).await, "pending");
}

// 15. An authorization that lands after the payment expired is voided, once, like one after a
// merchant cancel: otherwise the payer's funds stay blocked with nobody to capture or void them.

#[tokio::test]
async fn an_authorization_after_the_payment_expired_is_voided() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/operation/txn-1/cancel"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(
        &mock,
        &inv,
        200,
        json!({"resultCode": "102", "resultMessage": "not found"}),
        Some(1),
    )
    .await;
    mount_status(&mock, &inv, 200, found("AUTH", 0), None).await;
    clock.advance(Span::minutes(31));
    expire_once(&app.state).await.expect("expiry");
    assert_eq!(status(&app, &id).await, "expired");
    let body = link_body(&inv, &hash, "1500");
    let answers =
        futures::future::join_all((0..20).map(|_| post_link_raw(&app, &id, body.clone()))).await;
    assert!(answers.iter().all(|a| a == &(200, "OK".to_owned())));
    assert_eq!(status(&app, &id).await, "expired");
    assert_eq!(
        event_types(&app, &id).await,
        [
            "payment.created",
            "payment.expired",
            "payment.late_authorization_voided"
        ]
    );
    assert_eq!(
        requests_to(&mock, "/api/operation/txn-1/cancel")
            .await
            .len(),
        1
    );
}

// 16. Each postLink check on its own: with the right secret_hash and a payer who really paid
// (check-status says CHARGE), another invoice, currency or terminal still changes nothing; the
// same postLink with every field right then pays, so the checks are what stopped the others.

#[tokio::test]
async fn post_links_with_the_right_secret_but_another_invoice_currency_or_terminal_change_nothing()
{
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("CHARGE", 0), None).await;
    let good: Value = serde_json::from_str(&link_body(&inv, &hash, "1500")).expect("json");
    let before = app.snapshot().await;
    for (name, value) in [
        ("invoiceId", json!("999999")),
        ("currency", json!("USD")),
        ("terminal", json!("other")),
        ("secret_hash", json!("guessed")),
    ] {
        let mut forged = good.clone();
        forged[name] = value;
        assert_eq!(
            post_link_raw(&app, &id, forged.to_string()).await,
            (200, "OK".to_owned()),
            "{name}"
        );
        assert_eq!(app.snapshot().await, before, "{name}");
    }
    assert_eq!(
        post_link_raw(&app, &id, good.to_string()).await,
        (200, "OK".to_owned())
    );
    assert_eq!(status(&app, &id).await, "succeeded");
}

// 17. Expiry wins the race with a postLink: the postLink read the payment while it was pending,
// expiry then expired it (ePay knew nothing yet), and check-status answered the postLink AUTH.
// The block must be voided, not dropped with the refused pending → processing change.

#[tokio::test]
async fn an_authorization_whose_post_link_loses_to_expiry_is_voided() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/operation/txn-1/cancel"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    let check_status = format!("/api/check-status/payment/transaction/{inv}");
    // The postLink's question comes first and is answered slowly: AUTH.
    Mock::given(method("GET"))
        .and(path(check_status.clone()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(found("AUTH", 0))
                .set_delay(std::time::Duration::from_millis(1500)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    // Expiry's question, meanwhile: not found yet.
    mount_status(
        &mock,
        &inv,
        200,
        json!({"resultCode": "102", "resultMessage": "not found"}),
        None,
    )
    .await;
    let expiry = async {
        // After the postLink's question (asked at once), before its slow answer (1.5 s).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        clock.advance(Span::minutes(31));
        expire_once(&app.state).await.expect("expiry")
    };
    let (answer, report) = tokio::join!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")),
        expiry
    );
    assert_eq!(answer, (200, "OK".to_owned()));
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(status(&app, &id).await, "expired");
    assert_eq!(
        requests_to(&mock, "/api/operation/txn-1/cancel")
            .await
            .len(),
        1,
        "the block is voided"
    );
    assert_eq!(
        event_types(&app, &id).await,
        [
            "payment.created",
            "payment.expired",
            "payment.late_authorization_voided"
        ]
    );
}

// 18. B5: ePay gets HTTP 200 "OK", even when tolov is slow or cannot read the request: a
// check-status answer that outlasts the request timeout still gets "OK" (not the server's 503),
// and the payment is recorded once the answer comes; a query that cannot be read gets "OK" too.

#[tokio::test]
async fn a_slow_post_link_still_gets_ok_and_its_work_finishes() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_with_request_timeout(&mock, 1).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    Mock::given(method("GET"))
        .and(path(format!("/api/check-status/payment/transaction/{inv}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(found("CHARGE", 0))
                .set_delay(std::time::Duration::from_millis(2_000)),
        )
        .mount(&mock)
        .await;
    let answer = post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(answer, (200, "OK".to_owned()));
    assert_eq!(status(&app, &id).await, "pending", "not answered yet");
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    assert_eq!(
        status(&app, &id).await,
        "succeeded",
        "recorded when ePay answered"
    );

    for query in [
        "payment_id=a&payment_id=b",
        "payment_id=%FF%FE",
        "outcome=x&outcome=y",
    ] {
        let res = app
            .client
            .post(app.url(&format!("/v1/epay/callback?{query}")))
            .header("content-type", "application/json")
            .body(link_body(&inv, &hash, "1500"))
            .send()
            .await
            .expect("postLink");
        assert_eq!(res.status().as_u16(), 200, "{query}");
        assert_eq!(res.text().await.expect("body"), "OK", "{query}");
    }
}

// 19. The payer pays in the widget after the merchant cancelled and ePay's postLink is lost (B5:
// "poll check-status as a fallback"): the cancel scheduled a recheck for when the payment token
// is dead, and reconciliation then finds the charge and refunds it, once.

#[tokio::test]
async fn a_charge_after_a_cancel_whose_post_link_is_lost_is_found_and_refunded() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, _) = paid_invoice(&app, 150_000).await;
    cancel_before_the_money(&app, &mock, &id, &inv, "CHARGE").await;
    // The payer pays; no postLink comes. While the token may still be used, nothing is asked.
    let since = app.state.now() - Span::minutes(1);
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(report.rechecked, 0, "{report:?}");
    clock.advance(Span::hours(2));
    assert_eq!(
        reconcile_once(&app.state, since)
            .await
            .expect("pass")
            .rechecked,
        0
    );
    assert!(requests_to(&mock, REFUND_PATH).await.is_empty());
    // Past the payment's deadline plus the token's two hours: ePay is asked, the charge found.
    clock.advance(Span::hours(1));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(status(&app, &id).await, "canceled");
    assert_eq!(
        event_types(&app, &id).await,
        [
            "payment.created",
            "payment.canceled",
            "payment.late_charge_refunded"
        ]
    );
    let refunds = requests_to(&mock, REFUND_PATH).await;
    assert_eq!(refunds.len(), 1);
    assert!(
        query(&refunds[0]).contains(&("externalID".to_owned(), format!("late_{id}"))),
        "{:?}",
        query(&refunds[0])
    );
    // Done: later passes ask nothing.
    clock.advance(Span::hours(1));
    assert_eq!(
        reconcile_once(&app.state, since)
            .await
            .expect("pass")
            .rechecked,
        0
    );
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
}

// 19c. B6: reasonCode 454 ("operation failed, sum may be blocked") is not final. A canceled
// payment whose check-status still says so when the payment token dies is asked again (for up
// to a day past its deadline), and the charge that lands after all is found and returned.

#[tokio::test]
async fn a_recheck_that_finds_a_state_not_yet_final_asks_again() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, _) = paid_invoice(&app, 150_000).await;
    // The charge lands in the end (its postLink lost); at the payer deadline (30 min + 2 h)
    // check-status still says 454.
    cancel_before_the_money(&app, &mock, &id, &inv, "CHARGE").await;
    Mock::given(method("GET"))
        .and(path(format!("/api/check-status/payment/transaction/{inv}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(found("REJECT", 454)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    clock.advance(Span::hours(3));
    let since = app.state.now() - Span::minutes(1);
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 0),
        "not final: asked again later: {report:?}"
    );
    clock.advance(Span::minutes(11));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
    assert_eq!(status(&app, &id).await, "canceled");
}

// 19a. While ePay is switched off its payments cannot be canceled: the payer may still pay in the
// widget, and with ePay off nothing would ask ePay afterwards (no recheck), so the charge would
// be kept. A pending payment of a provider that cannot move money by itself is canceled.

#[tokio::test]
async fn a_payment_of_a_switched_off_provider_where_money_may_move_is_not_canceled() {
    let mock = MockServer::start().await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, _, _) = paid_invoice(&app, 150_000).await;
    let click = app.new_payment("click", 150_000).await;
    let click = click["id"].as_str().expect("id").to_owned();
    let off = switched_off(&app, &clock, |s| {
        s.epay.enabled = false;
        s.click.enabled = false;
    })
    .await;
    let res = off
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_problem(res, 422, "provider_disabled").await;
    assert_eq!(status(&app, &id).await, "pending");
    let res = off
        .post_json(&format!("/v1/payments/{click}/cancel"), &json!({}))
        .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(status(&app, &click).await, "canceled");
}

// 19b. While ePay is switched off its rechecks wait, however long, instead of counting towards
// giving up: once it is on again the charge is still found and returned.

#[tokio::test]
async fn a_recheck_waits_while_its_provider_is_switched_off() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, _) = paid_invoice(&app, 150_000).await;
    cancel_before_the_money(&app, &mock, &id, &inv, "CHARGE").await;
    let without_epay = without_epay(&app, &clock).await;
    clock.advance(Span::hours(3));
    // Two days of passes every ten minutes, far past the attempts a recheck is given.
    for _ in 0..300 {
        let since = without_epay.state.now() - Span::minutes(1);
        reconcile_once(&without_epay.state, since)
            .await
            .expect("pass");
        clock.advance(Span::minutes(10));
    }
    assert!(requests_to(&mock, REFUND_PATH).await.is_empty());
    let since = app.state.now() - Span::minutes(1);
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
    assert_eq!(
        event_types(&app, &id).await.last().map(String::as_str),
        Some("payment.late_charge_refunded")
    );
}

// 20. Returning late money fails (ePay down): reconciliation tries again ten minutes later
// instead of waiting for a postLink ePay may never send again.

#[tokio::test]
async fn a_failed_return_of_late_money_is_tried_again() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    Mock::given(method("POST"))
        .and(path(REFUND_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    mount_refund(&mock, ResponseTemplate::new(200)).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    cancel_before_the_money(&app, &mock, &id, &inv, "CHARGE").await;
    assert_eq!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        1,
        "tried, refused"
    );
    assert_eq!(
        event_types(&app, &id).await,
        ["payment.created", "payment.canceled"]
    );
    let since = app.state.now() - Span::minutes(1);
    clock.advance(Span::minutes(11));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 2);
    assert_eq!(
        event_types(&app, &id).await,
        [
            "payment.created",
            "payment.canceled",
            "payment.late_charge_refunded"
        ]
    );
    // The recheck the cancel scheduled (for when the token is dead) finds it returned.
    clock.advance(Span::hours(3));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert!(report.rechecked <= 1, "{report:?}");
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        2,
        "returned once"
    );
}

// 16. ePay's refusals of the merchant's capture and cancel, and check-status statuses end to
// end (atmos-epay.md B6, B7).

/// An authorized payment (AUTH found by check-status through its postLink): `processing`.
async fn authorized(app: &TestApp, mock: &MockServer) -> String {
    let (id, inv, hash) = paid_invoice(app, 150_000).await;
    mount_status(mock, &inv, 200, found("AUTH", 0), None).await;
    post_link_raw(app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(app, &id).await, "processing");
    id
}

async fn mount_operation(mock: &MockServer, op: &str, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(format!("/api/operation/txn-1/{op}")))
        .respond_with(answer)
        .mount(mock)
        .await;
}

/// B7: ePay refuses an operation on a block (HTTP 400 `{code, message}`): the merchant's capture
/// (`charge`) or cancel (`cancel`, the void) is refused with `422 provider_rejected`, and the
/// payment stays `processing` with nothing written.
async fn an_operation_epay_refuses_changes_nothing(op: &str, route: &str) {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let id = authorized(&app, &mock).await;
    mount_operation(
        &mock,
        op,
        ResponseTemplate::new(400)
            .set_body_json(json!({"code": 3, "message": "operation not allowed"})),
    )
    .await;
    let before = app.snapshot().await;
    let refused = app
        .post_json(&format!("/v1/payments/{id}/{route}"), &json!({}))
        .await;
    assert_problem(refused, 422, "provider_rejected").await;
    assert_eq!(app.snapshot().await, before, "{route}");
    assert_eq!(status(&app, &id).await, "processing");
}

#[tokio::test]
async fn a_capture_epay_refuses_changes_nothing() {
    an_operation_epay_refuses_changes_nothing("charge", "capture").await;
}

#[tokio::test]
async fn a_void_epay_refuses_leaves_the_payment_authorized() {
    an_operation_epay_refuses_changes_nothing("cancel", "cancel").await;
}

/// Nothing blocked at ePay (check-status NEW): nothing to capture, `422 provider_rejected`
/// naming it, and no operation is sent.
#[tokio::test]
async fn a_capture_of_a_payment_epay_has_not_authorized_is_refused_before_any_operation() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let app = app_on_mock_db(Db::Sqlite, &mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(&mock, &inv, 200, found("NEW", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "processing", "NEW is in progress");
    let before = app.snapshot().await;
    let capture = app
        .post_json(&format!("/v1/payments/{id}/capture"), &json!({}))
        .await;
    let problem = assert_problem(capture, 422, "provider_rejected").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not_authorized")),
        "{problem}"
    );
    assert_eq!(app.snapshot().await, before);
    assert!(requests_to(&mock, "/api/operation/").await.is_empty());
}

/// check-status answered with an HTTP status that carries no resultCode (403, 404): the cancel
/// that needed it is refused naming the status, and nothing changes.
#[tokio::test]
async fn a_check_status_answered_403_or_404_decides_nothing() {
    for http in [403, 404] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, hash) = paid_invoice(&app, 150_000).await;
        mount_status(&mock, &inv, 200, found("AUTH", 0), Some(1)).await;
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
        assert_eq!(status(&app, &id).await, "processing");
        mount_status(&mock, &inv, http, json!({"error": "forbidden"}), None).await;
        let before = app.snapshot().await;
        let cancel = app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        let problem = assert_problem(cancel, 422, "provider_rejected").await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("HTTP {http}"))),
            "{problem}"
        );
        assert_eq!(app.snapshot().await, before, "HTTP {http}");
        assert!(requests_to(&mock, "/api/operation/").await.is_empty());
    }
}

/// B6 end to end: after a postLink, FAILED, 3D and CANCEL_OLD are final declines (a processing
/// payment is payable again: `pending`); CANCEL is the merchant's void (`canceled`);
/// FINGERPRINT and REJECT with reasonCode 459 are not final (it stays `processing`).
#[tokio::test]
async fn every_status_name_of_b6_moves_a_processing_payment_as_the_spec_reads_it() {
    for (status_name, reason, expected) in [
        ("FAILED", 0, "pending"),
        ("3D", 0, "pending"),
        ("CANCEL_OLD", 0, "pending"),
        // The merchant released the block (B6 "authorisation released"): no payment to reopen.
        ("CANCEL", 0, "canceled"),
        ("FINGERPRINT", 0, "processing"),
        ("REJECT", 459, "processing"),
    ] {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        let app = app_on_mock_db(Db::Sqlite, &mock).await;
        let (id, inv, hash) = paid_invoice(&app, 150_000).await;
        mount_status(&mock, &inv, 200, found("NEW", 0), Some(1)).await;
        mount_status(&mock, &inv, 200, found(status_name, reason), None).await;
        let body = link_body(&inv, &hash, "1500");
        post_link_raw(&app, &id, body.clone()).await;
        assert_eq!(status(&app, &id).await, "processing", "NEW first");
        assert_eq!(
            post_link_raw(&app, &id, body).await,
            (200, "OK".to_owned()),
            "{status_name}"
        );
        assert_eq!(status(&app, &id).await, expected, "{status_name} {reason}");
    }
}

/// A merchant's void that ePay made but whose answer was lost (the cancel answered 502) is found
/// by reconciliation as CANCEL, "authorisation released" (B6): the payment is `canceled`, not
/// reopened for the payer (the merchant cancelled the order).
#[tokio::test]
async fn a_void_whose_answer_was_lost_is_recorded_as_a_cancel() {
    for by_expiry in [false, true] {
        a_void_whose_answer_was_lost_is_canceled_by(by_expiry).await;
    }
}

/// Reconciliation finds the released block, or (`by_expiry`) expiry does past the deadline.
async fn a_void_whose_answer_was_lost_is_canceled_by(by_expiry: bool) {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    // The postLink and the merchant's cancel see the block; afterwards it is released.
    mount_status(&mock, &inv, 200, found("AUTH", 0), Some(2)).await;
    mount_status(&mock, &inv, 200, found("CANCEL", 0), None).await;
    post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await;
    assert_eq!(status(&app, &id).await, "processing");
    mount_operation(&mock, "cancel", ResponseTemplate::new(504)).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 502);
    assert_eq!(status(&app, &id).await, "processing");
    if by_expiry {
        clock.advance(Span::minutes(31));
        let report = expire_once(&app.state).await.expect("pass");
        assert_eq!(
            report,
            ExpiryReport {
                canceled: 1,
                ..Default::default()
            }
        );
    } else {
        let report = reconcile_once(&app.state, app.state.now() + Span::minutes(1))
            .await
            .expect("pass");
        assert_eq!(report.canceled, 1, "{report:?}");
    }
    assert_eq!(status(&app, &id).await, "canceled");
    assert_eq!(
        event_types(&app, &id).await.last().map(String::as_str),
        Some("payment.canceled")
    );
}

/// Late money whose return ePay made but whose answer was lost (the refund timed out): the
/// recheck finds check-status saying REFUND and records the return, once, without refunding
/// again (before, the payment's events never said the money went back).
#[tokio::test]
async fn a_return_of_late_money_whose_answer_was_lost_is_recorded_from_check_status() {
    let mock = MockServer::start().await;
    mount_token(&mock).await;
    mount_refund(&mock, ResponseTemplate::new(504)).await;
    let (app, clock) = clocked_app_on_mock(&mock).await;
    let (id, inv, hash) = paid_invoice(&app, 150_000).await;
    mount_status(
        &mock,
        &inv,
        200,
        json!({"resultCode": "102", "resultMessage": "not found"}),
        Some(1),
    )
    .await;
    mount_status(&mock, &inv, 200, found("CHARGE", 0), Some(1)).await;
    mount_status(&mock, &inv, 200, found("REFUND", 0), None).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    assert_eq!(
        post_link_raw(&app, &id, link_body(&inv, &hash, "1500")).await,
        (200, "OK".to_owned())
    );
    assert_eq!(requests_to(&mock, REFUND_PATH).await.len(), 1);
    assert_eq!(
        event_types(&app, &id).await,
        ["payment.created", "payment.canceled"]
    );
    let since = app.state.now() - Span::minutes(1);
    clock.advance(Span::minutes(11));
    reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        event_types(&app, &id).await,
        [
            "payment.created",
            "payment.canceled",
            "payment.late_charge_refunded"
        ]
    );
    assert_eq!(status(&app, &id).await, "canceled");
    clock.advance(Span::hours(3));
    reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        requests_to(&mock, REFUND_PATH).await.len(),
        1,
        "never refunded twice"
    );
    assert_eq!(event_types(&app, &id).await.len(), 3);
}
