//! The merchant payments API: creation, reading, listing, cancel, refunds, idempotency, events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use serde_json::{json, Value};
use tolov::domain::{Actor, NewPayment, Payment, PaymentId, PaymentStatus, ProviderKind, RefundId};
use tolov::lifecycle::change_status;
use tolov::money::Money;
use tolov::providers::{Provider, ProviderError, RefundOutcome, RefundPolicy};
use tolov::startup::Overrides;

use crate::helpers::*;

on_both!(
    creates_and_reads_a_payment_for_every_provider,
    same_key_same_body_replays_the_first_response,
    same_key_other_body_is_refused,
    twenty_concurrent_creations_with_one_key_create_one_payment,
    cancel_moves_an_open_payment_once,
    twenty_concurrent_partial_refunds_never_exceed_the_payment,
);

async fn creates_and_reads_a_payment_for_every_provider(db: Db) {
    let app = spawn_app_on(db).await;
    for (provider, currency) in [
        ("payme", "UZS"),
        ("click", "UZS"),
        ("atmos", "UZS"),
        ("epay", "KZT"),
    ] {
        let res = app.create_payment(&payment_body(provider, 150_000)).await;
        assert_eq!(res.status().as_u16(), 201, "{provider}");
        assert_eq!(res.headers()["content-type"], "application/json");
        let created: Value = res.json().await.expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        assert!(PaymentId::parse(&id).is_some(), "{id}");
        assert_eq!(created["status"], "pending");
        assert_eq!(created["provider"], provider);
        assert_eq!(created["amount"], 150_000);
        assert_eq!(created["currency"], currency);
        assert_eq!(created["order_id"], "order-1001");
        assert_eq!(created["language"], "uz");
        assert_eq!(created["metadata"], json!({"cart": "c-77"}));
        let secret = created["client_secret"].as_str().expect("secret");
        assert!(secret.starts_with(&format!("{id}_secret_")), "{secret}");
        assert_eq!(
            created["checkout_url"],
            format!("http://127.0.0.1:8080/pay/{id}#cs={secret}"),
            "the hosted page gets the secret in the fragment"
        );

        let read = app.get_json(&format!("/v1/payments/{id}")).await;
        let mut expected = created.clone();
        expected
            .as_object_mut()
            .expect("object")
            .remove("client_secret");
        assert_eq!(
            read, expected,
            "GET returns what creation returned, the link the payer needs included"
        );
        let listed = app.get_json("/v1/payments?limit=1").await;
        assert_eq!(listed["data"][0]["checkout_url"], created["checkout_url"]);

        let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
        assert_eq!(events["data"].as_array().expect("events").len(), 1);
        assert_eq!(events["data"][0]["type"], "payment.created");
        assert_eq!(events["data"][0]["actor"], "merchant");
    }
}

