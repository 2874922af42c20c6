//! ATMOS card payments end to end (atmos-epay.md part A): the payer's checkout calls
//! (pre-apply → SMS code → confirm), card checks before any provider call, the signed callback,
//! refunds, provider faults against a mock ATMOS (wiremock), races on both backends, and the
//! expiry/reconciliation workers under a controlled clock. Signatures are computed here with
//! the md-5 crate, independently of tolov's code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::Duration as Span;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tolov::startup::Overrides;
use tolov::state::ManualClock;
use tolov::workers::expiry::{expire_once, ExpiryReport};
use tolov::workers::reconcile::reconcile_once;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

const GOOD_CARD: &str = "8600490744313347";
const SMS_OFF_CARD: &str = "8600493214116133";
const PROCESSING_ERROR_CARD: &str = "8600312987000557";
const POOR_CARD: &str = "8600312998546358";
const HUMO_CARD: &str = "9860090101431907";
/// Far enough ahead that the suite does not start failing when it passes.
const EXPIRY: &str = "10/39";
const OTP: &str = "111111";
const CALLBACK_KEY: &str = "sandbox-atmos-callback-key";
const STORE_ID: &str = "1";
const AMOUNT: i64 = 150_000;
const UNKNOWN_ID: &str = "pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C";

const UZ_CARD_INVALID: &str = "Karta ma'lumotlari noto'g'ri. Iltimos, qaytadan tekshiring.";
const RU_CARD_INVALID: &str = "Неверные данные карты. Пожалуйста, проверьте ещё раз.";
const UZ_OTP_INVALID: &str = "SMS kod noto'g'ri yoki muddati tugagan. Qaytadan urinib ko'ring.";
const UZ_INSUFFICIENT: &str = "Kartada yetarli mablag' yo'q. Hisobni to'ldiring.";
const UZ_SMS_OFF: &str = "SMS xizmati ulanmagan. Bankingizga murojaat qiling.";

/// `md5_hex(store_id ‖ transaction_id ‖ invoice ‖ amount ‖ callback_key)` over the raw strings.
fn sign(store_id: &str, transaction_id: &str, invoice: &str, amount: &str) -> String {
    hex::encode(Md5::digest(format!(
        "{store_id}{transaction_id}{invoice}{amount}{CALLBACK_KEY}"
    )))
}

/// A callback body as ATMOS sends it, signed over exactly these values.
fn signed_callback(store_id: &str, transaction_id: &str, invoice: &str, amount: &str) -> Value {
    json!({
        "store_id": store_id,
        "transaction_id": transaction_id,
        "transaction_time": "1795000000000",
        "amount": amount,
        "invoice": invoice,
        "sign": sign(store_id, transaction_id, invoice, amount),
    })
}

/// An ATMOS payment as the merchant created it, with what the payer's browser gets.
struct Atmos<'a> {
    app: &'a TestApp,
    id: String,
    secret: String,
    account: String,
    transaction_id: i64,
}

async fn atmos_payment<'a>(app: &'a TestApp, language: &str) -> Atmos<'a> {
    let mut body = payment_body("atmos", AMOUNT);
    body["language"] = json!(language);
    let res = app.create_payment(&body).await;
    assert_eq!(res.status().as_u16(), 201, "create atmos payment");
    let p: Value = res.json().await.expect("json");
    assert_eq!(
        (
            p["status"].clone(),
            p["provider"].clone(),
            p["currency"].clone()
        ),
        (json!("pending"), json!("atmos"), json!("UZS")),
        "{p}"
    );
    let data = &p["provider_data"];
    let account = data["account"].as_str().expect("account").to_owned();
    assert!(
        !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit()),
        "ATMOS wants a numeric account: {p}"
    );
    assert_eq!(
        (data["store_id"].clone(), data["form"].clone()),
        (json!(STORE_ID), json!("card")),
        "{p}"
    );
    Atmos {
        app,
        id: p["id"].as_str().expect("id").to_owned(),
        secret: p["client_secret"]
            .as_str()
            .expect("client secret")
            .to_owned(),
        account,
        transaction_id: data["transaction_id"].as_i64().expect("transaction_id"),
    }
}

/// A checkout call as the payer's browser makes it.
async fn checkout(
    app: &TestApp,
    id: &str,
    action: &str,
    secret: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(&format!("/v1/checkout/{id}/atmos/{action}")));
    if let Some(s) = secret {
        req = req.header("X-Client-Secret", s);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("checkout request")
}

impl Atmos<'_> {
    /// The ATMOS attempt rows of this payment as (state, has perform_time, has cancel_time).
    async fn attempts(&self) -> Vec<(String, bool, bool)> {
        self.app
            .transactions(&self.id)
            .await
            .into_iter()
            .map(|t| (t.state, t.perform_time.is_some(), t.cancel_time.is_some()))
            .collect()
    }

    async fn pre_apply(&self, card: &str, expiry: &str) -> reqwest::Response {
        self.pre_apply_body(json!({ "card_number": card, "expiry": expiry }))
            .await
    }

    async fn pre_apply_body(&self, body: Value) -> reqwest::Response {
        checkout(
            self.app,
            &self.id,
            "pre-apply",
            Some(&self.secret),
            Some(body),
        )
        .await
    }

    /// Pre-apply that must succeed: the SMS is sent.
    async fn card_attached(&self, card: &str) {
        let res = self.pre_apply(card, EXPIRY).await;
        assert_eq!(res.status().as_u16(), 200, "pre-apply {card}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["status"], "otp_sent", "{body}");
        assert_eq!(self.status().await, "processing");
    }

    async fn confirm(&self, otp: &str) -> reqwest::Response {
        checkout(
            self.app,
            &self.id,
            "confirm",
            Some(&self.secret),
            Some(json!({ "otp": otp })),
        )
        .await
    }

    async fn confirmed(&self) {
        let res = self.confirm(OTP).await;
        assert_eq!(res.status().as_u16(), 200, "confirm");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body, json!({"status": "succeeded"}));
    }

    async fn resend(&self) -> reqwest::Response {
        checkout(self.app, &self.id, "resend-otp", Some(&self.secret), None).await
    }

    async fn status(&self) -> String {
        self.app
            .get_json(&format!("/v1/payments/{}", self.id))
            .await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    /// (type, actor) of every event, oldest first.
    async fn events(&self) -> Vec<(String, String)> {
        self.event_list()
            .await
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("?").to_owned(),
                    e["actor"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }

    async fn event_list(&self) -> Vec<Value> {
        self.app
            .get_json(&format!("/v1/payments/{}/events", self.id))
            .await["data"]
            .as_array()
            .cloned()
            .expect("events")
    }

    async fn succeeded_events(&self) -> usize {
        self.events()
            .await
            .iter()
            .filter(|(t, _)| t == "payment.succeeded")
            .count()
    }

    /// A correctly signed callback for this payment's attempt.
    fn callback_body(&self) -> Value {
        signed_callback(
            STORE_ID,
            &self.transaction_id.to_string(),
            &self.account,
            &AMOUNT.to_string(),
        )
    }
}

fn events(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, a)| ((*t).to_owned(), (*a).to_owned()))
        .collect()
}

/// ATMOS's answer to a callback: always HTTP 200 with `{status, message}`.
async fn send_callback(app: &TestApp, body: &Value) -> Value {
    let res = app
        .client
        .post(app.url("/v1/atmos/callback"))
        .json(body)
        .send()
        .await
        .expect("callback");
    callback_answer(res).await
}

async fn callback_answer(res: reqwest::Response) -> Value {
    assert_eq!(res.status().as_u16(), 200, "callbacks are always HTTP 200");
    let answer: Value = res.json().await.expect("callback answer is JSON");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    answer
}

/// A payer error: problem+json, `detail` in the payment's language, `messages` in all three.
async fn assert_payer_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    let body = assert_problem(res, status, code).await;
    for lang in ["uz", "ru", "en"] {
        assert!(
            body["messages"][lang]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "messages.{lang} missing: {body}"
        );
    }
    body
}

// ---------------------------------------------------------------------------------------------
// A mock ATMOS (wiremock).

fn ok_body(extra: Value) -> Value {
    let mut v = json!({ "result": { "code": "OK", "description": "Нет ошибок" } });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn confirmed_transaction(confirmed: bool) -> Value {
    json!({ "store_transaction": {
        "trans_id": 1, "success_trans_id": if confirmed { json!(9_000_001) } else { Value::Null },
        "amount": AMOUNT, "total": AMOUNT, "confirmed": confirmed,
        "status_code": if confirmed { "0" } else { "1" }, "status_message": "Success",
    }})
}

/// Tokens "t1", "t2", … (so fetches can be told apart), only for the sandbox credentials.
async fn mount_token(mock: &MockServer) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("sandbox-atmos-consumer-key:sandbox-atmos-consumer-secret")
    );
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::header("authorization", basic.as_str()))
        .and(wiremock::matchers::body_string_contains(
            "grant_type=client_credentials",
        ))
        .respond_with(move |_: &Request| {
            let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(json!({
                "access_token": format!("t{i}"), "scope": "am_application_scope default",
                "token_type": "Bearer", "expires_in": 3600
            }))
        })
        .mount(mock)
        .await;
    n
}

/// ATMOS's answer for a transaction it closed (A4.4: STPIMS-ERR-092).
fn closed_draft() -> Value {
    refusal("STPIMS-ERR-092", "Транзакция закрыта")
}

/// `merchant/pay/create` answering a fresh transaction id each time (from 555001).
async fn mount_create(mock: &MockServer) {
    let next = Arc::new(AtomicUsize::new(555_000));
    Mock::given(method("POST"))
        .and(path("/merchant/pay/create"))
        .respond_with(move |_: &Request| {
            let id = next.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(ok_body(json!({ "transaction_id": id })))
        })
        .mount(mock)
        .await;
}

async fn mount_ok(mock: &MockServer, at: &str, extra: Value) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(extra)))
        .mount(mock)
        .await;
}

/// [`mount_ok`] answering after `delay`.
async fn mount_ok_after(mock: &MockServer, at: &str, extra: Value, delay: Duration) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(extra))
                .set_delay(delay),
        )
        .mount(mock)
        .await;
}

/// ATMOS refusing a call with `code` (HTTP 200, its `result` envelope).
fn refusal(code: &str, description: &str) -> Value {
    json!({"result": {"code": code, "description": description}})
}

/// `at` answers with ATMOS's refusal `code` after `delay`.
async fn mount_refused_after(
    mock: &MockServer,
    at: &str,
    code: &str,
    description: &str,
    delay: Duration,
) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(refusal(code, description))
                .set_delay(delay),
        )
        .mount(mock)
        .await;
}

/// `apply` answers "wrong code" (STPIMS-ERR-044) after `delay`, so calls can overlap it.
async fn mount_wrong_code_at_apply(mock: &MockServer, delay: Duration) {
    mount_refused_after(
        mock,
        "/merchant/pay/apply",
        "STPIMS-ERR-044",
        "Неверный код",
        delay,
    )
    .await;
}

/// The next `pay/get` (only that one) says "not debited": what a merchant cancel hears before
/// the debit lands.
async fn mount_undebited_once(mock: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(confirmed_transaction(false))),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(mock)
        .await;
}

/// Token and create answered; everything else is up to the test.
async fn mock_atmos() -> (MockServer, Arc<AtomicUsize>) {
    let mock = MockServer::start().await;
    let tokens = mount_token(&mock).await;
    mount_create(&mock).await;
    (mock, tokens)
}

async fn app_on_mock(db: Db, mock: &MockServer) -> TestApp {
    let uri = mock.uri();
    spawn_app_with(db, move |s| s.atmos.base_url = uri, Overrides::default()).await
}

/// [`app_on_mock`] on SQLite with more settings changed, and `overrides` (a clock).
async fn app_on_mock_with(
    mock: &MockServer,
    configure: impl FnOnce(&mut tolov::config::Settings) + Send + 'static,
    overrides: Overrides,
) -> TestApp {
    let uri = mock.uri();
    spawn_app_with(
        Db::Sqlite,
        move |s| {
            s.atmos.base_url = uri;
            configure(s);
        },
        overrides,
    )
    .await
}

/// [`app_on_mock_with`] where an ATMOS call ends after a second (a code check's answer can be
/// lost), under a clock the test moves, with the workers left to the test.
async fn slow_calls_on_a_clock(mock: &MockServer) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let app = app_on_mock_with(
        mock,
        |s| {
            s.atmos.timeout_secs = 1;
            s.workers.expiry_enabled = false;
            s.workers.reconcile_enabled = false;
        },
        Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        },
    )
    .await;
    (app, clock)
}

async fn requests_to(mock: &MockServer, at: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|r| r.url.path() == at)
        .collect()
}

fn json_of(r: &Request) -> Value {
    serde_json::from_slice(&r.body).expect("JSON request body")
}

