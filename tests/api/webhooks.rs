//! Merchant webhooks end to end: a real receiver on a random port that checks Standard Webhooks
//! signatures itself; retries on the seed's schedule under a controlled clock; ordering per
//! payment; dead letters and manual retry; two dispatchers sharing one PostgreSQL.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Duration as Span;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tolov::startup::Overrides;
use tolov::state::ManualClock;
use tolov::webhooks::dispatcher::{dispatch_once, prune_once};

use crate::helpers::*;

const SECRET_B64: &str = "c2FuZGJveC13ZWJob29rLXNlY3JldA==";

#[derive(Clone, Debug)]
struct Received {
    id: String,
    body: Value,
    signature_ok: bool,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    /// A `Retry-After` header for every answer, when set.
    retry_after: Arc<Mutex<Option<String>>>,
    url: String,
}

/// Verifies like a merchant would, with its own HMAC: v1,base64(HMAC-SHA256(key, id.ts.body)).
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let key = STANDARD.decode(SECRET_B64).expect("key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    !id.is_empty() && ts.parse::<i64>().is_ok() && sig == expected
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let signature_ok = verify(&headers, &body);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut got) = r.got.lock() {
        got.push(Received {
            id,
            body,
            signature_ok,
        });
    }
    let status = StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let retry_after = r.retry_after.lock().ok().and_then(|v| v.clone());
    match retry_after {
        Some(v) => (status, [("retry-after", v)]).into_response(),
        None => status.into_response(),
    }
}

async fn receiver_on(listener: tokio::net::TcpListener) -> Receiver {
    let port = listener.local_addr().expect("addr").port();
    let r = Receiver {
        got: Arc::default(),
        status: Arc::new(AtomicU16::new(200)),
        delay_ms: Arc::default(),
        retry_after: Arc::default(),
        url: format!("http://127.0.0.1:{port}/hooks"),
    };
    let app = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    r
}

async fn receiver() -> Receiver {
    receiver_on(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .await
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

struct Hooks {
    app: TestApp,
    clock: Arc<ManualClock>,
}

async fn hooks_app(db: Db, url: String, timeout_secs: u64) -> Hooks {
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = spawn_app_with(
        db,
        move |s| {
            s.webhooks.url = url;
            s.webhooks.enabled = false; // the tests drive the dispatcher themselves
            s.webhooks.timeout_secs = timeout_secs;
        },
        overrides,
    )
    .await;
    Hooks { app, clock }
}

impl Hooks {
    /// A payment with one outbox message (payment.canceled); returns its id.
    async fn canceled_payment(&self) -> String {
        let p = self.app.new_payment("payme", 10_000).await;
        let id = p["id"].as_str().expect("id").to_owned();
        let res = self
            .app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(res.status().as_u16(), 200);
        id
    }

    async fn dispatch(&self) -> usize {
        dispatch_once(&self.app.state).await.expect("dispatch")
    }

    async fn deliveries(&self, query: &str) -> Vec<Value> {
        self.app
            .get_json(&format!("/v1/webhooks/deliveries{query}"))
            .await["data"]
            .as_array()
            .cloned()
            .expect("data")
    }
}

async fn a_status_change_is_delivered_signed_with_its_event_id(db: Db) {
    let r = receiver().await;
    let h = hooks_app(db, r.url.clone(), 10).await;
    let id = h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    let got = r.got();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].signature_ok,
        "signature verifies with the merchant's own HMAC"
    );
    assert!(got[0].id.starts_with("evt_"));
    assert_eq!(got[0].body["id"], got[0].id.as_str());
    assert_eq!(got[0].body["type"], "payment.canceled");
    assert_eq!(got[0].body["data"]["id"], id.as_str());
    assert_eq!(got[0].body["data"]["status"], "canceled");
    assert_eq!(got[0].body["data"]["previous_status"], "pending");
    assert_eq!(got[0].body["data"]["amount"], 10_000);
    // The event is in the merchant's event list with the same id (on PostgreSQL once every
    // transaction older than it has ended, so it is waited for).
    let sent_id = got[0].id.clone();
    let (events, _) =
        read_events(&h.app, None, 100, |s| s.iter().any(|e| e["id"] == sent_id)).await;
    assert!(event_ids(&events).contains(&sent_id));
    let d = h.deliveries("?status=delivered").await;
    assert_eq!(
        (
            d.len(),
            d[0]["attempts"].clone(),
            d[0]["last_http_status"].clone()
        ),
        (1, json!(1), json!(200))
    );
    assert_eq!(h.dispatch().await, 0, "delivered once, not again");
}