async fn same_key_same_body_replays_the_first_response(db: Db) {
    let app = spawn_app_on(db).await;
    let body = payment_body("click", 50_000);
    let send = |key: &'static str| {
        app.client
            .post(app.url("/v1/payments"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("order-1001-attempt").await.expect("first");
    assert_eq!(first.status().as_u16(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    let second = send("order-1001-attempt").await.expect("second");
    assert_eq!(second.status().as_u16(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.expect("json");
    assert_eq!(first, second, "identical body, client_secret included");
    // Key order and whitespace in the body do not make it "another" request.
    let reordered = r#"{ "currency":"UZS", "amount":50000, "provider":"click", "order_id":"order-1001",
        "description":"Green tea, 2 boxes", "return_url":"https://shop.example/return", "language":"uz",
        "metadata":{"cart":"c-77"} }"#;
    let third = app
        .client
        .post(app.url("/v1/payments"))
        .bearer_auth(API_KEY)
        .header("idempotency-key", "order-1001-attempt")
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .expect("third");
    assert_eq!(
        third.json::<Value>().await.expect("json")["id"],
        first["id"]
    );
    // A different key is a different payment; the same key under another API key is too.
    let other = send("another-key")
        .await
        .expect("other")
        .json::<Value>()
        .await
        .expect("json");
    assert_ne!(other["id"], first["id"]);
    let other_api_key = app
        .client
        .post(app.url("/v1/payments"))
        .bearer_auth("sk_test_second_key")
        .header("idempotency-key", "order-1001-attempt")
        .json(&body)
        .send()
        .await
        .expect("second api key");
    assert_eq!(other_api_key.status().as_u16(), 201);
    assert_ne!(
        other_api_key.json::<Value>().await.expect("json")["id"],
        first["id"]
    );
    let list = app.get_json("/v1/payments?order_id=order-1001").await;
    assert_eq!(list["data"].as_array().expect("data").len(), 3);
}

async fn same_key_other_body_is_refused(db: Db) {
    let app = spawn_app_on(db).await;
    let post = |amount: i64| {
        app.client
            .post(app.url("/v1/payments"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", "k-1")
            .json(&payment_body("payme", amount))
            .send()
    };
    assert_eq!(post(10_000).await.expect("first").status().as_u16(), 201);
    let before = app.snapshot().await;
    assert_problem(
        post(20_000).await.expect("second"),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.snapshot().await, before);
}

async fn twenty_concurrent_creations_with_one_key_create_one_payment(db: Db) {
    let app = spawn_app_on(db).await;
    let body = payment_body("atmos", 77_700);
    let responses = join_all((0..20).map(|_| {
        app.client
            .post(app.url("/v1/payments"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", "burst")
            .json(&body)
            .send()
    }))
    .await;
    let mut ids = Vec::new();
    for r in responses {
        let r = r.expect("response");
        assert_eq!(r.status().as_u16(), 201);
        ids.push(r.json::<Value>().await.expect("json")["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller sees the one payment");
    let list = app.get_json("/v1/payments").await;
    assert_eq!(list["data"].as_array().expect("data").len(), 1);
}

async fn cancel_moves_an_open_payment_once(db: Db) {
    let app = spawn_app_on(db).await;
    let p = app.new_payment("payme", 10_000).await;
    let id = p["id"].as_str().expect("id");
    let res = app
        .post_json(
            &format!("/v1/payments/{id}/cancel"),
            &json!({"reason": "customer left"}),
        )
        .await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "canceled");
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "canceled"
    );
    let before = app.snapshot().await;
    let again = app
        .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_problem(again, 409, "payment_not_cancelable").await;
    assert_eq!(app.snapshot().await, before);
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["payment.created", "payment.canceled"]);
    assert_eq!(events["data"][1]["from_status"], "pending");
    assert_eq!(events["data"][1]["reason"], "customer left");
    // 20 concurrent cancels of a fresh payment: one 200, the rest 409.
    let q = app.new_payment("click", 10_000).await;
    let qid = q["id"].as_str().expect("id");
    let cancel_path = format!("/v1/payments/{qid}/cancel");
    let empty = json!({});
    let codes: Vec<u16> = join_all((0..20).map(|_| app.post_json(&cancel_path, &empty)))
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 19, "{codes:?}");
    let events = app.get_json(&format!("/v1/payments/{qid}/events")).await;
    assert_eq!(events["data"].as_array().expect("data").len(), 2);
}

/// The cancel took effect but its answer could not be kept for the Idempotency-Key (the database
/// refused that one write): the merchant still gets the real answer, not a 5xx for something
/// that happened, and the key stays taken so a retry cannot run the request a second time.
#[tokio::test]
async fn an_answer_that_cannot_be_kept_for_its_key_is_still_given() {
    use sqlx::Connection;
    let app = spawn_app_on(Db::Postgres).await;
    let p = app.new_payment("payme", 10_000).await;
    let id = p["id"].as_str().expect("id");
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_answer() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER refuse_answer BEFORE UPDATE ON idempotency_keys FOR EACH ROW
           EXECUTE FUNCTION refuse_answer();",
    )
    .execute(&mut db)
    .await
    .expect("install fault");
    let send = || {
        app.client
            .post(app.url(&format!("/v1/payments/{id}/cancel")))
            .bearer_auth(API_KEY)
            .header("idempotency-key", "cancel-unkept")
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status().as_u16(), 200, "the cancel happened");
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["status"], "canceled", "{first}");
    sqlx::raw_sql("DROP TRIGGER refuse_answer ON idempotency_keys")
        .execute(&mut db)
        .await
        .expect("remove fault");
    assert_problem(send().await.expect("second"), 409, "idempotency_key_in_use").await;
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let canceled = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|e| e["type"] == "payment.canceled")
        .count();
    assert_eq!(canceled, 1);
}

#[tokio::test]
async fn cancel_without_body_and_with_idempotency_key_replays() {
    let app = spawn_app().await;
    let p = app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    let send = || {
        app.client
            .post(app.url(&format!("/v1/payments/{id}/cancel")))
            .bearer_auth(API_KEY)
            .header("idempotency-key", "cancel-1")
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status().as_u16(), 200);
    let first: Value = first.json().await.expect("json");
    let second = send().await.expect("second");
    assert_eq!(
        second.status().as_u16(),
        200,
        "a retried cancel replays, not 409"
    );
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.expect("json"), first);
}

#[tokio::test]
async fn auth_accepts_each_configured_key_and_nothing_else() {
    let app = spawn_app().await;
    for key in [API_KEY, "sk_test_second_key"] {
        let res = app
            .client
            .get(app.url("/v1/payments"))
            .bearer_auth(key)
            .send()
            .await
            .expect("req");
        assert_eq!(res.status().as_u16(), 200, "{key}");
    }
    for bad in [
        Some("Bearer sk_test_tolov_sandboX".to_owned()),
        Some("Bearer sk_test_tolov_sandbox_longer".to_owned()),
        Some("Bearer sk_test".to_owned()),
        Some(format!("Basic {API_KEY}")),
        Some(format!("bearer{API_KEY}")),
        Some("Bearer ".to_owned()),
        None,
    ] {
        let mut req = app.client.get(app.url("/v1/payments"));
        if let Some(h) = &bad {
            req = req.header("authorization", h);
        }
        assert_problem(req.send().await.expect("req"), 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = payment_body(if i % 2 == 0 { "payme" } else { "click" }, 10_000 + i);
        body["order_id"] = json!(format!("o-{}", i % 2));
        let res = app.create_payment(&body).await;
        ids.push(
            res.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/payments?limit=2&starting_after={c}"),
            None => "/v1/payments?limit=2".to_owned(),
        };
        let page = app.get_json(&path).await;
        for p in page["data"].as_array().expect("data") {
            seen.push(p["id"].as_str().expect("id").to_owned());
        }
        if page["has_more"] == json!(false) {
            assert!(page["next_starting_after"].is_null());
            break;
        }
        cursor = Some(
            page["next_starting_after"]
                .as_str()
                .expect("cursor")
                .to_owned(),
        );
    }
    assert_eq!(seen, ids, "every payment once, newest first");
    let click = app.get_json("/v1/payments?provider=click").await;
    assert_eq!(click["data"].as_array().expect("data").len(), 2);
    let o0 = app
        .get_json("/v1/payments?order_id=o-0&status=pending")
        .await;
    assert_eq!(o0["data"].as_array().expect("data").len(), 3);
    let none = app.get_json("/v1/payments?status=succeeded").await;
    assert_eq!(none["data"], json!([]));
}

#[tokio::test]
async fn disabled_provider_is_refused() {
    let app = spawn_app_with(
        Db::Sqlite,
        |s| s.atmos.enabled = false,
        Overrides::default(),
    )
    .await;
    let before = app.snapshot().await;
    assert_problem(
        app.create_payment(&payment_body("atmos", 10_000)).await,
        422,
        "provider_disabled",
    )
    .await;
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn provider_limits_come_from_config() {
    let app = spawn_app_with(
        Db::Sqlite,
        |s| {
            s.payme.min_amount = 100_000;
            s.payme.max_amount = 200_000;
        },
        Overrides::default(),
    )
    .await;
    for (amount, ok) in [
        (99_999, false),
        (100_000, true),
        (200_000, true),
        (200_001, false),
    ] {
        let res = app.create_payment(&payment_body("payme", amount)).await;
        if ok {
            assert_eq!(res.status().as_u16(), 201, "{amount}");
        } else {
            assert_problem(res, 422, "amount_out_of_range").await;
        }
    }
}

async fn mark_paid(app: &TestApp, id: &str) {
    let id = PaymentId::parse(id).expect("id");
    let store = app.state.store.as_ref();
    let now = app.state.now();
    change_status(
        store,
        &id,
        PaymentStatus::Succeeded,
        Actor::Provider,
        None,
        now,
    )
    .await
    .expect("paid");
}

#[tokio::test]
async fn a_payme_refund_is_refused_with_where_to_make_it() {
    let app = spawn_app().await;
    // Payme's Merchant API has no refund call: the merchant refunds in Payme's cabinet and Payme
    // then cancels the performed transaction (CancelTransaction), which tolov records.
    let p = app.new_payment("payme", 10_000).await;
    let id = p["id"].as_str().expect("id");
    let path = format!("/v1/payments/{id}/refunds");
    assert_problem(
        app.post_json(&path, &json!({})).await,
        409,
        "payment_not_refundable",
    )
    .await;
    mark_paid(&app, id).await;
    let before = app.snapshot().await;
    let problem = assert_problem(
        app.post_json(&path, &json!({"amount": 100})).await,
        422,
        "refund_not_supported",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("Payme merchant cabinet") && detail.contains("refunded"),
        "{problem}"
    );
    assert_eq!(app.snapshot().await, before);
}

/// A provider whose refunds always succeed, counting how often it was asked.
struct RefundingProvider {
    calls: AtomicUsize,
    fail_with: Option<&'static str>,
}

#[async_trait]
impl Provider for RefundingProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Epay
    }
    async fn start(&self, _p: &NewPayment) -> Result<Value, ProviderError> {
        Ok(json!({"widget": true}))
    }
    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy::Partial
    }
    async fn refund(
        &self,
        _p: &Payment,
        _amount: Money,
        _id: &RefundId,
    ) -> Result<RefundOutcome, ProviderError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        match self.fail_with {
            Some(code) => Err(ProviderError::Rejected {
                provider: ProviderKind::Epay,
                code: code.into(),
                message: "declined".into(),
            }),
            None => Ok(RefundOutcome::Succeeded {
                external_id: Some(format!("ext-{n}")),
            }),
        }
    }
}

async fn refunding_app(
    db: Db,
    fail_with: Option<&'static str>,
) -> (TestApp, Arc<RefundingProvider>) {
    let provider = Arc::new(RefundingProvider {
        calls: AtomicUsize::new(0),
        fail_with,
    });
    let overrides = Overrides {
        providers: vec![provider.clone()],
        ..Overrides::default()
    };
    (spawn_app_with(db, |_| {}, overrides).await, provider)
}

#[tokio::test]
async fn partial_then_full_refund_walks_the_statuses() {
    let (app, provider) = refunding_app(Db::Sqlite, None).await;
    let p = app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    assert_eq!(p["provider_data"], json!({"widget": true}));
    mark_paid(&app, id).await;
    let path = format!("/v1/payments/{id}/refunds");
    let r1 = app
        .post_json(&path, &json!({"amount": 2_500, "reason": "one item"}))
        .await;
    assert_eq!(r1.status().as_u16(), 201);
    let r1: Value = r1.json().await.expect("json");
    assert_eq!(
        (
            r1["amount"].clone(),
            r1["status"].clone(),
            r1["currency"].clone()
        ),
        (json!(2_500), json!("succeeded"), json!("KZT"))
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "partially_refunded"
    );
    assert_problem(
        app.post_json(&path, &json!({"amount": 7_501})).await,
        422,
        "refund_exceeds_payment",
    )
    .await;
    let rest = app.post_json(&path, &json!({})).await;
    assert_eq!(rest.status().as_u16(), 201);
    assert_eq!(
        rest.json::<Value>().await.expect("json")["amount"],
        7_500,
        "no amount refunds the remainder"
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "refunded"
    );
    assert_problem(
        app.post_json(&path, &json!({"amount": 1})).await,
        409,
        "payment_not_refundable",
    )
    .await;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    let events = app.get_json(&format!("/v1/payments/{id}/events")).await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "payment.created",
            "payment.succeeded",
            "refund.created",
            "payment.partially_refunded",
            "refund.succeeded",
            "refund.created",
            "payment.refunded",
            "refund.succeeded"
        ]
    );
}