fn bearer_of(r: &Request) -> String {
    r.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. The happy path through the built-in simulator.

#[tokio::test]
async fn card_sms_code_pays_keeps_only_the_masked_pan_and_refunds_in_full() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;

    let res = p.pre_apply("8600 4907 4431 3347", EXPIRY).await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body,
        json!({"status": "otp_sent", "masked_card": "8600 **** **** 3347", "card_type": "uzcard"})
    );
    assert_eq!(p.status().await, "processing");

    let res = p.resend().await;
    assert_eq!(res.status().as_u16(), 200, "resend after pre-apply");
    assert_eq!(
        res.json::<Value>().await.expect("json"),
        json!({"status": "otp_sent"})
    );

    p.confirmed().await;
    assert_eq!(p.status().await, "succeeded");
    // The simulator sends its callback as it answers apply, so either the payer's confirm or
    // the callback (actor "provider") records the success; once.
    let mut seen = p.events().await;
    let (_, paid_by) = seen.pop().expect("event");
    assert!(paid_by == "payer" || paid_by == "provider", "{paid_by}");
    assert_eq!(
        seen,
        events(&[
            ("payment.created", "merchant"),
            ("payment.processing", "payer"),
        ])
    );
    assert_eq!(p.succeeded_events().await, 1);
    let snapshot = app.snapshot().await;
    assert!(
        !snapshot.contains(GOOD_CARD) && !snapshot.contains("49074431"),
        "the full PAN is stored somewhere:\n{snapshot}"
    );
    assert!(
        snapshot.contains("8600 **** **** 3347"),
        "the masked PAN is kept:\n{snapshot}"
    );
    // The expiry as the payer typed it and as ATMOS got it (YYMM, quoted: a bare 3910 can occur
    // inside a millisecond timestamp).
    assert!(
        !snapshot.contains(OTP) && !snapshot.contains(EXPIRY) && !snapshot.contains("\"3910\""),
        "neither the SMS code nor the card's expiry is stored:\n{snapshot}"
    );

    // The simulator's signed callback follows the debit; it must change nothing more.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.succeeded_events().await, 1);
    }
    assert_eq!(
        app.snapshot().await,
        snapshot,
        "the callback changed nothing"
    );

    // Paid: the card form is closed, a repeated confirm is harmless.
    assert_problem(
        p.pre_apply(GOOD_CARD, EXPIRY).await,
        409,
        "payment_already_paid",
    )
    .await;
    p.confirmed().await;
    assert_eq!(app.snapshot().await, snapshot);

    // ATMOS reverses only whole payments.
    let refunds = format!("/v1/payments/{}/refunds", p.id);
    assert_problem(
        app.post_json(&refunds, &json!({"amount": 50_000})).await,
        422,
        "partial_refund_not_supported",
    )
    .await;
    assert_eq!(app.snapshot().await, snapshot);
    let res = app.post_json(&refunds, &json!({})).await;
    assert_eq!(res.status().as_u16(), 201);
    let refund: Value = res.json().await.expect("json");
    assert_eq!(
        (refund["status"].clone(), refund["amount"].clone()),
        (json!("succeeded"), json!(AMOUNT)),
        "{refund}"
    );
    assert_eq!(p.status().await, "refunded");
    let kinds: Vec<String> = p.events().await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        kinds[3..],
        ["refund.created", "payment.refunded", "refund.succeeded"],
        "{kinds:?}"
    );
    assert_problem(
        app.post_json(&refunds, &json!({})).await,
        409,
        "payment_not_refundable",
    )
    .await;
    // A (late) repeat of the callback for a reversed payment is refused (status 0: the payment
    // is closed, ATMOS must not debit it) and changes nothing.
    let after = app.snapshot().await;
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 0);
    assert_eq!(app.snapshot().await, after);
}

#[tokio::test]
async fn a_humo_card_is_recognised() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "en").await;
    // The month it is now (by the app's clock), the last month the card is valid in.
    let this_month = app.state.now().format("%m/%y").to_string();
    let res = p.pre_apply(HUMO_CARD, &this_month).await;
    assert_eq!(
        res.status().as_u16(),
        200,
        "the current month is still valid"
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        (body["masked_card"].clone(), body["card_type"].clone()),
        (json!("9860 **** **** 1907"), json!("humo"))
    );
    p.confirmed().await;
    assert_eq!(p.status().await, "succeeded");
}

// ---------------------------------------------------------------------------------------------
// 2. Card checks before any provider call.

#[tokio::test]
async fn bad_cards_are_refused_before_atmos_is_called() {
    let (mock, _) = mock_atmos().await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/pre-apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(json!({}))))
        .expect(0)
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "ru").await;

    // What create sent to ATMOS: tiyin, the numeric account, store and language, Bearer t1.
    let created = requests_to(&mock, "/merchant/pay/create").await;
    assert_eq!(created.len(), 1);
    let sent = json_of(&created[0]);
    assert_eq!(
        (
            sent["amount"].clone(),
            sent["account"].clone(),
            sent["store_id"].clone(),
            sent["lang"].clone()
        ),
        (
            json!(AMOUNT),
            json!(p.account),
            json!(STORE_ID),
            json!("ru")
        ),
        "{sent}"
    );
    assert_eq!(bearer_of(&created[0]), "Bearer t1");
    assert_eq!(p.transaction_id, 555_001);

    let before = app.snapshot().await;
    let cases: &[(&str, &str, &str)] = &[
        ("8600490744313348", EXPIRY, "card_invalid"),  // Luhn
        ("860049074431334", EXPIRY, "card_invalid"),   // 15 digits
        ("86004907443133470", EXPIRY, "card_invalid"), // 17 digits
        ("8600abcd44313347", EXPIRY, "card_invalid"),  // letters
        ("", EXPIRY, "card_invalid"),                  // empty
        ("4111111111111111", EXPIRY, "card_not_supported"), // Visa
        ("5555555555554444", EXPIRY, "card_not_supported"), // Mastercard
        (GOOD_CARD, "13/39", "card_expiry_invalid"),
        (GOOD_CARD, "00/39", "card_expiry_invalid"),
        (GOOD_CARD, "1028", "card_expiry_invalid"),
        (GOOD_CARD, "10/2028", "card_expiry_invalid"),
        (GOOD_CARD, "", "card_expiry_invalid"),
        (GOOD_CARD, "10/25", "card_expired"),
        (GOOD_CARD, "01/20", "card_expired"),
    ];
    for (card, expiry, code) in cases {
        let res = p.pre_apply(card, expiry).await;
        let body = assert_payer_problem(res, 422, code).await;
        assert_eq!(
            body["detail"], body["messages"]["ru"],
            "detail in the payment's language (ru) for {card} {expiry}: {body}"
        );
    }
    let res = p.pre_apply("8600490744313348", EXPIRY).await;
    let body = assert_payer_problem(res, 422, "card_invalid").await;
    assert_eq!(
        (body["detail"].clone(), body["messages"]["uz"].clone()),
        (json!(RU_CARD_INVALID), json!(UZ_CARD_INVALID)),
        "{body}"
    );

    // Malformed requests: not the payer's typing but the page's, still refused before ATMOS.
    for body in [
        json!({"card_number": GOOD_CARD}),
        json!({"expiry": EXPIRY}),
        json!({}),
        json!({"card_number": GOOD_CARD, "expiry": EXPIRY, "cvv": "123"}),
        json!({"card_number": 8_600_490_744_313_347_i64, "expiry": EXPIRY}),
    ] {
        assert_problem(p.pre_apply_body(body).await, 422, "invalid_request").await;
    }
    assert_problem(
        checkout(&app, &p.id, "pre-apply", Some(&p.secret), None).await,
        422,
        "invalid_request",
    )
    .await;
    let res = app
        .client
        .post(app.url(&format!("/v1/checkout/{}/atmos/pre-apply", p.id)))
        .header("X-Client-Secret", &p.secret)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_problem(res, 400, "malformed_json").await;

    assert_eq!(app.snapshot().await, before, "nothing stored");
    assert_eq!(p.status().await, "pending");
    mock.verify().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Who may call the checkout routes.

#[tokio::test]
async fn checkout_routes_need_the_payment_s_own_client_secret() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;
    let other = atmos_payment(&app, "uz").await;
    let click = app.new_payment("click", AMOUNT).await;
    let click_id = click["id"].as_str().expect("id");
    let click_secret = click["client_secret"].as_str().expect("secret");
    let before = app.snapshot().await;

    for (action, body) in [
        (
            "pre-apply",
            Some(json!({"card_number": GOOD_CARD, "expiry": EXPIRY})),
        ),
        ("confirm", Some(json!({"otp": OTP}))),
        ("resend-otp", None),
    ] {
        for secret in [
            None,
            Some(""),
            Some("wrong"),
            Some(other.secret.as_str()),
            Some(click_secret),
        ] {
            let res = checkout(&app, &p.id, action, secret, body.clone()).await;
            assert_problem(res, 401, "invalid_client_secret").await;
        }
        let res = checkout(&app, click_id, action, Some(click_secret), body.clone()).await;
        assert_problem(res, 409, "wrong_provider").await;
        let res = checkout(&app, click_id, action, Some(&p.secret), body.clone()).await;
        assert_problem(res, 401, "invalid_client_secret").await;
        for id in [UNKNOWN_ID, "nope"] {
            let res = checkout(&app, id, action, Some(&p.secret), body.clone()).await;
            assert_problem(res, 404, "not_found").await;
        }
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(p.status().await, "pending");
}

// ---------------------------------------------------------------------------------------------
// 4. The SMS code.

#[tokio::test]
async fn wrong_codes_are_counted_malformed_ones_are_not_and_five_fail_the_payment() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;

    // Nothing to confirm or resend before a card is attached.
    let before = app.snapshot().await;
    let body = assert_payer_problem(p.confirm(OTP).await, 409, "no_otp_pending").await;
    assert_eq!(
        body["detail"], body["messages"]["uz"],
        "in the payment's language"
    );
    assert_payer_problem(p.resend().await, 409, "no_otp_pending").await;
    assert_eq!(app.snapshot().await, before);

    p.card_attached(GOOD_CARD).await;
    let res = p.confirm("222222").await;
    let body = assert_payer_problem(res, 422, "otp_invalid").await;
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(UZ_OTP_INVALID) && detail.contains("(qolgan urinishlar: 4)"),
        "{body}"
    );

    let counted = app.snapshot().await;
    for otp in ["12345", "abcdef", "1234567", "", "11 111"] {
        let res = p.confirm(otp).await;
        assert_payer_problem(res, 422, "otp_format").await;
    }
    assert_eq!(
        app.snapshot().await,
        counted,
        "malformed codes are not counted"
    );

    for left in [
        "(qolgan urinishlar: 3)",
        "(qolgan urinishlar: 2)",
        "(qolgan urinishlar: 1)",
    ] {
        let body = assert_payer_problem(p.confirm("222222").await, 422, "otp_invalid").await;
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(left)),
            "{body}"
        );
        assert_eq!(p.status().await, "processing");
    }
    assert_payer_problem(p.confirm("222222").await, 422, "otp_attempts_exceeded").await;
    assert_eq!(p.status().await, "failed");
    let last = p.event_list().await.last().cloned().expect("event");
    assert_eq!(
        (last["type"].clone(), last["actor"].clone()),
        (json!("payment.failed"), json!("payer")),
        "{last}"
    );

    // Over: not even the right code pays it now.
    let failed = app.snapshot().await;
    let res = p.confirm(OTP).await;
    assert_eq!(res.status().as_u16(), 409, "confirm on a failed payment");
    assert_problem(p.resend().await, 409, "payment_closed").await;
    assert_problem(p.pre_apply(GOOD_CARD, EXPIRY).await, 409, "payment_closed").await;
    assert_eq!(p.status().await, "failed");
    assert_eq!(app.snapshot().await, failed);
}

/// The limit is per payment (`atmos.otp_attempts`: "Wrong SMS codes allowed per payment before
/// it fails"); attaching the card again must not hand out five fresh guesses.
#[tokio::test]
async fn attaching_the_card_again_does_not_reset_the_wrong_code_count() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    for _ in 0..4 {
        assert_payer_problem(p.confirm("222222").await, 422, "otp_invalid").await;
    }
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm("222222").await, 422, "otp_attempts_exceeded").await;
    assert_eq!(p.status().await, "failed");
}

// ---------------------------------------------------------------------------------------------
// 5. Declines.

#[tokio::test]
async fn a_declined_card_ends_the_attempt_and_another_card_pays() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(POOR_CARD).await;
    let body = assert_payer_problem(p.confirm(OTP).await, 422, "insufficient_funds").await;
    assert_eq!(body["detail"], UZ_INSUFFICIENT, "{body}");
    assert_eq!(p.status().await, "pending", "payable again");
    let last = p.event_list().await.last().cloned().expect("event");
    assert_eq!(
        (last["type"].clone(), last["actor"].clone()),
        (json!("payment.pending"), json!("provider")),
        "{last}"
    );
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("STPIMS-ERR-112")),
        "{last}"
    );
    // The failed attempt takes no more codes.
    assert_problem(p.confirm(OTP).await, 409, "no_otp_pending").await;

    p.card_attached(GOOD_CARD).await;
    p.confirmed().await;
    assert_eq!(p.status().await, "succeeded");
    let mut seen = p.events().await;
    let (last, _) = seen.pop().expect("event");
    assert_eq!(last, "payment.succeeded");
    assert_eq!(
        seen,
        events(&[
            ("payment.created", "merchant"),
            ("payment.processing", "payer"),
            ("payment.pending", "provider"),
            ("payment.processing", "payer"),
        ])
    );
    let snapshot = app.snapshot().await;
    assert!(!snapshot.contains(POOR_CARD) && !snapshot.contains(GOOD_CARD));
}