async fn a_failed_delivery_is_retried_on_schedule_with_the_same_id(db: Db) {
    let r = receiver().await;
    r.status.store(500, Ordering::SeqCst);
    let h = hooks_app(db, r.url.clone(), 10).await;
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    let d = h.deliveries("?status=pending").await;
    assert_eq!(
        (d[0]["attempts"].clone(), d[0]["last_http_status"].clone()),
        (json!(1), json!(500))
    );
    assert_eq!(
        h.dispatch().await,
        0,
        "not due before the first delay (1 min ± 10 %)"
    );
    h.clock.advance(Span::seconds(50));
    assert_eq!(h.dispatch().await, 0, "still not due at 50 s");
    r.status.store(200, Ordering::SeqCst);
    h.clock.advance(Span::seconds(20));
    assert_eq!(h.dispatch().await, 1);
    let got = r.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id, "receivers dedupe on webhook-id");
    assert_eq!(h.deliveries("?status=delivered").await.len(), 1);
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_the_event() {
    let parked = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = parked.local_addr().expect("addr").port();
    drop(parked);
    let h = hooks_app(Db::Sqlite, format!("http://127.0.0.1:{port}/hooks"), 10).await;
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    let d = h.deliveries("?status=pending").await;
    assert_eq!(d[0]["last_error"], "connection failed");
    assert!(d[0]["last_http_status"].is_null());
    let r = receiver_on(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind"),
    )
    .await;
    h.clock.advance(Span::minutes(2));
    assert_eq!(h.dispatch().await, 1);
    assert_eq!(r.got().len(), 1);
    assert!(r.got()[0].signature_ok);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let r = receiver().await;
    r.delay_ms.store(2_500, Ordering::SeqCst);
    let h = hooks_app(Db::Sqlite, r.url.clone(), 1).await;
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    let d = h.deliveries("?status=pending").await;
    assert_eq!(
        (d[0]["attempts"].clone(), d[0]["last_error"].clone()),
        (json!(1), json!("timed out"))
    );
}

async fn after_the_last_retry_a_delivery_is_dead_until_retried_by_hand(db: Db) {
    let r = receiver().await;
    r.status.store(503, Ordering::SeqCst);
    let h = hooks_app(db, r.url.clone(), 10).await;
    h.canceled_payment().await;
    for _ in 0..6 {
        assert_eq!(h.dispatch().await, 1);
        h.clock.advance(Span::hours(7));
    }
    assert_eq!(h.dispatch().await, 0, "dead: no 7th attempt");
    assert_eq!(
        r.got().len(),
        6,
        "1 attempt + 5 retries (1 min, 5 min, 15 min, 1 h, 6 h)"
    );
    let dead = h.deliveries("?status=dead").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 6);
    let seq = dead[0]["id"].as_i64().expect("id");
    r.status.store(200, Ordering::SeqCst);
    let keyed = |key: &'static str| {
        h.app
            .client
            .post(h.app.url(&format!("/v1/webhooks/deliveries/{seq}/retry")))
            .bearer_auth(API_KEY)
            .header("idempotency-key", key)
            .send()
    };
    assert_problem(
        keyed("has space").await.expect("bad key"),
        400,
        "invalid_idempotency_key",
    )
    .await;
    let retried = keyed("retry-1").await.expect("retry");
    assert_eq!(retried.status().as_u16(), 200);
    let retried: Value = retried.json().await.expect("json");
    assert_eq!(retried["status"], "pending");
    // The same key replays the first answer instead of 409 delivery_not_dead.
    let replayed = keyed("retry-1").await.expect("replay");
    assert_eq!(replayed.status().as_u16(), 200);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.expect("json"), retried);
    let again = h
        .app
        .post_json(&format!("/v1/webhooks/deliveries/{seq}/retry"), &json!({}))
        .await;
    assert_problem(again, 409, "delivery_not_dead").await;
    assert_eq!(h.dispatch().await, 1);
    assert_eq!(h.deliveries("?status=delivered").await.len(), 1);
    assert_problem(
        h.app
            .post_json("/v1/webhooks/deliveries/999999/retry", &json!({}))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        h.app.get("/v1/webhooks/deliveries?status=lost").await,
        400,
        "invalid_query",
    )
    .await;
}