#[tokio::test]
async fn a_refused_refund_is_recorded_failed_and_frees_its_amount() {
    let (app, _provider) = refunding_app(Db::Sqlite, Some("REFUND_DECLINED")).await;
    let p = app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    mark_paid(&app, id).await;
    let res = app
        .post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 10_000}),
        )
        .await;
    let problem = assert_problem(res, 422, "provider_rejected").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("REFUND_DECLINED")),
        "{problem}"
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    let pid = PaymentId::parse(id).expect("id");
    let refunds = app.state.store.list_refunds(&pid).await.expect("refunds");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].status, tolov::domain::RefundStatus::Failed);
}

async fn twenty_concurrent_partial_refunds_never_exceed_the_payment(db: Db) {
    let (app, provider) = refunding_app(db, None).await;
    let p = app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    mark_paid(&app, id).await;
    let path = format!("/v1/payments/{id}/refunds");
    let body = json!({"amount": 1_500});
    let codes: Vec<u16> = join_all((0..20).map(|_| app.post_json(&path, &body)))
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    let ok = codes.iter().filter(|c| **c == 201).count();
    assert_eq!(ok, 6, "6 × 1500 fit in 10000, a 7th does not: {codes:?}");
    assert!(
        codes.iter().all(|c| *c == 201 || *c == 422 || *c == 409),
        "{codes:?}"
    );
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        6,
        "the provider is asked only for reserved refunds"
    );
    let pid = PaymentId::parse(id).expect("id");
    let total: i64 = app
        .state
        .store
        .list_refunds(&pid)
        .await
        .expect("refunds")
        .iter()
        .map(|r| r.amount_minor)
        .sum();
    assert_eq!(total, 9_000);
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "partially_refunded"
    );
}

/// A provider that takes its time to start a payment, to observe graceful shutdown.
struct SlowStart;

#[async_trait]
impl Provider for SlowStart {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Payme
    }
    async fn start(&self, _p: &NewPayment) -> Result<Value, ProviderError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(json!({}))
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let overrides = Overrides {
        providers: vec![Arc::new(SlowStart)],
        ..Overrides::default()
    };
    let mut app = spawn_app_with(Db::Sqlite, |_| {}, overrides).await;
    let in_flight = {
        let client = app.client.clone();
        let url = app.url("/v1/payments");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(API_KEY)
                .json(&payment_body("payme", 10_000))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.shutdown_token().cancel();
    let res = in_flight
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(res.status().as_u16(), 201);
    let server = app.server.take().expect("server handle");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .expect("join")
        .expect("clean exit");
    let after = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(after.is_err(), "no new connections after shutdown");
    assert_eq!(
        app.snapshot()
            .await
            .lines()
            .filter(|l| l.starts_with("Payment"))
            .count(),
        1
    );
}