/// A3's codes as ATMOS sends them, against a mock: ERR-098 at `apply` is a wrong code to type
/// again (counted like ERR-044); ERR-067 (wrong card) and ERR-009 (bad card data) refuse the
/// card, at `pre-apply` before any SMS (the payment stays pending, nothing stored) and at
/// `apply` once `pay/get` shows no debit (the attempt ends, the payment is payable again).
#[tokio::test]
async fn atmos_refusal_codes_reach_the_payer_as_the_spec_reads_them() {
    let refusal = |code: &str| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"result": {"code": code, "description": "refused"}}))
    };
    // ERR-098 at apply: type the code again.
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(refusal("STPIMS-ERR-098"))
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let body = assert_payer_problem(p.confirm("222222").await, 422, "otp_invalid").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("(qolgan urinishlar: 4)")),
        "{body}"
    );
    assert_eq!(p.status().await, "processing");
    assert_eq!(
        p.attempts().await[0].0,
        "otp_sent",
        "the code may be typed again"
    );

    // ERR-133 (a card already bound, outside binding) and ERR-004 (meaning unknown, A3) are
    // refusals without a payer-facing meaning of their own: a plain failure.
    for (code, told) in [
        ("STPIMS-ERR-067", "card_rejected"),
        ("STPIMS-ERR-009", "card_rejected"),
        ("STPIMS-ERR-133", "payment_failed"),
        ("STPIMS-ERR-004", "payment_failed"),
    ] {
        // At pre-apply: no SMS, nothing stored.
        let (mock, _) = mock_atmos().await;
        Mock::given(method("POST"))
            .and(path("/merchant/pay/pre-apply"))
            .respond_with(refusal(code))
            .mount(&mock)
            .await;
        let app = app_on_mock(Db::Sqlite, &mock).await;
        let p = atmos_payment(&app, "uz").await;
        let before = app.snapshot().await;
        assert_payer_problem(p.pre_apply(GOOD_CARD, EXPIRY).await, 422, told).await;
        assert_eq!(p.status().await, "pending", "{code}");
        assert_eq!(app.snapshot().await, before, "{code}");

        // At apply, with no debit at ATMOS: the attempt ends, the payment is payable again.
        let (mock, _) = mock_atmos().await;
        mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
        Mock::given(method("POST"))
            .and(path("/merchant/pay/apply"))
            .respond_with(refusal(code))
            .mount(&mock)
            .await;
        mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
        let app = app_on_mock(Db::Sqlite, &mock).await;
        let p = atmos_payment(&app, "uz").await;
        p.card_attached(GOOD_CARD).await;
        assert_payer_problem(p.confirm(OTP).await, 422, told).await;
        assert_eq!(p.status().await, "pending", "{code}");
        assert_eq!(p.attempts().await[0].0, "failed", "{code}");
    }
}

#[tokio::test]
async fn refusals_at_pre_apply_leave_the_payment_pending() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;
    let before = app.snapshot().await;
    let body = assert_payer_problem(
        p.pre_apply(SMS_OFF_CARD, EXPIRY).await,
        422,
        "sms_not_connected",
    )
    .await;
    assert_eq!(body["detail"], UZ_SMS_OFF, "{body}");
    assert_eq!(p.status().await, "pending");
    assert_eq!(app.snapshot().await, before);

    // The simulator's processing-error card (STPIMS-ERR-001, A3: "temporary and retryable"):
    // the payer is told to try again, not that the payment failed.
    assert_payer_problem(
        p.pre_apply(PROCESSING_ERROR_CARD, EXPIRY).await,
        502,
        "provider_unavailable",
    )
    .await;
    assert_eq!(app.snapshot().await, before);

    // The payer can still pay with a working card.
    p.card_attached(GOOD_CARD).await;
    p.confirmed().await;
}

// ---------------------------------------------------------------------------------------------
// 6. The callback.

#[tokio::test]
async fn callbacks_that_do_not_match_the_attempt_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let tid = p.transaction_id.to_string();
    let amount = AMOUNT.to_string();
    let before = app.snapshot().await;

    let mut bad_sign = p.callback_body();
    bad_sign["sign"] = json!("0".repeat(32));
    let mut sign_other_key = p.callback_body();
    sign_other_key["sign"] = json!(hex::encode(Md5::digest(format!(
        "{STORE_ID}{tid}{}{amount}other-key",
        p.account
    ))));
    let mut sign_without_amount = p.callback_body();
    sign_without_amount["amount"] = json!("1");
    let mut no_sign = p.callback_body();
    if let Some(o) = no_sign.as_object_mut() {
        o.remove("sign");
    }
    let mut no_invoice = p.callback_body();
    if let Some(o) = no_invoice.as_object_mut() {
        o.remove("invoice");
    }
    let cases = [
        (
            "unknown transaction",
            signed_callback(STORE_ID, "999999999", &p.account, &amount),
        ),
        ("bad sign", bad_sign),
        ("sign with another key", sign_other_key),
        ("amount changed after signing", sign_without_amount),
        (
            "wrong amount",
            signed_callback(STORE_ID, &tid, &p.account, "100"),
        ),
        (
            "amount in som, not tiyin",
            signed_callback(STORE_ID, &tid, &p.account, "1500"),
        ),
        (
            "wrong invoice",
            signed_callback(STORE_ID, &tid, "42", &amount),
        ),
        (
            "wrong store",
            signed_callback("2", &tid, &p.account, &amount),
        ),
        ("no sign", no_sign),
        ("no invoice", no_invoice),
    ];
    for (what, body) in cases {
        let answer = send_callback(&app, &body).await;
        assert_eq!(answer["status"], 0, "{what}: {answer}");
    }
    for (content_type, raw) in [
        ("application/json", "{not json"),
        ("application/json", "[]"),
        ("application/json", "null"),
        ("text/plain", "store_id=1"),
        ("application/json", ""),
    ] {
        let res = app
            .client
            .post(app.url("/v1/atmos/callback"))
            .header("content-type", content_type)
            .body(raw)
            .send()
            .await
            .expect("callback");
        let answer = callback_answer(res).await;
        assert_eq!(answer["status"], 0, "{raw:?}: {answer}");
    }
    assert_eq!(app.snapshot().await, before, "nothing changed");

    // Correctly signed, but the simulator has not been debited: accepted, still unpaid.
    let answer = send_callback(&app, &p.callback_body()).await;
    assert_eq!(answer, json!({"status": 1, "message": "Успешно"}));
    assert_eq!(p.status().await, "processing");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn a_callback_for_an_attempt_atmos_reports_unpaid_marks_nothing() {
    let (mock, _) = mock_atmos().await;
    mount_ok(
        &mock,
        "/merchant/pay/pre-apply",
        json!({"transaction_id": 555_001}),
    )
    .await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let pre_apply = requests_to(&mock, "/merchant/pay/pre-apply").await;
    let sent = json_of(&pre_apply[0]);
    assert_eq!(
        sent,
        json!({"transaction_id": 555_001, "card_number": GOOD_CARD, "expiry": "3910", "store_id": STORE_ID}),
        "the card goes to ATMOS as digits with a YYMM expiry"
    );

    let before = app.snapshot().await;
    let answer = send_callback(&app, &p.callback_body()).await;
    assert_eq!(answer["status"], 1, "{answer}");
    assert_eq!(p.status().await, "processing", "not marked paid");
    assert_eq!(app.snapshot().await, before);
    let asked = requests_to(&mock, "/merchant/pay/get").await;
    assert_eq!(asked.len(), 1, "ATMOS was asked");
    assert_eq!(
        json_of(&asked[0]),
        json!({"transaction_id": 555_001, "store_id": STORE_ID})
    );
}

#[tokio::test]
async fn a_callback_confirmed_by_atmos_pays_once_however_often_it_comes() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;

    // The `account` spelling, numbers as JSON numbers and an upper-case sign are accepted too.
    let first = json!({
        "store_id": 1, "transaction_id": p.transaction_id, "transaction_time": 1_795_000_000_000_i64,
        "amount": AMOUNT, "account": p.account,
        "sign": sign(STORE_ID, &p.transaction_id.to_string(), &p.account, &AMOUNT.to_string()).to_uppercase(),
    });
    assert_eq!(
        send_callback(&app, &first).await,
        json!({"status": 1, "message": "Успешно"})
    );
    assert_eq!(p.status().await, "succeeded");
    let last = p.event_list().await.last().cloned().expect("event");
    assert_eq!(
        (last["type"].clone(), last["actor"].clone()),
        (json!("payment.succeeded"), json!("provider")),
        "{last}"
    );
    let paid = app.snapshot().await;
    for _ in 0..3 {
        assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    }
    assert_eq!(p.succeeded_events().await, 1);
    assert_eq!(app.snapshot().await, paid, "repeats change nothing");
    // The payer's page, late, is told it is paid.
    p.confirmed().await;
    assert_eq!(app.snapshot().await, paid);
}

/// An app on an ATMOS mock whose `at` answers a confirmed debit after `delay_ms`, with a
/// request timeout of `timeout_secs`.
async fn slow_at(at: &str, delay_ms: u64, timeout_secs: u64) -> (MockServer, TestApp) {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    let delay = Duration::from_millis(delay_ms);
    mount_ok_after(&mock, at, confirmed_transaction(true), delay).await;
    let app = app_on_mock_with(
        &mock,
        move |s| s.server.request_timeout_secs = timeout_secs,
        Overrides::default(),
    )
    .await;
    (mock, app)
}

/// A7: ATMOS hears `{status, message}` in HTTP 200 even when tolov is slow: a `pay/get` answer
/// that outlasts the request timeout gets status 0 (not the server's 503 problem+json), and the
/// payment is recorded paid once ATMOS's answer comes.
#[tokio::test]
async fn a_slow_callback_still_gets_an_atmos_answer_and_its_work_finishes() {
    let (_mock, app) = slow_at("/merchant/pay/get", 2_000, 1).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let answer = send_callback(&app, &p.callback_body()).await;
    assert_eq!(answer["status"], 0, "{answer}");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        p.status().await,
        "succeeded",
        "recorded when ATMOS answered"
    );
    assert_eq!(p.succeeded_events().await, 1);
}

/// A4.4: ATMOS closes a draft it has waited on too long (STPIMS-ERR-092). The payment is still
/// payable until its own deadline, so the next card attached gets a fresh ATMOS transaction
/// (`pay/create` with the same account) once `pay/get` shows the old one took no money.
#[tokio::test]
async fn a_card_attached_after_atmos_closed_the_draft_gets_a_fresh_transaction() {
    let (mock, _) = mock_atmos().await;
    let closed = closed_draft();
    for at in ["/merchant/pay/pre-apply", "/merchant/pay/get"] {
        Mock::given(method("POST"))
            .and(path(at))
            .and(body_partial_json(json!({"transaction_id": 555001})))
            .respond_with(ResponseTemplate::new(200).set_body_json(closed.clone()))
            .with_priority(1)
            .mount(&mock)
            .await;
    }
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    assert_eq!(p.transaction_id, 555_001);
    p.card_attached(GOOD_CARD).await;
    let data = app.get_json(&format!("/v1/payments/{}", p.id)).await["provider_data"].clone();
    assert_eq!(data["transaction_id"], 555_002, "{data}");
    assert_eq!(data["account"], p.account.as_str(), "same account");
    let creates = requests_to(&mock, "/merchant/pay/create").await;
    assert_eq!(creates.len(), 2);
    p.confirmed().await;
    let applied = requests_to(&mock, "/merchant/pay/apply").await;
    let body: Value = serde_json::from_slice(&applied[0].body).expect("json");
    assert_eq!(body["transaction_id"], 555_002);
    assert_eq!(p.status().await, "succeeded");
}

/// An ATMOS where the card attaches to draft 555001 once, every code is wrong, and then the
/// draft is closed (pre-apply and `pay/get` answer ERR-092), so the next card goes to a fresh
/// draft (555002).
async fn draft_closed_after_two_wrong_codes() -> MockServer {
    let (mock, _) = mock_atmos().await;
    let closed = closed_draft();
    for (priority, answer) in [(1, ok_body(json!({}))), (2, closed.clone())] {
        let m = Mock::given(method("POST"))
            .and(path("/merchant/pay/pre-apply"))
            .and(body_partial_json(json!({"transaction_id": 555001})))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .with_priority(priority);
        let m = if priority == 1 { m.up_to_n_times(1) } else { m };
        m.mount(&mock).await;
    }
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed))
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_wrong_code_at_apply(&mock, Duration::ZERO).await;
    mock
}

