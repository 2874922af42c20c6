//! The Click Merchant API client against a mock Click (wiremock): the Auth header, reversal wired
//! to refunds, status calls, and provider faults (5xx, timeout, garbage, refusals) that must
//! leave the payment as it was.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tolov::domain::PaymentId;
use tolov::providers::click::merchant_api::MerchantApi;
use tolov::providers::ProviderError;
use tolov::startup::Overrides;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

const SECRET: &str = "sandbox-click-secret";

/// `Auth: merchant_user_id:sha1(timestamp + secret):timestamp`, checked independently.
fn auth_is_valid(req: &Request) -> bool {
    let Some(auth) = req.headers.get("auth").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let parts: Vec<&str> = auth.split(':').collect();
    let [user, digest, ts] = parts.as_slice() else {
        return false;
    };
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 60);
    *user == "30001"
        && *digest == hex::encode(Sha1::digest(format!("{ts}{SECRET}")))
        && fresh
        && ts.len() == 10
}

/// A paid Click payment (paid through the sandbox payer) on an app whose Merchant API is `mock`.
async fn paid_click_payment(mock: &MockServer) -> (TestApp, String, String) {
    let uri = mock.uri();
    let app = spawn_app_with(
        Db::Sqlite,
        move |s| s.click.api_url = uri,
        Overrides::default(),
    )
    .await;
    let p = app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let paid = app
        .client
        .post(app.url(&format!("/sandbox/click/{id}/pay")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status().as_u16(), 200);
    let click_trans_id = paid.json::<Value>().await.expect("json")["click_trans_id"].to_string();
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    (app, id, click_trans_id)
}

async fn refund(app: &TestApp, id: &str) -> reqwest::Response {
    app.post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await
}

async fn refund_rows(app: &TestApp, id: &str) -> Vec<tolov::domain::Refund> {
    let pid = PaymentId::parse(id).expect("id");
    app.state.store.list_refunds(&pid).await.expect("refunds")
}

#[tokio::test]
async fn a_full_refund_is_a_signed_reversal_of_the_click_payment() {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path_regex(r"^/payment/reversal/10001/\d+$"))
        .respond_with(|req: &Request| {
            if auth_is_valid(req) {
                ResponseTemplate::new(200).set_body_json(
                    json!({"error_code": 0, "error_note": "Success", "payment_id": 1}),
                )
            } else {
                ResponseTemplate::new(401)
                    .set_body_json(json!({"error_code": -500, "error_note": "bad auth"}))
            }
        })
        .expect(1)
        .mount(&mock)
        .await;
    let (app, id, click_trans_id) = paid_click_payment(&mock).await;
    let res = refund(&app, &id).await;
    assert_eq!(res.status().as_u16(), 201);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        (body["status"].clone(), body["amount"].clone()),
        (json!("succeeded"), json!(150_000))
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "refunded"
    );
    let requests = mock.received_requests().await.expect("recorded");
    assert_eq!(
        requests[0].url.path(),
        format!("/payment/reversal/10001/{click_trans_id}")
    );
    assert_eq!(
        requests[0]
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let rows = refund_rows(&app, &id).await;
    assert_eq!(
        rows[0].external_id.as_deref(),
        Some(click_trans_id.as_str())
    );
}

#[tokio::test]
async fn click_down_leaves_the_payment_paid_and_the_refund_pending() {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&mock)
        .await;
    let (app, id, _) = paid_click_payment(&mock).await;
    assert_problem(refund(&app, &id).await, 502, "provider_unavailable").await;
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    // Click may or may not have reversed: the refund stays pending (holding its amount) for
    // reconciliation, so a second refund cannot double it.
    let rows = refund_rows(&app, &id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, tolov::domain::RefundStatus::Pending);
    assert_problem(refund(&app, &id).await, 422, "refund_exceeds_payment").await;
}

/// Click refuses the reversal with `answer`: the refund fails at once with `422
/// provider_rejected` whose detail names `why`, its amount is free again, and the payment
/// stays paid.
async fn a_refused_reversal_fails_the_refund(answer: ResponseTemplate, why: &str) {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(answer)
        .mount(&mock)
        .await;
    let (app, id, _) = paid_click_payment(&mock).await;
    let problem = assert_problem(refund(&app, &id).await, 422, "provider_rejected").await;
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains(why)),
        "{problem}"
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    let rows = refund_rows(&app, &id).await;
    assert_eq!(rows[0].status, tolov::domain::RefundStatus::Failed, "{why}");
}

#[tokio::test]
async fn a_click_refusal_fails_the_refund_and_frees_the_amount() {
    a_refused_reversal_fails_the_refund(
        ResponseTemplate::new(200)
            .set_body_json(json!({"error_code": -5, "error_note": "Reversal period is over"})),
        "Reversal period is over",
    )
    .await;
}

/// §2.9: Click answering a reversal with an HTTP error and no `error_code` (401, 404, 406)
/// refused it, as an `error_code` would.
#[tokio::test]
async fn a_reversal_click_answers_with_an_http_error_fails_the_refund() {
    for http in [401, 404, 406] {
        a_refused_reversal_fails_the_refund(ResponseTemplate::new(http), &format!("HTTP {http}"))
            .await;
    }
}

#[tokio::test]
async fn garbage_from_click_is_a_provider_error_not_a_crash() {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops</html>"))
        .mount(&mock)
        .await;
    let (app, id, _) = paid_click_payment(&mock).await;
    assert_problem(refund(&app, &id).await, 502, "provider_error").await;
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn a_click_timeout_is_reported_and_changes_nothing() {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"error_code": 0}))
                .set_delay(Duration::from_secs(12)),
        )
        .mount(&mock)
        .await;
    let (app, id, _) = paid_click_payment(&mock).await;
    assert_problem(refund(&app, &id).await, 502, "provider_unavailable").await;
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    assert_eq!(
        refund_rows(&app, &id).await[0].status,
        tolov::domain::RefundStatus::Pending
    );
}

fn client(base: String) -> MerchantApi {
    MerchantApi {
        base,
        service_id: "10001".into(),
        merchant_user_id: "30001".into(),
        secret: SecretString::from(SECRET),
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn status_calls_use_the_documented_paths() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/555"))
        .respond_with(|req: &Request| {
            assert!(auth_is_valid(req));
            ResponseTemplate::new(200).set_body_json(json!({"error_code": 0, "error_note": "Success", "payment_id": 555, "payment_status": 2}))
        })
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/payment/status_by_mti/10001/pay_x/2026-11-23"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"error_code": 0, "payment_id": 555, "merchant_trans_id": "pay_x"}),
        ))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/777"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"error_code": -16, "error_note": "Payment not found"})),
        )
        .mount(&mock)
        .await;
    let api = client(mock.uri());
    assert_eq!(api.payment_status("555").await.expect("status"), 2);
    assert_eq!(
        api.status_by_merchant_trans_id("pay_x", "2026-11-23")
            .await
            .expect("mti"),
        Some(555)
    );
    match api.payment_status("777").await {
        Err(ProviderError::Rejected { code, message, .. }) => assert_eq!(
            (code.as_str(), message.as_str()),
            ("-16", "Payment not found")
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let unreachable = client("http://127.0.0.1:9".into());
    assert!(matches!(
        unreachable.payment_status("1").await,
        Err(ProviderError::Unavailable(..))
    ));
}