async fn events_of_one_payment_are_delivered_in_order(db: Db) {
    let r = receiver().await;
    r.status.store(500, Ordering::SeqCst);
    let h = hooks_app(db, r.url.clone(), 10).await;
    // Two events for one payment: processing (Payme create) then canceled (merchant).
    let p = h.app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let pay = h
        .app
        .client
        .post(h.app.url(&format!("/sandbox/payme/{id}/pay")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_eq!(pay.status().as_u16(), 200);
    let other = h.canceled_payment().await;
    assert_eq!(
        h.dispatch().await,
        2,
        "the first event of each payment, not the second of the first"
    );
    let first_round: Vec<String> = r
        .got()
        .iter()
        .map(|g| g.body["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        first_round.contains(&"payment.processing".to_owned()),
        "{first_round:?}"
    );
    assert!(
        !first_round.contains(&"payment.succeeded".to_owned()),
        "{first_round:?}"
    );
    r.status.store(200, Ordering::SeqCst);
    h.clock.advance(Span::minutes(2));
    assert_eq!(h.dispatch().await, 2);
    assert_eq!(h.dispatch().await, 1);
    let order: Vec<String> = r
        .got()
        .iter()
        .filter(|g| g.body["data"]["id"] == id)
        .map(|g| g.body["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        order,
        [
            "payment.processing",
            "payment.processing",
            "payment.succeeded"
        ]
    );
    assert!(r
        .got()
        .iter()
        .any(|g| g.body["data"]["id"] == other.as_str()));
}

async fn a_crash_between_claim_and_send_resends_after_the_lease(db: Db) {
    let r = receiver().await;
    let h = hooks_app(db, r.url.clone(), 10).await;
    h.canceled_payment().await;
    // A dispatcher claims the row and dies before sending.
    let now = h.app.state.now();
    let lease = (now + Span::seconds(60)).timestamp_millis();
    let claimed = h
        .app
        .state
        .store
        .claim_outbox(now, lease, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(h.dispatch().await, 0, "the lease keeps others off");
    h.clock.advance(Span::seconds(61));
    assert_eq!(h.dispatch().await, 1);
    let got = r.got();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].id, claimed[0].event_id,
        "same webhook-id as the lost attempt would have had"
    );
}

#[tokio::test]
async fn the_worker_started_by_serve_delivers_on_its_own() {
    let r = receiver().await;
    let url = r.url.clone();
    let app = spawn_app_with(
        Db::Sqlite,
        move |s| {
            s.webhooks.url = url;
            s.webhooks.poll_interval_ms = 20;
        },
        Overrides::default(),
    )
    .await;
    let p = app.new_payment("click", 10_000).await;
    let id = p["id"].as_str().expect("id");
    app.post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
        .await;
    for _ in 0..200 {
        if !r.got().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.got().len(), 1);
    assert!(r.got()[0].signature_ok);
}

#[tokio::test]
async fn two_dispatchers_on_one_postgres_deliver_each_event_once() {
    let r = receiver().await;
    let (url, _) = fresh_database(Db::Postgres).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut s = test_settings(url.clone());
        s.webhooks.url = r.url.clone();
        s.webhooks.enabled = false;
        apps.push(tolov::startup::Application::build(s).await.expect("app"));
    }
    let (a, b) = (apps[0].state().clone(), apps[1].state().clone());
    // 30 payments, each canceled: 30 messages.
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", apps[0].port());
    let token = apps[0].shutdown_token();
    let first = apps.remove(0);
    let server = tokio::spawn(first.run_until_stopped());
    for _ in 0..30 {
        let p: Value = client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(API_KEY)
            .json(&payment_body("payme", 10_000))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let id = p["id"].as_str().expect("id");
        client
            .post(format!("{base}/v1/payments/{id}/cancel"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("cancel");
    }
    let (mut sent_a, mut sent_b) = (0, 0);
    loop {
        let (x, y) = tokio::join!(dispatch_once(&a), dispatch_once(&b));
        let (x, y) = (x.expect("a"), y.expect("b"));
        sent_a += x;
        sent_b += y;
        if x == 0 && y == 0 {
            break;
        }
    }
    let got = r.got();
    let mut ids: Vec<String> = got.iter().map(|g| g.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (got.len(), ids.len(), sent_a + sent_b),
        (30, 30, 30),
        "each event exactly once ({sent_a} + {sent_b})"
    );
    assert!(got.iter().all(|g| g.signature_ok));
    token.cancel();
    let _ = server.await;
}

/// Reads `/v1/events` page by page from `after` (`None`: the start) until `done` holds for what
/// was read or 10 s pass; returns every event read, in order, and the last cursor.
async fn read_events(
    app: &TestApp,
    mut after: Option<String>,
    limit: u32,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Option<String>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let path = match &after {
            Some(c) => format!("/v1/events?limit={limit}&after={c}"),
            None => format!("/v1/events?limit={limit}"),
        };
        let page = app.get_json(&path).await;
        let data = page["data"].as_array().expect("data").clone();
        if let Some(c) = page["next_after"].as_str() {
            after = Some(c.to_owned());
        }
        let more = page["has_more"].as_bool().expect("has_more");
        seen.extend(data);
        if done(&seen) || (!more && tokio::time::Instant::now() > deadline) {
            return (seen, after);
        }
        if !more {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Paging through `/v1/events` in small pages gives every event once, oldest first, and a
/// cursor that is not one of ours is a 400, not an empty page.
async fn events_page_through_every_event_once(db: Db) {
    let app = spawn_app_on(db).await;
    let mut payments = Vec::new();
    for _ in 0..3 {
        let p = app.new_payment("payme", 10_000).await;
        let id = p["id"].as_str().expect("id").to_owned();
        let res = app
            .post_json(&format!("/v1/payments/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(res.status(), 200);
        payments.push(id);
    }
    // Each payment: payment.created, then payment.canceled.
    let (seen, _) = read_events(&app, None, 2, |s| s.len() >= 6).await;
    let ids = event_ids(&seen);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (6, 6), "{ids:?}");
    for p in &payments {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|e| e["payment_id"] == p.as_str())
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(kinds, ["payment.created", "payment.canceled"]);
    }
    for bad in ["12x", "-1.5", "1.", "x.y", "%27%20OR%201%3D1--"] {
        let res = app.get(&format!("/v1/events?after={bad}")).await;
        assert_problem(res, 400, "invalid_query").await;
    }
}

on_both!(
    events_page_through_every_event_once,
    a_status_change_is_delivered_signed_with_its_event_id,
    a_failed_delivery_is_retried_on_schedule_with_the_same_id,
    after_the_last_retry_a_delivery_is_dead_until_retried_by_hand,
    events_of_one_payment_are_delivered_in_order,
    a_crash_between_claim_and_send_resends_after_the_lease,
    a_receiver_s_retry_after_slows_the_schedule_within_twice_its_delay,
);

/// A receiver answering 429 with `Retry-After` is given that long, within [delay, 2 × delay]
/// of the schedule's delay: 90 s asked after the 1st failure (60 s) is kept, a day asked after
/// the 2nd (300 s) becomes 600 s.
async fn a_receiver_s_retry_after_slows_the_schedule_within_twice_its_delay(db: Db) {
    let r = receiver().await;
    r.status.store(429, Ordering::SeqCst);
    if let Ok(mut v) = r.retry_after.lock() {
        *v = Some("90".to_owned());
    }
    let h = hooks_app(db, r.url.clone(), 10).await;
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    h.clock.advance(Span::seconds(70));
    assert_eq!(
        h.dispatch().await,
        0,
        "the schedule alone would retry by 66 s"
    );
    h.clock.advance(Span::seconds(30));
    if let Ok(mut v) = r.retry_after.lock() {
        *v = Some("86400".to_owned());
    }
    assert_eq!(h.dispatch().await, 1, "due by 99 s");
    h.clock.advance(Span::seconds(599));
    assert_eq!(h.dispatch().await, 0, "not before 600 s");
    h.clock.advance(Span::seconds(67));
    r.status.store(200, Ordering::SeqCst);
    assert_eq!(h.dispatch().await, 1, "due by 660 s, not a day later");
    assert_eq!(h.deliveries("?status=delivered").await.len(), 1);
    assert_eq!(r.got().len(), 3);
}

/// `webhooks.retry_schedule_secs` is the schedule: one retry after 5 s, then dead.
#[tokio::test]
async fn the_retry_schedule_is_the_configured_one() {
    let r = receiver().await;
    r.status.store(500, Ordering::SeqCst);
    let clock = Arc::new(ManualClock::default());
    let url = r.url.clone();
    let app = spawn_app_with(
        Db::Sqlite,
        move |s| {
            s.webhooks.url = url;
            s.webhooks.enabled = false;
            s.webhooks.retry_schedule_secs = vec![5];
        },
        Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        },
    )
    .await;
    let h = Hooks { app, clock };
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    h.clock.advance(Span::seconds(4));
    assert_eq!(h.dispatch().await, 0);
    h.clock.advance(Span::milliseconds(1_600));
    assert_eq!(h.dispatch().await, 1);
    let dead = h.deliveries("?status=dead").await;
    assert_eq!(dead.len(), 1, "the schedule is used up after one retry");
    assert_eq!(dead[0]["attempts"], 2);
}

/// PostgreSQL hands out event numbers when a change writes its event, not when it commits, so
/// a change that commits late has a number behind events already listed. `/v1/events` holds
/// newer events back until it has committed, so a poller following the cursor never skips it.
#[tokio::test]
async fn an_event_that_commits_late_is_not_skipped_by_the_cursor() {
    use sqlx::Connection;
    let app = spawn_app_on(Db::Postgres).await;
    let first = app.new_payment("payme", 10_000).await;
    let first = first["id"].as_str().expect("id").to_owned();
    // A change of `first` that has written its event but not committed yet.
    let mut slow = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut slow)
        .await
        .expect("begin");
    sqlx::query(
        "INSERT INTO payment_events (id, payment_id, kind, actor, data, created_at) \
         VALUES ('evt_late', $1, 'payment.test', 'system', '{}', 0)",
    )
    .bind(&first)
    .execute(&mut slow)
    .await
    .expect("insert");
    // A later change commits first.
    let second = app.new_payment("payme", 10_000).await;
    let second = second["id"].as_str().expect("id").to_owned();
    let (before, cursor) = read_events(&app, None, 100, |s| {
        s.iter()
            .any(|e| e["payment_id"] == first.as_str() && e["type"] == "payment.created")
    })
    .await;
    assert!(!event_ids(&before).contains(&"evt_late".to_owned()));
    sqlx::query("COMMIT")
        .execute(&mut slow)
        .await
        .expect("commit");
    let created_second = |s: &[Value]| {
        s.iter()
            .any(|e| e["payment_id"] == second.as_str() && e["type"] == "payment.created")
    };
    let (after, _) = read_events(&app, cursor, 100, |s| {
        s.iter().any(|e| e["id"] == "evt_late")
    })
    .await;
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    let ids = event_ids(&all);
    assert_eq!(
        ids.iter().filter(|i| *i == "evt_late").count(),
        1,
        "the late event is listed once: {ids:?}"
    );
    assert!(created_second(&all), "{ids:?}");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
}

/// A receiver that answers a redirect has not taken the event: the attempt fails with that
/// status and is retried on schedule, and the signed body is never sent where the redirect
/// points (a 301/302/303 would turn the POST into a bodiless GET that a catch-all route answers
/// 200; a 307/308 would post it to any host the `Location` names).
#[tokio::test]
async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
    for code in [301u16, 302, 303, 307, 308] {
        let followed = Arc::new(AtomicU64::new(0));
        let hit = followed.clone();
        let app = axum::Router::new()
            .route(
                "/hooks",
                post(move || async move {
                    (
                        StatusCode::from_u16(code).expect("status"),
                        [("location", "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::any(move || {
                    let hit = hit.clone();
                    async move {
                        hit.fetch_add(1, Ordering::SeqCst);
                        StatusCode::OK
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let h = hooks_app(Db::Sqlite, format!("http://127.0.0.1:{port}/hooks"), 10).await;
        h.canceled_payment().await;
        assert_eq!(h.dispatch().await, 1);
        assert_eq!(followed.load(Ordering::SeqCst), 0, "{code} was followed");
        let d = h.deliveries("?status=pending").await;
        assert_eq!(
            (
                d.len(),
                d[0]["attempts"].clone(),
                d[0]["last_http_status"].clone()
            ),
            (1, json!(1), json!(code)),
            "{code}: {d:?}"
        );
        assert!(h.deliveries("?status=delivered").await.is_empty());
    }
}

/// Delivered messages go after `webhooks.retention_days` (30 by default); the events stay in
/// the event list, and a message still undelivered stays however old it is.
#[tokio::test]
async fn delivered_messages_are_deleted_after_the_retention_period() {
    let r = receiver().await;
    let h = hooks_app(Db::Sqlite, r.url.clone(), 10).await;
    let delivered = h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1);
    r.status.store(500, Ordering::SeqCst);
    h.canceled_payment().await;
    assert_eq!(h.dispatch().await, 1, "this one fails and waits");
    h.clock.advance(Span::days(29));
    assert_eq!(prune_once(&h.app.state).await.expect("prune"), 0, "not yet");
    h.clock.advance(Span::days(2));
    assert_eq!(prune_once(&h.app.state).await.expect("prune"), 1);
    assert!(h.deliveries("?status=delivered").await.is_empty());
    assert_eq!(h.deliveries("?status=pending").await.len(), 1);
    let events = h
        .app
        .get_json(&format!("/v1/payments/{delivered}/events"))
        .await;
    assert_eq!(events["data"].as_array().map(Vec::len), Some(2), "{events}");
}