/// Wrong SMS codes count per payment: a fresh draft made after ATMOS closed the old one carries
/// over the wrong codes sent for it, so the limit is not reset by waiting for ATMOS to close it.
#[tokio::test]
async fn wrong_codes_carry_over_to_a_fresh_draft() {
    // Also when the fresh draft's first pre-apply is refused: the old attempt has ended by then
    // and the fresh draft has no attempt yet, but the wrong codes still count for the payment.
    for first_card_refused in [false, true] {
        let mock = draft_closed_after_two_wrong_codes().await;
        if first_card_refused {
            Mock::given(method("POST"))
                .and(path("/merchant/pay/pre-apply"))
                .and(body_partial_json(json!({"transaction_id": 555002})))
                .respond_with(ResponseTemplate::new(200).set_body_json(
                    json!({"result": {"code": "STPIMS-ERR-067", "description": "refused"}}),
                ))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&mock)
                .await;
        }
        let app = app_on_mock(Db::Sqlite, &mock).await;
        let p = atmos_payment(&app, "uz").await;
        p.card_attached(GOOD_CARD).await;
        for _ in 0..2 {
            assert_eq!(p.confirm("000000").await.status().as_u16(), 422);
        }
        if first_card_refused {
            let refused = p.pre_apply(GOOD_CARD, EXPIRY).await;
            assert_payer_problem(refused, 422, "card_rejected").await;
        }
        p.card_attached(GOOD_CARD).await;
        let fresh = app
            .transactions(&p.id)
            .await
            .into_iter()
            .find(|t| t.external_id == "555002")
            .expect("an attempt on the fresh draft");
        assert_eq!(
            fresh.data["otp_failures"], 2,
            "first card refused: {first_card_refused}: {:?}",
            fresh.data
        );
    }
}

/// ... but a closed draft that `pay/get` shows debited is recorded paid, and no second draft is
/// made for the payer to pay again.
#[tokio::test]
async fn a_closed_draft_that_took_the_money_is_recorded_not_replaced() {
    let (mock, _) = mock_atmos().await;
    // The first card is attached; by the time another is, ATMOS has closed the draft.
    Mock::given(method("POST"))
        .and(path("/merchant/pay/pre-apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(json!({}))))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/pre-apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let res = p.pre_apply(GOOD_CARD, EXPIRY).await;
    assert_problem(res, 409, "payment_already_paid").await;
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(requests_to(&mock, "/merchant/pay/create").await.len(), 1);
}

/// A7: stores that sign callbacks with SHA-256 (`atmos.callback_hash = "sha256"`): the
/// SHA-256 of the same string is accepted and an MD5 signature is refused.
#[tokio::test]
async fn a_store_signing_with_sha256_is_checked_with_sha256() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let app = app_on_mock_with(
        &mock,
        |s| s.atmos.callback_hash = "sha256".into(),
        Overrides::default(),
    )
    .await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let md5_signed = p.callback_body();
    let answer = send_callback(&app, &md5_signed).await;
    assert_eq!(answer["status"], 0, "{answer}");
    assert_eq!(p.status().await, "processing");
    let mut sha256_signed = md5_signed.clone();
    sha256_signed["sign"] = json!(hex::encode(sha2::Sha256::digest(format!(
        "{STORE_ID}{}{}{AMOUNT}{CALLBACK_KEY}",
        p.transaction_id, p.account
    ))));
    let answer = send_callback(&app, &sha256_signed).await;
    assert_eq!(answer["status"], 1, "{answer}");
    assert_eq!(p.status().await, "succeeded");
}

/// The same for the payer: an SMS code whose check at ATMOS outlasts the request is answered
/// `processing` (what the page shows while the outcome is unknown), not the server's 503, and
/// the debit is recorded once ATMOS answers.
#[tokio::test]
async fn a_slow_code_check_is_answered_processing_and_its_debit_recorded() {
    let (_mock, app) = slow_at("/merchant/pay/apply", 2_500, 2).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let res = p.confirm(OTP).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<Value>().await.expect("json"),
        json!({"status": "processing"})
    );
    // Recorded when ATMOS answers (0.7 s later here); waited for, within 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.status().await != "succeeded" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        p.status().await,
        "succeeded",
        "recorded when ATMOS answered"
    );
    assert_eq!(p.succeeded_events().await, 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Races, on both backends.

on_both!(confirm_and_twenty_callbacks_racing_pay_once);

async fn confirm_and_twenty_callbacks_racing_pay_once(db: Db) {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    for at in ["/merchant/pay/apply", "/merchant/pay/get"] {
        Mock::given(method("POST"))
            .and(path(at))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(ok_body(confirmed_transaction(true)))
                    .set_delay(Duration::from_millis(30)),
            )
            .mount(&mock)
            .await;
    }
    let app = app_on_mock(db, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;

    let body = p.callback_body();
    let callbacks = futures::future::join_all((0..20).map(|_| {
        let req = app
            .client
            .post(app.url("/v1/atmos/callback"))
            .json(&body)
            .send();
        async move { callback_answer(req.await.expect("callback")).await }
    }));
    let (confirm, answers) = tokio::join!(p.confirm(OTP), callbacks);
    assert_eq!(confirm.status().as_u16(), 200, "confirm");
    assert_eq!(
        confirm.json::<Value>().await.expect("json"),
        json!({"status": "succeeded"})
    );
    for a in &answers {
        assert_eq!(a["status"], 1, "{a}");
    }
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(p.succeeded_events().await, 1, "{:?}", p.events().await);
}

// ---------------------------------------------------------------------------------------------
// 8. Provider faults.

#[tokio::test]
async fn create_faults_store_nothing() {
    let cases: Vec<(&str, ResponseTemplate, u16, &str)> = vec![
        (
            "HTTP 500",
            ResponseTemplate::new(500).set_body_string("oops"),
            502,
            "provider_unavailable",
        ),
        (
            "business refusal with HTTP 200",
            ResponseTemplate::new(200).set_body_json(
                json!({"result": {"code": "STPIMS-ERR-009", "description": "Неверные параметры"}}),
            ),
            422,
            "provider_rejected",
        ),
        (
            "not JSON",
            ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
            502,
            "provider_error",
        ),
        (
            "no envelope",
            ResponseTemplate::new(200).set_body_json(json!({"transaction_id": 1})),
            502,
            "provider_error",
        ),
        (
            "OK without a transaction id",
            ResponseTemplate::new(200).set_body_json(ok_body(json!({}))),
            502,
            "provider_error",
        ),
        (
            "status envelope refusal",
            ResponseTemplate::new(200)
                .set_body_json(json!({"status": {"code": "-5", "description": ""}})),
            422,
            "provider_rejected",
        ),
    ];
    for (what, answer, status, code) in cases {
        let mock = MockServer::start().await;
        mount_token(&mock).await;
        Mock::given(method("POST"))
            .and(path("/merchant/pay/create"))
            .respond_with(answer)
            .expect(1)
            .mount(&mock)
            .await;
        let app = app_on_mock(Db::Sqlite, &mock).await;
        let res = app.create_payment(&payment_body("atmos", AMOUNT)).await;
        let body = assert_problem(res, status, code).await;
        if code == "provider_rejected" && what.starts_with("business") {
            assert!(
                body["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("STPIMS-ERR-009")),
                "{body}"
            );
        }
        assert_eq!(app.snapshot().await, "", "{what}: nothing stored");
        let list = app.get_json("/v1/payments").await;
        assert_eq!(list["data"], json!([]), "{what}");
        mock.verify().await;
    }

    // Credentials refused at the token endpoint.
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/create"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(json!({"transaction_id": 1}))),
        )
        .expect(0)
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let res = app.create_payment(&payment_body("atmos", AMOUNT)).await;
    assert_problem(res, 502, "provider_unavailable").await;
    assert_eq!(app.snapshot().await, "");
    mock.verify().await;
}

#[tokio::test]
async fn a_5xx_at_apply_leaves_the_payment_processing_and_the_code_can_be_retried() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let before = app.decisions().await;

    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    assert_eq!(p.status().await, "processing");
    assert_eq!(
        app.decisions().await,
        before,
        "ATMOS may have debited: nothing decided"
    );

    p.confirmed().await;
    assert_eq!(p.status().await, "succeeded");
    let applied = requests_to(&mock, "/merchant/pay/apply").await;
    assert_eq!(applied.len(), 2);
    assert_eq!(
        json_of(&applied[1]),
        json!({"transaction_id": 555_001, "otp": OTP, "store_id": STORE_ID})
    );
}

/// A4.3: the code may travel as a JSON string (the default) or, for an ATMOS store that
/// expects it, as an integer (`atmos.otp_as_integer`).
#[tokio::test]
async fn the_sms_code_travels_as_an_integer_when_configured() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock_with(
        &mock,
        |s| {
            s.atmos.otp_as_integer = true;
        },
        Overrides::default(),
    )
    .await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    p.confirmed().await;
    let applied = requests_to(&mock, "/merchant/pay/apply").await;
    assert_eq!(
        json_of(&applied[0])["otp"],
        json!(OTP.parse::<u64>().expect("digits"))
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_retried() {
    let (mock, tokens) = mock_atmos().await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/pre-apply"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"fault": {"message": "Invalid Credentials"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    assert_eq!(tokens.load(Ordering::SeqCst), 1);
    p.card_attached(GOOD_CARD).await;
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        2,
        "a new token after the 401"
    );
    let calls = requests_to(&mock, "/merchant/pay/pre-apply").await;
    assert_eq!(
        calls.iter().map(bearer_of).collect::<Vec<_>>(),
        ["Bearer t1", "Bearer t2"]
    );

    // ATMOS refusing every token: an error, not a loop.
    let (mock, tokens) = mock_atmos().await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/pre-apply"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    let before = app.snapshot().await;
    assert_payer_problem(
        p.pre_apply(GOOD_CARD, EXPIRY).await,
        502,
        "provider_unavailable",
    )
    .await;
    assert_eq!(tokens.load(Ordering::SeqCst), 2);
    assert_eq!(app.snapshot().await, before);
    mock.verify().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Expiry and reconciliation under a controlled clock.

async fn clocked(atmos_base_url: Option<String>) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = spawn_app_with(
        Db::Sqlite,
        move |s| {
            s.workers.expiry_enabled = false;
            s.workers.reconcile_enabled = false;
            s.webhooks.enabled = false;
            if let Some(u) = atmos_base_url {
                s.atmos.base_url = u;
            }
        },
        overrides,
    )
    .await;
    (app, clock)
}

/// Past its deadline the payer's page is closed, so an attempt ATMOS has not confirmed can only
/// still be debited by a code check already under way; without one, the payer abandoned it
/// after the SMS and the payment expires with it (it used to stay `processing` for good).
#[tokio::test]
async fn an_abandoned_sms_code_lets_the_payment_expire() {
    let (app, clock) = clocked(None).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    clock.advance(Span::minutes(31));
    // Past its deadline the payer's page is closed, before anything reaches ATMOS.
    let before = app.snapshot().await;
    assert_payer_problem(p.confirm(OTP).await, 409, "payment_closed").await;
    assert_payer_problem(p.resend().await, 409, "payment_closed").await;
    assert_payer_problem(p.pre_apply(GOOD_CARD, EXPIRY).await, 409, "payment_closed").await;
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        expire_once(&app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            ..Default::default()
        },
        "the simulator says not confirmed, and no code is being checked"
    );
    assert_eq!(p.status().await, "expired");
    assert_eq!(p.attempts().await, [("failed".to_owned(), false, true)]);

    // Without a card attached nothing can have been debited: it simply expires.
    let q = atmos_payment(&app, "uz").await;
    clock.advance(Span::minutes(31));
    let report = expire_once(&app.state).await.expect("pass");
    assert_eq!((report.expired, report.kept), (1, 0), "{report:?}");
    assert_eq!(q.status().await, "expired");
}

/// A code sent just before the deadline is still at ATMOS when expiry runs: the payment is
/// kept until that check ends, and the debit it brings is recorded.
#[tokio::test]
async fn an_sms_code_in_flight_at_the_deadline_keeps_the_payment() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    mount_ok_after(
        &mock,
        "/merchant/pay/apply",
        confirmed_transaction(true),
        Duration::from_millis(3000),
    )
    .await;
    let (app, clock) = clocked(Some(mock.uri())).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    clock.advance(Span::minutes(29) + Span::seconds(50));
    let expiry = async {
        // Long enough for the confirm to be at ATMOS on a busy machine, well inside its 3 s.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // 10 s past the deadline; the code check is marked for its call's limit beyond that.
        clock.advance(Span::seconds(20));
        // ATMOS asks before it debits: allowed, the code was sent in time.
        let asked = send_callback(&app, &p.callback_body()).await;
        (asked, expire_once(&app.state).await.expect("pass"))
    };
    let (confirmed, (asked, report)) = tokio::join!(p.confirm(OTP), expiry);
    assert_eq!(asked["status"], 1, "{asked}");
    assert_eq!(
        report,
        ExpiryReport {
            kept: 1,
            ..Default::default()
        }
    );
    assert_eq!(confirmed.status().as_u16(), 200);
    assert_eq!(p.status().await, "succeeded");
}

#[tokio::test]
async fn a_closed_atmos_transaction_lets_the_payment_expire() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(&mock)
        .await;
    let (app, clock) = clocked(Some(mock.uri())).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    clock.advance(Span::minutes(31));
    assert_eq!(
        expire_once(&app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            ..Default::default()
        }
    );
    assert_eq!(p.status().await, "expired");
    assert_eq!(
        p.attempts().await,
        [("failed".to_owned(), false, true)],
        "the closed attempt ends with the payment"
    );
}

/// A10: a `pay/get` whose `status_message` is "Canceled" is a closed transaction too: a stuck
/// payment goes back to pending with reconciliation, its attempt failed.
#[tokio::test]
async fn an_atmos_transaction_reported_canceled_ends_the_attempt() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    let mut canceled = confirmed_transaction(false);
    canceled["store_transaction"]["status_message"] = json!("Canceled");
    mount_ok(&mock, "/merchant/pay/get", canceled).await;
    let (app, clock) = clocked(Some(mock.uri())).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    clock.advance(Span::minutes(16));
    let report = reconcile_once(&app.state, app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.reopened, 1, "{report:?}");
    assert_eq!(p.status().await, "pending");
    assert_eq!(p.attempts().await, [("failed".to_owned(), false, true)]);
}

#[tokio::test]
async fn reconciliation_applies_atmos_s_confirmation() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let (app, clock) = clocked(Some(mock.uri())).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let report = reconcile_once(&app.state, app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.checked, 0, "not stuck yet");
    clock.advance(Span::minutes(16));
    let report = reconcile_once(&app.state, app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.succeeded), (1, 1), "{report:?}");
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(
        p.attempts().await,
        [("paid".to_owned(), true, false)],
        "the attempt is recorded paid with the payment, not left at otp_sent"
    );
    let last = p.event_list().await.last().cloned().expect("event");
    assert_eq!(
        (
            last["type"].clone(),
            last["actor"].clone(),
            last["reason"].clone()
        ),
        (
            json!("payment.succeeded"),
            json!("reconciliation"),
            json!("reconciled with atmos")
        )
    );
    assert_eq!(p.succeeded_events().await, 1);
    // A late callback and the payer's late code change nothing.
    let paid = app.snapshot().await;
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    p.confirmed().await;
    assert_eq!(app.snapshot().await, paid);
}

// ---------------------------------------------------------------------------------------------
// 10. The merchant cancelling while the payer's call is at ATMOS.

/// A mock ATMOS whose `at` answers `answer` only after 400 ms, to cancel in between.
async fn slow_atmos(at: &str, answer: Value) -> MockServer {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(answer))
                .set_delay(Duration::from_millis(400)),
        )
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mock
}

async fn cancel_after(app: &TestApp, id: &str, wait: Duration) -> u16 {
    tokio::time::sleep(wait).await;
    app.post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await
        .status()
        .as_u16()
}

/// The merchant's cancel wins the race with the payer's confirm: the debit that lands anyway is
/// reversed and the payer is told the payment is closed (never "succeeded").
#[tokio::test]
async fn a_debit_landing_after_the_merchant_cancelled_is_reversed_and_the_payer_told() {
    let mock = slow_atmos("/merchant/pay/apply", confirmed_transaction(true)).await;
    // What the merchant's cancel hears while the code is still at ATMOS: not debited yet.
    mount_undebited_once(&mock).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let (confirm, canceled) = tokio::join!(
        p.confirm(OTP),
        cancel_after(&app, &p.id, Duration::from_millis(100))
    );
    assert_eq!(canceled, 200, "the merchant's cancel went through first");
    let told = confirm.status().as_u16();
    let body: Value = confirm.json().await.expect("json");
    let status = p.status().await;
    let reversed = requests_to(&mock, "/merchant/pay/reverse").await.len();
    // The debit landed on a canceled payment: it is reversed at ATMOS and the payer is told so.
    assert_eq!(
        (told, body["code"].clone()),
        (409, json!("payment_closed")),
        "{body}"
    );
    assert_eq!(status, "canceled");
    assert_eq!(reversed, 1, "the late debit is reversed");
}

/// The merchant's cancel and the payer's code racing for the attempt (held here at its row
/// lock, so both wait and go in the order they came): either the cancel ends the attempt first
/// and the code never reaches ATMOS (the payer is told the payment is closed), or the cancel
/// sees the code may be at ATMOS and schedules the recheck that would find and return a debit.
/// Never a code at ATMOS for a canceled payment that nothing asks about again.
#[tokio::test]
async fn a_code_racing_the_merchant_cancel_is_never_left_unchecked() {
    for cancel_first in [false, true] {
        let (applied, rechecks) = code_and_cancel_race(cancel_first).await;
        assert_eq!(
            (applied, rechecks),
            if cancel_first { (0, 0) } else { (1, 1) },
            "cancel first: {cancel_first}"
        );
    }
}

/// The race above, in one order: how many codes reached ATMOS and how many rechecks exist.
async fn code_and_cancel_race(cancel_first: bool) -> (usize, usize) {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    mount_wrong_code_at_apply(&mock, Duration::ZERO).await;
    let app = app_on_mock(Db::Postgres, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let mut blocker = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&app.database_url)
            .await
            .expect("connect");
        sqlx::query("BEGIN").execute(&mut c).await.expect("begin");
        sqlx::query("SELECT id FROM transactions WHERE payment_id = $1 FOR UPDATE")
            .bind(&p.id)
            .execute(&mut c)
            .await
            .expect("lock");
        c
    };
    let (first, second) = (Duration::ZERO, Duration::from_millis(300));
    let (confirm, canceled, ()) = tokio::join!(
        async {
            tokio::time::sleep(if cancel_first { second } else { first }).await;
            p.confirm(OTP).await
        },
        cancel_after(&app, &p.id, if cancel_first { first } else { second }),
        async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            sqlx::query("COMMIT")
                .execute(&mut blocker)
                .await
                .expect("commit");
        }
    );
    assert_eq!(canceled, 200);
    assert_eq!(p.status().await, "canceled");
    let applied = requests_to(&mock, "/merchant/pay/apply").await.len();
    let rechecks = app
        .state
        .store
        .due_rechecks(chrono::Utc::now() + chrono::Duration::days(30), 10)
        .await
        .expect("rechecks")
        .len();
    if applied == 0 {
        assert_payer_problem(confirm, 409, "payment_closed").await;
    }
    (applied, rechecks)
}

#[tokio::test]
async fn a_card_attached_while_the_merchant_cancels_is_not_reported_as_sent() {
    let mock = slow_atmos("/merchant/pay/pre-apply", json!({})).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    let (pre_apply, canceled) = tokio::join!(
        p.pre_apply(GOOD_CARD, EXPIRY),
        cancel_after(&app, &p.id, Duration::from_millis(100))
    );
    assert_eq!(canceled, 200, "the merchant's cancel went through first");
    assert_eq!(p.status().await, "canceled");
    let told = pre_apply.status().as_u16();
    let body: Value = pre_apply.json().await.expect("json");
    assert_eq!(
        told, 409,
        "the payer must not be told the SMS is for a live payment: {body}"
    );
    let txs = app.transactions(&p.id).await;
    assert!(
        txs.iter().all(|t| t.state != "otp_sent"),
        "an otp_sent attempt on a canceled payment: {txs:?}"
    );
}

/// atmos-epay.md A3: STPIMS-ERR-001 is ATMOS's internal error, "temporary and retryable". At
/// `apply` (the debit) the card may have been charged, so it must not end the attempt as a
/// decline: a pending payment expires without ATMOS being asked.
#[tokio::test]

async fn an_internal_atmos_error_at_apply_is_not_a_decline() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"result": {"code": "STPIMS-ERR-001", "description": "Внутренняя ошибка"}}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let res = p.confirm(OTP).await;
    assert!(res.status().is_server_error(), "{}", res.status());
    assert_eq!(p.status().await, "processing");
    p.confirmed().await;
}

/// An `apply` that takes longer than `atmos.timeout_secs`: the outcome is unknown, so nothing is
/// recorded and the payer may retry; a later successful `apply` pays once.
#[tokio::test]
async fn an_atmos_timeout_at_apply_changes_nothing_and_can_be_retried() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(confirmed_transaction(true))
                .set_delay(Duration::from_millis(2_500)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock_with(
        &mock,
        |s| {
            s.atmos.timeout_secs = 1;
        },
        Overrides::default(),
    )
    .await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let before = app.decisions().await;
    let res = p.confirm(OTP).await;
    assert_eq!(res.status().as_u16(), 502, "timed out");
    assert_eq!(
        app.decisions().await,
        before,
        "nothing recorded for an unknown outcome"
    );
    p.confirmed().await;
}

/// A pre-apply ATMOS is slow with is answered before the server's own timeout would answer 503
/// (502 `provider_unavailable`, in the payer's language), and its work is not dropped half-way:
/// it finishes behind the answer, so the code the SMS brings can still be confirmed.
#[tokio::test]
async fn a_slow_pre_apply_is_answered_in_time_and_finishes_behind_the_answer() {
    let (mock, _) = mock_atmos().await;
    mount_ok_after(
        &mock,
        "/merchant/pay/pre-apply",
        json!({}),
        Duration::from_millis(1_500),
    )
    .await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock_with(
        &mock,
        |s| {
            s.server.request_timeout_secs = 1;
            s.atmos.timeout_secs = 5;
        },
        Overrides::default(),
    )
    .await;
    let p = atmos_payment(&app, "uz").await;
    let res = p.pre_apply(GOOD_CARD, EXPIRY).await;
    assert_eq!(res.status().as_u16(), 502);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["code"], "provider_slow", "{body}");
    assert_eq!(body["messages"]["uz"], body["detail"], "{body}");
    assert!(
        body["messages"]["en"]
            .as_str()
            .is_some_and(|m| m.contains("If an SMS code arrives, enter it")),
        "{body}"
    );
    for _ in 0..50 {
        if p.status().await == "processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        p.status().await,
        "processing",
        "the SMS went out and is recorded"
    );
    p.confirmed().await;

    // On the hosted page the code form opens beside the card form, and the late code pays.
    let mut body = payment_body("atmos", AMOUNT);
    body["language"] = json!("en");
    let (id, page) = page_with_secret(&app, &body).await;
    let driver = format!(
        r#"
  await loaded;
  elements.pan.value = "{GOOD_CARD}"; elements.exp.value = "{EXPIRY}";
  await elements.card.onsubmit(submit);
  check(!elements.code.hidden && !elements.card.hidden, "the code form opens, the card form stays");
  await new Promise((done) => setTimeout(done, 1500));
  elements.otp.value = "{OTP}";
  await elements.code.onsubmit(submit);
  check(elements.msg.textContent === "Paid.", "the late code pays");
"#
    );
    let (ok, out) = run_page(&app, &page, &driver).await;
    assert!(ok, "{out}");
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
}

/// atmos-epay.md A7: an allow-list of ATMOS's networks, off by default. Behind a trusted proxy
/// the forwarded-for hop decides; the proxy itself is not ATMOS.
#[tokio::test]
async fn callbacks_from_outside_the_atmos_networks_are_refused() {
    let nets = |list: &[&str]| -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    };
    let app = spawn_app_with(
        Db::Sqlite,
        move |s| {
            s.atmos.callback_allowed_ips = nets(&["92.63.207.0/24"]);
            s.server.trusted_proxies = nets(&["127.0.0.1/32"]);
        },
        Overrides::default(),
    )
    .await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let via = |forwarded: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/v1/atmos/callback"))
            .json(&p.callback_body());
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        async move { callback_answer(req.send().await.expect("callback")).await }
    };
    let before = app.snapshot().await;
    for refused in [None, Some("203.0.113.9"), Some("92.63.207.10, 203.0.113.9")] {
        let answer = via(refused).await;
        assert_eq!(
            (answer["status"].clone(), answer["message"].clone()),
            (json!(0), json!("forbidden")),
            "{refused:?}"
        );
    }
    assert_eq!(app.snapshot().await, before, "nothing changed");
    // From ATMOS's network the callback is handled: the code is not confirmed yet, so ATMOS
    // is told yes and the payment waits.
    assert_eq!(via(Some("92.63.207.10")).await["status"], 1);
    assert_eq!(p.status().await, "processing");
}

/// A reverse ATMOS did not answer stays pending until reconciliation reads `pay/get`:
/// status_code -20 means it happened (the payment is refunded); a debit still confirmed without
/// it means it did not (the refund fails, its amount is free again, the payment stays paid).
async fn reconciliation_settles_a_reverse_atmos_did_not_answer_by_pay_get(reversed: bool) {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = app_on_mock_with(&mock, |_| {}, overrides).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    assert_eq!(p.status().await, "succeeded");
    let refunds = format!("/v1/payments/{}/refunds", p.id);
    assert_eq!(
        app.post_json(&refunds, &json!({})).await.status().as_u16(),
        502
    );
    // Reconciliation looks only at refunds older than the longest provider call.
    clock.advance(Span::minutes(6));
    let later = app.state.now() - Span::minutes(5);
    if reversed {
        let mut reversed = confirmed_transaction(true);
        reversed["store_transaction"]["status_code"] = json!("-20");
        Mock::given(method("POST"))
            .and(path("/merchant/pay/get"))
            .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(reversed)))
            .with_priority(1)
            .mount(&mock)
            .await;
    }
    let report = tolov::workers::reconcile::reconcile_once(&app.state, later)
        .await
        .expect("pass");
    let states: Vec<String> = app
        .state
        .store
        .list_refunds(&tolov::domain::PaymentId::parse(&p.id).expect("id"))
        .await
        .expect("refunds")
        .iter()
        .map(|r| r.status.as_str().to_owned())
        .collect();
    if reversed {
        assert_eq!((report.refunds_settled, report.refunds_failed), (1, 0));
        assert_eq!(p.status().await, "refunded");
        assert_eq!(states, ["succeeded"]);
    } else {
        assert_eq!((report.refunds_settled, report.refunds_failed), (0, 1));
        assert_eq!(p.status().await, "succeeded");
        assert_eq!(states, ["failed"], "the amount is free again");
    }
}

#[tokio::test]
async fn reconciliation_settles_a_reverse_atmos_did_not_answer() {
    reconciliation_settles_a_reverse_atmos_did_not_answer_by_pay_get(true).await;
}

#[tokio::test]
async fn reconciliation_fails_a_reverse_that_did_not_happen() {
    reconciliation_settles_a_reverse_atmos_did_not_answer_by_pay_get(false).await;
}

/// Twenty codes sent at once must not be twenty guesses: one code is checked at a time per
/// payment (the others hear "in progress", nothing recorded), so no more than
/// `atmos.otp_attempts` codes ever reach ATMOS.
#[tokio::test]
async fn parallel_codes_are_checked_one_at_a_time_and_count_against_the_limit() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_wrong_code_at_apply(&mock, Duration::from_millis(300)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let codes: Vec<String> = (0..20).map(|i| format!("{:06}", 200_000 + i)).collect();
    let answers = futures::future::join_all(codes.iter().map(|c| p.confirm(c))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        requests_to(&mock, "/merchant/pay/apply").await.len(),
        1,
        "one code at a time reaches ATMOS: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    for r in answers
        .into_iter()
        .filter(|r| r.status().as_u16() == 409)
        .take(1)
    {
        let body = assert_payer_problem(r, 409, "otp_check_in_progress").await;
        assert!(body["messages"]["uz"].is_string(), "{body}");
    }
    for _ in 0..3 {
        assert_payer_problem(p.confirm("222222").await, 422, "otp_invalid").await;
    }
    assert_payer_problem(p.confirm("222222").await, 422, "otp_attempts_exceeded").await;
    assert_eq!(p.status().await, "failed");
    assert_eq!(requests_to(&mock, "/merchant/pay/apply").await.len(), 5);
}

/// A card number or SMS code sent as a JSON number is refused without being echoed back: the
/// answer names the field and the expected type, never the value.
#[tokio::test]
async fn card_data_of_the_wrong_json_type_is_not_echoed_back() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "en").await;
    let card: u64 = GOOD_CARD.parse().expect("digits");
    let res = checkout(
        &app,
        &p.id,
        "pre-apply",
        Some(&p.secret),
        Some(json!({"card_number": card, "expiry": EXPIRY})),
    )
    .await;
    assert_eq!(res.status().as_u16(), 422);
    let text = res.text().await.expect("body");
    assert!(!text.contains("4313347"), "{text}");
    assert!(text.contains("expected a string"), "{text}");
    p.card_attached(GOOD_CARD).await;
    let res = checkout(
        &app,
        &p.id,
        "confirm",
        Some(&p.secret),
        Some(json!({"otp": 111_111})),
    )
    .await;
    assert_eq!(res.status().as_u16(), 422);
    let text = res.text().await.expect("body");
    assert!(!text.contains("111111"), "{text}");
}

/// The hosted page of an open ATMOS payment carries the card form, which sends card and code to
/// the checkout routes with the secret from the page URL's fragment; a closed one does not.
#[tokio::test]
async fn the_hosted_page_of_an_atmos_payment_has_the_card_form() {
    let app = spawn_app().await;
    let res = app.create_payment(&payment_body("atmos", 150_000)).await;
    let created: Value = res.json().await.expect("json");
    let id = created["id"].as_str().expect("id");
    let url = created["checkout_url"].as_str().expect("checkout_url");
    let (page_url, fragment) = url.split_once('#').expect("a fragment");
    assert_eq!(
        fragment,
        format!("cs={}", created["client_secret"].as_str().expect("secret"))
    );
    let page_path = page_url
        .split_once("/pay/")
        .map(|(_, rest)| rest)
        .expect("path");
    let page = app
        .client
        .get(app.url(&format!("/pay/{page_path}")))
        .send()
        .await
        .expect("page");
    // A page that takes card data is never framed by another site (clickjacking) nor kept
    // in a cache.
    for (name, value) in [
        (
            "content-security-policy",
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            page.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    let html = page.text().await.expect("html");
    for part in [
        "id=\"card\"",
        "id=\"otp\"",
        &format!("/v1/checkout/{id}/atmos/"),
        "x-client-secret",
        "location.hash",
    ] {
        assert!(html.contains(part), "{part}: {html}");
    }
    // The routes are found from the page's own address, so tolov may sit under a path of the
    // shop's site (`server.public_url = https://shop.example.uz/tolov`).
    let target = html
        .split("fetch(\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the script's fetch target");
    let under_path = url::Url::parse(&format!("https://shop.example.uz/tolov/pay/{id}"))
        .and_then(|page| page.join(target))
        .expect("resolves");
    assert_eq!(
        under_path.as_str(),
        format!("https://shop.example.uz/tolov/v1/checkout/{id}")
    );
    let cancel = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let html = app.hosted_page(id).await;
    assert!(!html.contains("id=\"card\""), "{html}");
}

/// A merchant's checkout page on its own origin may call the checkout routes (CORS, the client
/// secret header allowed, no credentials); the merchant API is not opened to browsers.
#[tokio::test]
async fn browsers_on_other_origins_may_call_the_checkout_routes_only() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "en").await;
    let preflight = |path: String| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url(&path))
            .header("origin", "https://shop.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-client-secret",
            )
            .send()
    };
    for action in ["pre-apply", "confirm", "resend-otp"] {
        let res = preflight(format!("/v1/checkout/{}/atmos/{action}", p.id))
            .await
            .expect("preflight");
        assert!(res.status().is_success(), "{action}: {}", res.status());
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{action}");
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .to_ascii_lowercase();
        assert!(allowed.contains("x-client-secret"), "{action}: {allowed}");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    let view = app
        .client
        .get(app.url(&format!("/v1/checkout/{}", p.id)))
        .header("origin", "https://shop.example")
        .header("x-client-secret", &p.secret)
        .send()
        .await
        .expect("view");
    assert_eq!(view.status().as_u16(), 200);
    assert_eq!(view.headers()["access-control-allow-origin"], "*");
    let merchant = preflight("/v1/payments".to_owned())
        .await
        .expect("preflight");
    assert!(
        merchant
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "the merchant API is not for browsers"
    );
}

/// A4.7: sources disagree on the resend path (`otp-resend`, or `retry-otp` in ATMOS's full
/// docs); `otp-resend` is tried first, and an ATMOS without it (HTTP 404) is asked at
/// `retry-otp` with `{store_id, transaction_id}`. Either way the payer hears "sent".
#[tokio::test]
async fn resend_falls_back_to_retry_otp_where_otp_resend_does_not_exist() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    for body in [json!({"error": "not found"}), Value::Null] {
        let answer = match &body {
            Value::Null => ResponseTemplate::new(404).set_body_string("Not Found"),
            b => ResponseTemplate::new(404).set_body_json(b.clone()),
        };
        Mock::given(method("POST"))
            .and(path("/merchant/pay/otp-resend"))
            .respond_with(answer)
            .up_to_n_times(1)
            .mount(&mock)
            .await;
    }
    mount_ok(&mock, "/merchant/pay/retry-otp", json!({})).await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    for _ in 0..2 {
        let res = p.resend().await;
        assert_eq!(res.status().as_u16(), 200, "{:?}", res.text().await);
    }
    let retried = requests_to(&mock, "/merchant/pay/retry-otp").await;
    assert_eq!(retried.len(), 2);
    let body: Value = serde_json::from_slice(&retried[0].body).expect("json");
    assert_eq!(
        body,
        json!({"store_id": STORE_ID, "transaction_id": p.transaction_id})
    );
    assert_eq!(
        requests_to(&mock, "/merchant/pay/otp-resend").await.len(),
        2
    );
    p.confirmed().await;
    // Only the resend falls back: a 404 elsewhere (a proxy's page) stays what it was, an answer
    // tolov cannot read, so a cancel that asks `pay/get` is 502 (retry), not a refusal.
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(ResponseTemplate::new(404).set_body_string("<html>Not Found</html>"))
        .mount(&mock)
        .await;
    let q = atmos_payment(&app, "uz").await;
    q.card_attached(GOOD_CARD).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(1)
        .mount(&mock)
        .await;
    assert_payer_problem(q.confirm(OTP).await, 502, "provider_unavailable").await;
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", q.id), &json!({}))
        .await;
    assert_problem(cancel, 502, "provider_error").await;
    assert_eq!(q.status().await, "processing");
}

/// A4.4: ATMOS closes a draft the payer was slow with (ERR-092). At `apply` that ends the
/// attempt, not the payment: the payer is told to attach the card again (`attempt_expired`),
/// not that the payment is closed, and can.
#[tokio::test]
async fn a_draft_atmos_closed_at_apply_asks_for_the_card_again() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .and(body_partial_json(json!({"transaction_id": 555001})))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let body = assert_payer_problem(p.confirm(OTP).await, 422, "attempt_expired").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("card again")),
        "{body}"
    );
    assert_eq!(p.status().await, "pending");
    assert_problem(p.resend().await, 409, "no_otp_pending").await;
    p.card_attached(GOOD_CARD).await;
    assert_eq!(p.status().await, "processing");
}

/// Every SMS costs the merchant and reaches the card holder's phone, and every pre-apply tries a
/// card at ATMOS: a checkout link in the wrong hands must not send SMS or test cards without
/// bound. `atmos.sms_per_payment` (5) pre-apply and resend calls per payment reach ATMOS; the
/// next is refused before ATMOS, and the last code sent can still be entered.
#[tokio::test]
async fn sms_sends_are_capped_per_payment_and_the_last_code_still_pays() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/otp-resend", json!({})).await;
    mount_ok(&mock, "/merchant/pay/apply", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "ru").await;
    p.card_attached(GOOD_CARD).await;
    for _ in 0..4 {
        let res = p.resend().await;
        assert_eq!(res.status().as_u16(), 200, "resend within the limit");
    }
    let body = assert_payer_problem(p.resend().await, 429, "sms_limit_reached").await;
    assert_eq!(
        body["detail"],
        "Для этого платежа запрошено слишком много SMS-кодов. Введите последний полученный код."
    );
    assert!(body["messages"]["uz"].is_string(), "{body}");
    assert_payer_problem(
        p.pre_apply(GOOD_CARD, EXPIRY).await,
        429,
        "sms_limit_reached",
    )
    .await;
    assert_eq!(
        (
            requests_to(&mock, "/merchant/pay/pre-apply").await.len(),
            requests_to(&mock, "/merchant/pay/otp-resend").await.len()
        ),
        (1, 4),
        "the refused calls never reached ATMOS"
    );
    assert_eq!(p.status().await, "processing");
    p.confirmed().await;
}

/// Cards ATMOS refuses at pre-apply count as well (card testing), and twenty resends sent at
/// once cannot get past the limit: it is one counter per payment, shared by every request and
/// instance.
#[tokio::test]
async fn refused_cards_and_parallel_resends_count_against_the_sms_limit() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "en").await;
    for _ in 0..2 {
        assert_payer_problem(
            p.pre_apply(SMS_OFF_CARD, EXPIRY).await,
            422,
            "sms_not_connected",
        )
        .await;
    }
    p.card_attached(GOOD_CARD).await;
    let answers = futures::future::join_all((0..20).map(|_| p.resend())).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 200).count(),
            statuses.iter().filter(|s| **s == 429).count()
        ),
        (2, 18),
        "five SMS in all: two refused cards, one attached, two resends: {statuses:?}"
    );
    let body = assert_payer_problem(
        p.pre_apply(GOOD_CARD, EXPIRY).await,
        429,
        "sms_limit_reached",
    )
    .await;
    assert_eq!(
        body["detail"],
        "Too many SMS codes were requested for this payment. Enter the last code you received."
    );
    p.confirmed().await;
}

/// A paid ATMOS payment whose refund's `reverse` ATMOS answers with `code`: the refund's answer
/// (status, problem code) and the refunds' states after it.
async fn a_refund_whose_reverse_atmos_answers(code: &str) -> (u16, String, Vec<String>, String) {
    a_refund_whose_reverse_atmos_answers_with(refusal(code, "Отказ")).await
}

async fn a_refund_whose_reverse_atmos_answers_with(
    answer: Value,
) -> (u16, String, Vec<String>, String) {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    assert_eq!(p.status().await, "succeeded");
    let refunds = format!("/v1/payments/{}/refunds", p.id);
    let res = app.post_json(&refunds, &json!({})).await;
    let status = res.status().as_u16();
    let problem: Value = res.json().await.expect("problem");
    // Only a wrong-parameter refusal (ERR-009) makes tolov try the debit's id (A4.6): any
    // other answer is about this payment, and a second id might name another one's.
    assert_eq!(
        requests_to(&mock, "/merchant/pay/reverse").await.len(),
        1,
        "one id tried"
    );
    let states = app
        .state
        .store
        .list_refunds(&tolov::domain::PaymentId::parse(&p.id).expect("id"))
        .await
        .expect("refunds")
        .iter()
        .map(|r| r.status.as_str().to_owned())
        .collect();
    // What a second refund of the whole amount hears now.
    let again = app.post_json(&refunds, &json!({})).await;
    let again: Value = again.json().await.expect("json");
    let again = again["code"].as_str().unwrap_or("").to_owned();
    assert_eq!(p.status().await, "succeeded");
    (
        status,
        problem["code"].as_str().unwrap_or("").to_owned(),
        states,
        again,
    )
}

/// A3: STPIMS-ERR-001 is ATMOS's internal error, "temporary and retryable": a reverse that got
/// it may have happened, so the refund stays pending (its amount held) for reconciliation to
/// settle from `pay/get`, instead of failing and freeing the amount for a second refund.
#[tokio::test]
async fn an_internal_error_at_reverse_leaves_the_refund_pending_for_reconciliation() {
    let (status, code, states, again) =
        a_refund_whose_reverse_atmos_answers("STPIMS-ERR-001").await;
    assert_eq!((status, code.as_str()), (502, "provider_unavailable"));
    assert_eq!(states, ["pending"], "the amount stays held");
    assert_eq!(again, "refund_exceeds_payment");
}

/// A3: the newer envelope's `-999999` is ATMOS's "System error", like STPIMS-ERR-001: the
/// reverse may have happened, so the refund stays pending for reconciliation.
#[tokio::test]
async fn a_system_error_at_reverse_leaves_the_refund_pending_for_reconciliation() {
    for code in [json!("-999999"), json!(-999999)] {
        let (status, problem, states, again) = a_refund_whose_reverse_atmos_answers_with(
            json!({"status": {"code": code, "message": "System error"}}),
        )
        .await;
        assert_eq!((status, problem.as_str()), (502, "provider_unavailable"));
        assert_eq!(states, ["pending"], "the amount stays held");
        assert_eq!(again, "refund_exceeds_payment");
    }
}

/// Any other refusal of `reverse` is ATMOS's answer: the refund fails at once, its amount is
/// free again, and the payment stays paid.
#[tokio::test]
async fn a_reverse_atmos_refuses_fails_the_refund_and_frees_its_amount() {
    let (status, code, states, _) = a_refund_whose_reverse_atmos_answers("STPIMS-ERR-067").await;
    assert_eq!((status, code.as_str()), (422, "provider_rejected"));
    assert_eq!(states[0], "failed", "the amount is free again");
}

/// An SMS-code check whose outcome is unknown (ATMOS timed out or failed at apply) leaves the
/// payment processing. A merchant cancel then asks ATMOS first (`pay/get`): a debit it
/// confirms refuses the cancel, where it used to cancel and leave the payer debited, and is
/// recorded at once (asked again, as reconciliation does), so the merchant can refund it now.
#[tokio::test]
async fn a_merchant_cancel_asks_atmos_first_and_is_refused_for_a_debit() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    assert_eq!(p.status().await, "processing");
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 422);
    let body: Value = cancel.json().await.expect("json");
    assert_eq!(body["code"], "provider_rejected", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already_debited")),
        "{body}"
    );
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(p.attempts().await[0].0, "paid");
    let events = app.get_json(&format!("/v1/payments/{}/events", p.id)).await;
    let last = events["data"]
        .as_array()
        .and_then(|e| e.last().cloned())
        .unwrap_or_default();
    assert_eq!(
        (last["type"].clone(), last["actor"].clone()),
        (json!("payment.succeeded"), json!("reconciliation")),
        "{events}"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/get").await.len(), 2);
}

/// A merchant cancel of an ATMOS payment ATMOS has not debited still goes through. Only a
/// payment an SMS code was sent for can have been debited, so only then is ATMOS asked: a
/// payment with no card, or a card but no code, is cancelled without ATMOS (even while it is
/// unreachable).
#[tokio::test]
async fn a_merchant_cancel_asks_atmos_only_once_a_code_was_sent() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_wrong_code_at_apply(&mock, Duration::ZERO).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let cancel = |id: String| {
        let app = &app;
        async move {
            app.post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
                .await
                .status()
                .as_u16()
        }
    };
    let untouched = atmos_payment(&app, "uz").await;
    assert_eq!(cancel(untouched.id.clone()).await, 200);
    let card_only = atmos_payment(&app, "uz").await;
    card_only.card_attached(GOOD_CARD).await;
    assert_eq!(cancel(card_only.id.clone()).await, 200);
    assert_eq!(card_only.status().await, "canceled");
    assert!(requests_to(&mock, "/merchant/pay/get").await.is_empty());

    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm("222222").await, 422, "otp_invalid").await;
    // Attaching the card again does not forget that a code was sent.
    p.card_attached(GOOD_CARD).await;
    assert_eq!(cancel(p.id.clone()).await, 200);
    assert_eq!(p.status().await, "canceled");
    assert_eq!(requests_to(&mock, "/merchant/pay/get").await.len(), 1);
}

/// ATMOS calls back before it debits ("status 1 allows the payment"): for a payment that is
/// no longer open the answer is status 0, so ATMOS does not take money tolov would have to
/// give back.
#[tokio::test]
async fn a_pre_debit_callback_for_a_closed_payment_is_refused() {
    let app = spawn_app().await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let before = app.snapshot().await;
    let answer = send_callback(&app, &p.callback_body()).await;
    assert_eq!(answer["status"], 0, "{answer}");
    assert_eq!(app.snapshot().await, before);
}

/// Same race, but ATMOS refuses the reversal: the payer must not be told the money came back
/// (it did not; an operator reverses it by hand, which the log says loudly).
#[tokio::test]
async fn a_late_debit_whose_reversal_fails_is_not_reported_as_returned() {
    let mock = slow_atmos("/merchant/pay/apply", confirmed_transaction(true)).await;
    mount_undebited_once(&mock).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"result": {"code": "STPIMS-ERR-068", "description": "Отказ"}}),
            ),
        )
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let (confirm, canceled) = tokio::join!(
        p.confirm(OTP),
        cancel_after(&app, &p.id, Duration::from_millis(100))
    );
    assert_eq!(canceled, 200);
    let body = assert_payer_problem(confirm, 409, "payment_closed").await;
    assert_eq!(
        body["detail"], "The payment has expired or was cancelled.",
        "{body}"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 1);
    // ATMOS's callback for the debit hears "temporary error" (so it calls again) and each call
    // tries the reversal once more.
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 0);
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 2);
}

/// Attaching a card again while a code is at ATMOS would clear the one-at-a-time mark, so a
/// second code could be checked beside the first (and one wrong code would go uncounted): it is
/// refused until the check ends, before ATMOS is asked.
#[tokio::test]
async fn a_card_cannot_be_attached_while_a_code_is_being_checked() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_wrong_code_at_apply(&mock, Duration::from_millis(2000)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let again = async {
        // The code is at ATMOS (2 s) by then, even on a busy machine.
        tokio::time::sleep(Duration::from_millis(700)).await;
        p.pre_apply(GOOD_CARD, EXPIRY).await
    };
    let (wrong, again) = tokio::join!(p.confirm("222222"), again);
    assert_payer_problem(again, 409, "otp_check_in_progress").await;
    assert_payer_problem(wrong, 422, "otp_invalid").await;
    assert_eq!(requests_to(&mock, "/merchant/pay/pre-apply").await.len(), 1);
    // The check is over: the card may be attached again.
    p.card_attached(GOOD_CARD).await;
}

/// An apply that timed out may have debited; the payer's retry is then refused by ATMOS (the
/// transaction is no longer open, ERR-092). A refusal is no proof that no money moved, so
/// `pay/get` is asked before the attempt is declined: here ATMOS confirms the debit, and the
/// payment succeeds instead of going back to pending and expiring with the money taken.
#[tokio::test]
async fn a_refusal_at_apply_is_checked_with_pay_get_before_the_attempt_is_declined() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    p.confirmed().await;
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(p.attempts().await, [("paid".to_owned(), true, false)]);
}

/// The first `apply` reaches ATMOS, whose answer never comes in time (it debits); every later
/// one is refused as closed (ERR-092).
async fn mount_unanswered_apply_then_closed(mock: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(confirmed_transaction(true)))
                .set_delay(Duration::from_millis(2_500)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/apply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(closed_draft()))
        .mount(mock)
        .await;
}

/// An apply that got no answer may still debit after ATMOS refuses the payer's retry (ERR-092)
/// while `pay/get` does not show the debit yet. That refusal does not end the attempt (the
/// payment would go back to `pending` and expire with the money taken, nobody asking ATMOS
/// again): the payer hears `processing`, and reconciliation finds the debit with `pay/get`.
#[tokio::test]
async fn a_refusal_after_an_unanswered_apply_leaves_the_debit_to_be_found() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_unanswered_apply_then_closed(&mock).await;
    // ATMOS shows the debit only after the refusal.
    mount_undebited_once(&mock).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    let (app, clock) = slow_calls_on_a_clock(&mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    let retry = p.confirm(OTP).await;
    assert_eq!(retry.status().as_u16(), 200);
    assert_eq!(
        retry.json::<Value>().await.expect("json"),
        json!({"status": "processing"})
    );
    assert_eq!(p.status().await, "processing");
    assert_eq!(p.attempts().await[0].0, "otp_sent");
    assert_eq!(requests_to(&mock, "/merchant/pay/get").await.len(), 1);
    clock.advance(Span::minutes(16));
    let report = reconcile_once(&app.state, app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(p.status().await, "succeeded");
    assert_eq!(p.attempts().await[0].0, "paid");
}

/// That caution lasts ten minutes from the unanswered apply (refusals meanwhile do not extend
/// it): a refusal after that, with `pay/get` showing no debit, is a decline again (the payer is
/// told, and the payment is payable with another card).
#[tokio::test]
async fn a_refusal_long_after_an_unanswered_apply_is_a_decline_again() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_unanswered_apply_then_closed(&mock).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    let (app, clock) = slow_calls_on_a_clock(&mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    // Within the window a refusal is not believed; it does not restart the window either.
    clock.advance(Span::minutes(6));
    let held = p.confirm(OTP).await;
    assert_eq!(held.status().as_u16(), 200);
    clock.advance(Span::minutes(5));
    assert_payer_problem(p.confirm(OTP).await, 422, "attempt_expired").await;
    assert_eq!(p.status().await, "pending");
    assert_eq!(p.attempts().await[0].0, "failed");
}

/// A debit lands on a payment the merchant cancelled, and ATMOS's callback for it comes twenty
/// times at once: the debit is reversed once (one `reverse` call, claimed on the attempt first),
/// not once per callback with nineteen refusals logged as "reverse it by hand".
#[tokio::test]
async fn twenty_callbacks_for_a_late_debit_reverse_it_once() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_undebited_once(&mock).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body(json!({})))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let body = p.callback_body();
    let answers = futures::future::join_all((0..20).map(|_| send_callback(&app, &body))).await;
    // The one that reversed it answers 1; those that found it being reversed answer "temporary
    // error", so ATMOS calls again and hears 1 once it is done.
    assert!(answers.iter().any(|a| a["status"] == 1), "{answers:?}");
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 1);
    assert_eq!(p.status().await, "canceled");
    assert_eq!(p.attempts().await[0].0, "reversed");
    // The audit trail says the money went back, once (as ePay's late_charge_refunded does).
    let reversed: Vec<Value> = p
        .event_list()
        .await
        .into_iter()
        .filter(|e| e["type"] == "payment.late_debit_reversed")
        .collect();
    assert_eq!(reversed.len(), 1, "{reversed:?}");
    assert_eq!(
        (
            reversed[0]["from_status"].clone(),
            reversed[0]["to_status"].clone()
        ),
        (json!("canceled"), json!("canceled"))
    );
    assert_eq!(
        send_callback(&app, &body).await["status"],
        1,
        "ATMOS's retry"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 1);
}

/// A code check under way when the merchant cancels debits the card, and neither its answer nor
/// an ATMOS callback ever arrives (A7: callbacks are not documented to repeat). The cancel
/// scheduled a recheck: reconciliation asks `pay/get` ten minutes later, finds the debit and
/// reverses it; a reversal that fails is tried again on the next recheck, once it works never
/// again.
#[tokio::test]
async fn a_debit_after_a_cancel_that_nobody_reports_is_found_and_reversed() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_undebited_once(&mock).await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(true)).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_ok(&mock, "/merchant/pay/reverse", json!({})).await;
    // The payer's code reaches ATMOS, whose answer never does.
    mount_ok_after(
        &mock,
        "/merchant/pay/apply",
        confirmed_transaction(true),
        Duration::from_millis(2_500),
    )
    .await;
    let (app, clock) = slow_calls_on_a_clock(&mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    // Past the code check's mark, the merchant cancels: ATMOS shows no debit yet.
    clock.advance(Span::minutes(1));
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let since = app.state.now() - Span::minutes(1);
    assert_eq!(
        reconcile_once(&app.state, since)
            .await
            .expect("pass")
            .rechecked,
        0
    );
    // Ten minutes on: ATMOS reports the debit; reversing it fails this time.
    clock.advance(Span::minutes(11));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 1);
    assert_eq!(p.status().await, "canceled");
    assert_eq!(
        p.attempts().await[0].0,
        "failed",
        "the cancel ended the attempt; the debit found later is not yet returned"
    );
    // Next time it works.
    clock.advance(Span::minutes(11));
    let report = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (report.rechecked, report.rechecks_done),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 2);
    assert_eq!(p.attempts().await[0].0, "reversed");
    assert_eq!(p.status().await, "canceled");
    clock.advance(Span::hours(1));
    assert_eq!(
        reconcile_once(&app.state, since)
            .await
            .expect("pass")
            .rechecked,
        0
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Coverage of ATMOS's answers the flows above do not meet.

/// A signed callback arrives while `pay/get` (which the callback is checked against) fails:
/// ATMOS hears status 0 "temporary error" so it asks again, and nothing is recorded.
#[tokio::test]
async fn a_callback_that_cannot_be_checked_with_pay_get_is_answered_temporary_error() {
    for broken in [
        ResponseTemplate::new(503),
        ResponseTemplate::new(200).set_body_json(refusal("STPIMS-ERR-001", "Внутренняя ошибка")),
    ] {
        let (mock, _) = mock_atmos().await;
        mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
        Mock::given(method("POST"))
            .and(path("/merchant/pay/get"))
            .respond_with(broken)
            .mount(&mock)
            .await;
        let app = app_on_mock(Db::Sqlite, &mock).await;
        let p = atmos_payment(&app, "uz").await;
        p.card_attached(GOOD_CARD).await;
        let before = app.snapshot().await;
        let answer = send_callback(&app, &p.callback_body()).await;
        assert_eq!(
            (answer["status"].clone(), answer["message"].clone()),
            (json!(0), json!("temporary error")),
            "{answer}"
        );
        assert_eq!(app.snapshot().await, before);
        assert_eq!(p.status().await, "processing");
    }
}

/// A processing payment whose debit ATMOS already reversed (`pay/get`: confirmed with
/// status_code -20) is not recorded paid by reconciliation.
#[tokio::test]
async fn reconciliation_does_not_record_a_reversed_debit_as_paid() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    let mut reversed = confirmed_transaction(true);
    reversed["store_transaction"]["status_code"] = json!("-20");
    mount_ok(&mock, "/merchant/pay/get", reversed).await;
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = app_on_mock_with(&mock, |_| {}, overrides).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    clock.advance(Span::minutes(16));
    let since = app.state.now() - Span::minutes(15);
    let report = tolov::workers::reconcile::reconcile_once(&app.state, since)
        .await
        .expect("pass");
    assert_eq!((report.checked, report.unchanged), (1, 1));
    // No money is held for it: it stays as it was, and expiry ends it at its deadline.
    assert_eq!(p.status().await, "processing");
    let types = app.get_json(&format!("/v1/payments/{}/events", p.id)).await;
    assert!(!types.to_string().contains("payment.succeeded"), "{types}");
}

/// An HTTP 4xx other than 401 (the token) and 404 (where resend falls back) with a JSON body:
/// ATMOS refused the call. Creating the payment is refused with `422 provider_rejected`, and
/// nothing is stored.
#[tokio::test]
async fn an_atmos_http_400_is_a_refusal_and_stores_nothing() {
    let (mock, _) = mock_atmos().await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/create"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad request"})))
        .with_priority(1)
        .mount(&mock)
        .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let before = app.snapshot().await;
    let res = app.create_payment(&payment_body("atmos", 150_000)).await;
    let problem = assert_problem(res, 422, "provider_rejected").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("HTTP 400")),
        "{problem}"
    );
    assert_eq!(app.snapshot().await, before);
}

/// The hosted card form's script, run by Node.js against this server with a minimal DOM of the
/// page's elements: a declined card brings the card form back, the code can be sent again, and
/// the right code pays.
#[tokio::test]
async fn the_hosted_card_form_script_pays_resends_and_recovers_from_a_decline() {
    let app = spawn_app().await;
    let mut body = payment_body("atmos", AMOUNT);
    body["language"] = json!("en");
    let (id, page) = page_with_secret(&app, &body).await;
    let driver = format!(
        r#"
  await loaded;
  check(elements.status.textContent === "awaiting payment", "the payment is shown");
  elements.pan.value = "{POOR_CARD}"; elements.exp.value = "{EXPIRY}";
  await elements.card.onsubmit(submit);
  check(elements.card.hidden && !elements.code.hidden, "the code form follows the card");
  elements.otp.value = "{OTP}";
  await elements.code.onsubmit(submit);
  check(!elements.card.hidden && elements.code.hidden, "a declined card brings the card form back");
  check(elements.msg.textContent !== "", "and says why");
  elements.pan.value = "{GOOD_CARD}";
  await elements.card.onsubmit(submit);
  check(!elements.code.hidden, "the code form again");
  await elements.resend.onclick();
  check(elements.msg.textContent === "A new code was sent.", "the code was sent again");
  const online = globalThis.fetch;
  globalThis.fetch = () => Promise.reject(new TypeError("the network is down"));
  elements.otp.value = "{OTP}";
  await elements.code.onsubmit(submit);
  check(elements.msg.textContent === "Something went wrong; try again.", "no answer at all");
  check(!elements.code.hidden, "the code can be sent again");
  globalThis.fetch = online;
  elements.otp.value = "{OTP}";
  await elements.code.onsubmit(submit);
  check(elements.msg.textContent === "Paid.", "paid");
  // A card sent again (a second tab) hears that the payment is paid, not "something went wrong".
  elements.pan.value = "{GOOD_CARD}";
  await elements.card.onsubmit(submit);
  check(elements.msg.textContent === "Paid.", "already paid");
"#
    );
    let (ok, out) = run_page(&app, &page, &driver).await;
    assert!(ok, "{out}");
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
}

/// A declined card is recorded even when the payment changed while ATMOS was checking the code
/// (another writer moved its version after confirm read it): the payer hears the decline, not
/// `409 concurrent_update`, and the payment is payable again.
#[tokio::test]
async fn a_decline_is_recorded_when_the_payment_changed_during_the_check() {
    use sqlx::Connection;
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    mount_refused_after(
        &mock,
        "/merchant/pay/apply",
        "STPIMS-ERR-112",
        "Недостаточно средств",
        Duration::from_millis(800),
    )
    .await;
    mount_ok(&mock, "/merchant/pay/get", confirmed_transaction(false)).await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "en").await;
    p.card_attached(GOOD_CARD).await;
    let moved = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut db = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .expect("connect");
        sqlx::query("UPDATE payments SET version = version + 1 WHERE id = ?")
            .bind(&p.id)
            .execute(&mut db)
            .await
            .expect("move the version");
    };
    let (res, ()) = tokio::join!(p.confirm(OTP), moved);
    assert_payer_problem(res, 422, "insufficient_funds").await;
    assert_eq!(p.status().await, "pending");
    assert_eq!(p.attempts().await[0].0, "failed");
}

/// A4.6: the sources disagree on which id `reverse` takes; the safe guess is the create id, and
/// the debit's `success_trans_id` (from `pay/get`) when ATMOS calls that a wrong parameter
/// (ERR-009). An ATMOS that wants the debit's id refunds the payment instead of refusing every
/// refund; the refund counts once `pay/get` shows the debit reversed.
#[tokio::test]
async fn a_reverse_refused_for_the_create_id_is_tried_with_the_debit_s_id() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    // The callback's check and the refund's look-up of the debit's id; then it is reversed.
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(confirmed_transaction(true))),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&mock)
        .await;
    let mut reversed = confirmed_transaction(true);
    reversed["store_transaction"]["status_code"] = json!("-20");
    mount_ok(&mock, "/merchant/pay/get", reversed).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .and(body_partial_json(json!({"transaction_id": 9_000_001})))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(json!({}))))
        .with_priority(1)
        .mount(&mock)
        .await;
    mount_refused_after(
        &mock,
        "/merchant/pay/reverse",
        "STPIMS-ERR-009",
        "Транзакция не найдена",
        Duration::ZERO,
    )
    .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    assert_eq!(p.status().await, "succeeded");
    let res = app
        .post_json(&format!("/v1/payments/{}/refunds", p.id), &json!({}))
        .await;
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(
        res.json::<Value>().await.expect("json")["status"],
        "succeeded"
    );
    assert_eq!(p.status().await, "refunded");
    let sent: Vec<Value> = requests_to(&mock, "/merchant/pay/reverse")
        .await
        .iter()
        .map(|r| json_of(r)["transaction_id"].clone())
        .collect();
    assert_eq!(sent, [json!(555_001), json!(9_000_001)]);
}

/// A late debit on a cancelled payment whose reversal ATMOS already made (an earlier reverse
/// whose answer was lost) is refused when asked again; `pay/get` showing it reversed is what
/// counts: the attempt is recorded reversed, with its event, once, and ATMOS hears 1 instead
/// of being asked to call again for good.
#[tokio::test]
async fn a_reversal_refused_because_it_was_already_made_is_recorded() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    // The callback's check finds the debit; afterwards ATMOS shows it reversed.
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(confirmed_transaction(true))),
        )
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&mock)
        .await;
    let mut reversed = confirmed_transaction(true);
    reversed["store_transaction"]["status_code"] = json!("-20");
    mount_ok(&mock, "/merchant/pay/get", reversed).await;
    mount_refused_after(
        &mock,
        "/merchant/pay/reverse",
        "STPIMS-ERR-068",
        "Отказ",
        Duration::ZERO,
    )
    .await;
    let app = app_on_mock(Db::Sqlite, &mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    assert_eq!(send_callback(&app, &p.callback_body()).await["status"], 1);
    assert_eq!(p.status().await, "canceled");
    assert_eq!(p.attempts().await[0].0, "reversed");
    let kinds: Vec<Value> = p
        .event_list()
        .await
        .into_iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "payment.late_debit_reversed")
            .count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(requests_to(&mock, "/merchant/pay/reverse").await.len(), 1);
}

/// The same found by the recheck: a late debit whose reverse went unanswered (ATMOS made it)
/// is asked about again ten minutes later; `pay/get` now shows it reversed, and the recheck
/// records it (attempt reversed, one event) instead of ending with nothing written.
#[tokio::test]
async fn a_reversal_made_but_unanswered_is_recorded_by_the_recheck() {
    let (mock, _) = mock_atmos().await;
    mount_ok(&mock, "/merchant/pay/pre-apply", json!({})).await;
    // The cancel's check: no debit yet. The first recheck's two reads: debited. Then reversed.
    mount_undebited_once(&mock).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/get"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(ok_body(confirmed_transaction(true))),
        )
        .up_to_n_times(2)
        .with_priority(2)
        .mount(&mock)
        .await;
    let mut reversed = confirmed_transaction(true);
    reversed["store_transaction"]["status_code"] = json!("-20");
    mount_ok(&mock, "/merchant/pay/get", reversed).await;
    Mock::given(method("POST"))
        .and(path("/merchant/pay/reverse"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    mount_ok_after(
        &mock,
        "/merchant/pay/apply",
        confirmed_transaction(true),
        Duration::from_millis(2_500),
    )
    .await;
    let (app, clock) = slow_calls_on_a_clock(&mock).await;
    let p = atmos_payment(&app, "uz").await;
    p.card_attached(GOOD_CARD).await;
    assert_payer_problem(p.confirm(OTP).await, 502, "provider_unavailable").await;
    clock.advance(Span::minutes(1));
    let cancel = app
        .post_json(&format!("/v1/payments/{}/cancel", p.id), &json!({}))
        .await;
    assert_eq!(cancel.status().as_u16(), 200);
    let since = app.state.now() - Span::minutes(1);
    clock.advance(Span::minutes(11));
    let first = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!((first.rechecked, first.rechecks_done), (1, 0), "{first:?}");
    assert_ne!(p.attempts().await[0].0, "reversed");
    clock.advance(Span::minutes(11));
    let second = reconcile_once(&app.state, since).await.expect("pass");
    assert_eq!(
        (second.rechecked, second.rechecks_done),
        (1, 1),
        "{second:?}"
    );
    assert_eq!(p.status().await, "canceled");
    assert_eq!(p.attempts().await[0].0, "reversed");
    let reversed_events = p
        .event_list()
        .await
        .into_iter()
        .filter(|e| e["type"] == "payment.late_debit_reversed")
        .count();
    assert_eq!(reversed_events, 1);
}
