//! Expiry and reconciliation workers under a controlled clock (no sleeping through minutes),
//! against the Payme rules, the Click Merchant API simulator and a mock Click.

use std::sync::Arc;

use chrono::Duration as Span;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tolov::startup::Overrides;
use tolov::state::ManualClock;
use tolov::workers::expiry::{expire_once, ExpiryReport};
use tolov::workers::reconcile::reconcile_once;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

struct Clocked {
    app: TestApp,
    clock: Arc<ManualClock>,
}

async fn clocked(configure: impl FnOnce(&mut tolov::config::Settings)) -> Clocked {
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    let app = spawn_app_with(
        Db::Sqlite,
        |s| {
            s.workers.expiry_enabled = false;
            s.workers.reconcile_enabled = false;
            s.webhooks.enabled = false;
            configure(s);
        },
        overrides,
    )
    .await;
    Clocked { app, clock }
}

impl Clocked {
    /// A database that refuses every change of payment `id` (a trigger, dropped by
    /// `DROP TRIGGER refuse_one` on the returned connection).
    async fn refuse_updates_of(&self, id: &str) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&self.app.database_url)
            .await
            .expect("connect");
        sqlx::query(&format!(
            "CREATE TRIGGER refuse_one BEFORE UPDATE ON payments WHEN OLD.id = '{id}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ))
        .execute(&mut db)
        .await
        .expect("trigger");
        db
    }

    async fn status(&self, id: &str) -> String {
        self.app.get_json(&format!("/v1/payments/{id}")).await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    async fn last_event(&self, id: &str) -> Value {
        let events = self
            .app
            .get_json(&format!("/v1/payments/{id}/events"))
            .await;
        events["data"]
            .as_array()
            .and_then(|e| e.last())
            .cloned()
            .expect("event")
    }

    /// Click Prepare only (the payer has not confirmed yet): the payment is processing.
    /// One JSON-RPC call to `/v1/payme` with the sandbox key.
    async fn payme(&self, call: Value) -> Value {
        let auth = format!("Basic {}", base64_encode("Paycom:sandbox-payme-key"));
        self.app
            .client
            .post(self.app.url("/v1/payme"))
            .header("authorization", &auth)
            .json(&call)
            .send()
            .await
            .expect("rpc")
            .json()
            .await
            .expect("json")
    }

    async fn click_prepare(&self, id: &str) -> i64 {
        let answer = self.click_call(id, None, "0").await;
        assert_eq!(answer["error"], 0, "{answer}");
        answer["merchant_prepare_id"]
            .as_i64()
            .expect("merchant_prepare_id")
    }

    /// Click's Complete with `error=0` ("debited") for the attempt `click_prepare` made.
    async fn click_complete(&self, id: &str, merchant_prepare_id: i64) -> Value {
        self.click_call(id, Some(merchant_prepare_id), "0").await
    }

    /// One signed SHOP-API call for click_trans_id 5550001: Prepare without a prepare id,
    /// Complete with one.
    async fn click_call(&self, id: &str, prepare_id: Option<i64>, error: &str) -> Value {
        self.click_call_as("5550001", id, prepare_id, error).await
    }

    /// [`Self::click_call`] for another Click attempt (`click_trans_id`) of the payment.
    async fn click_call_as(
        &self,
        click_trans_id: &str,
        id: &str,
        prepare_id: Option<i64>,
        error: &str,
    ) -> Value {
        let sign_time = "2026-11-23 10:00:00";
        let (action, prepare_id) = match prepare_id {
            Some(n) => ("1", n.to_string()),
            None => ("0", String::new()),
        };
        let sign = hex::encode(Md5::digest(format!(
            "{click_trans_id}10001sandbox-click-secret{id}{prepare_id}1500.00{action}{sign_time}"
        )));
        let mut form = vec![
            ("click_trans_id", click_trans_id),
            ("service_id", "10001"),
            ("click_paydoc_id", "77"),
            ("merchant_trans_id", id),
            ("amount", "1500.00"),
            ("action", action),
            ("error", error),
            ("error_note", "Success"),
            ("sign_time", sign_time),
            ("sign_string", &sign),
        ];
        if action == "1" {
            form.push(("merchant_prepare_id", &prepare_id));
        }
        let endpoint = if action == "1" { "complete" } else { "prepare" };
        self.app
            .client
            .post(self.app.url(&format!("/v1/click/{endpoint}")))
            .form(&form)
            .send()
            .await
            .expect("click")
            .json()
            .await
            .expect("json")
    }

    async fn attempt_states(&self, id: &str) -> Vec<String> {
        self.app
            .state
            .store
            .list_transactions(&tolov::domain::PaymentId::parse(id).expect("payment id"))
            .await
            .expect("transactions")
            .into_iter()
            .map(|t| t.state)
            .collect()
    }
}

#[tokio::test]
async fn an_unpaid_payment_expires_after_its_deadline_only() {
    let c = clocked(|_| {}).await;
    let p = c.app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    c.clock.advance(Span::minutes(29));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport::default()
    );
    assert_eq!(c.status(id).await, "pending");
    c.clock.advance(Span::minutes(2));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            ..Default::default()
        }
    );
    assert_eq!(c.status(id).await, "expired");
    let e = c.last_event(id).await;
    assert_eq!(
        (e["type"].clone(), e["actor"].clone()),
        (json!("payment.expired"), json!("system"))
    );
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport::default(),
        "once"
    );
    let deliveries = c.app.get_json("/v1/webhooks/deliveries").await;
    assert_eq!(
        deliveries["data"][0]["event_type"], "payment.expired",
        "the merchant is told"
    );
}

/// The database refuses the change of one payment (a trigger stands in for a broken row or a
/// constraint): the pass logs and counts it and goes on to the others; the next pass, with the
/// database mended, expires it too.
#[tokio::test]
async fn one_payment_the_database_refuses_does_not_stop_the_expiry_pass() {
    let c = clocked(|_| {}).await;
    let refused = c.app.new_payment("epay", 10_000).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    c.clock.advance(Span::seconds(1));
    let other = c.app.new_payment("epay", 10_000).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut db = c.refuse_updates_of(&refused).await;
    c.clock.advance(Span::minutes(31));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            failed: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        (c.status(&refused).await, c.status(&other).await),
        ("pending".to_owned(), "expired".to_owned())
    );
    sqlx::query("DROP TRIGGER refuse_one")
        .execute(&mut db)
        .await
        .expect("drop");
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            ..Default::default()
        }
    );
    assert_eq!(c.status(&refused).await, "expired");
}

#[tokio::test]
async fn a_live_payme_transaction_keeps_its_payment_until_payme_s_12_hours() {
    let c = clocked(|_| {}).await;
    let p = c.app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let time = c.app.state.now().timestamp_millis();
    let answer = c
        .payme(json!({"method": "CreateTransaction", "id": 1,
            "params": {"id": "a".repeat(24), "time": time, "amount": 150_000, "account": {"order_id": id}}}))
        .await;
    assert_eq!(answer["result"]["state"], 1, "{answer}");
    c.clock.advance(Span::hours(2));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            kept: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        c.status(id).await,
        "processing",
        "Payme may still perform it"
    );
    c.clock.advance(Span::hours(10));
    let before = c.app.state.now().timestamp_millis();
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            expired: 1,
            ..Default::default()
        }
    );
    let after = c.app.state.now().timestamp_millis();
    assert_eq!(c.status(id).await, "expired");
    // §1.7: the timed-out transaction is state -1 with reason 4 in what Payme reads back.
    let check = json!({"method": "CheckTransaction", "id": 3, "params": {"id": "a".repeat(24)}});
    let answer = c.payme(check.clone()).await;
    assert_eq!(answer["result"]["state"], -1, "{answer}");
    assert_eq!(answer["result"]["reason"], 4, "{answer}");
    let expired_at = answer["result"]["cancel_time"]
        .as_i64()
        .expect("cancel_time");
    assert!((before..=after).contains(&expired_at), "{answer}");
    assert_eq!(answer["result"]["perform_time"], 0, "{answer}");
    let statement = c
        .payme(json!({"method": "GetStatement", "id": 4,
            "params": {"from": time - 1, "to": time + 1}}))
        .await;
    assert_eq!(
        statement["result"]["transactions"][0]["state"], -1,
        "{statement}"
    );
    assert_eq!(
        statement["result"]["transactions"][0]["reason"], 4,
        "{statement}"
    );
    // Payme's late Perform finds the transaction timed out, and changes nothing.
    c.clock.advance(Span::minutes(5));
    let answer = c
        .payme(json!({"method": "PerformTransaction", "id": 2, "params": {"id": "a".repeat(24)}}))
        .await;
    assert_eq!(answer["error"]["code"], -31008, "{answer}");
    let again = c.payme(check).await;
    assert_eq!(again["result"]["state"], -1, "{again}");
    assert_eq!(again["result"]["cancel_time"], expired_at, "{again}");
}

/// Expiry and reconciliation decide from the payment as they read it, then ask the provider
/// (which takes time). A decision that the payment was abandoned (expire it, or reopen it) is
/// stale once another writer changed the payment meanwhile, here a Payme CreateTransaction
/// that made it processing with a live transaction: it must not be applied to that.
#[tokio::test]
async fn an_expiry_decided_before_a_payme_create_is_not_applied_after_it() {
    use tolov::domain::{Actor, PaymentId, PaymentStatus};
    use tolov::lifecycle::{settle_with_provider, LifecycleError};
    let c = clocked(|_| {}).await;
    let p = c.app.new_payment("payme", 150_000).await;
    let id = PaymentId::parse(p["id"].as_str().expect("id")).expect("payment id");
    let read_by_the_worker = c
        .app
        .state
        .store
        .get_payment(&id)
        .await
        .expect("read")
        .expect("payment");
    let answer = c
        .payme(json!({"method": "CreateTransaction", "id": 1,
            "params": {"id": "b".repeat(24), "time": c.app.state.now().timestamp_millis(),
                "amount": 150_000, "account": {"order_id": id.as_str()}}}))
        .await;
    assert_eq!(answer["result"]["state"], 1, "{answer}");
    let payme = c
        .app
        .state
        .providers
        .get(tolov::domain::ProviderKind::Payme);
    for to in [PaymentStatus::Expired, PaymentStatus::Pending] {
        let settled = settle_with_provider(
            c.app.state.store.as_ref(),
            payme.as_deref(),
            &read_by_the_worker,
            to,
            Actor::System,
            Some("decided on an old read".into()),
            c.app.state.now(),
        )
        .await;
        assert!(
            matches!(settled, Err(LifecycleError::Moved)),
            "{to}: {settled:?}"
        );
    }
    assert_eq!(c.status(id.as_str()).await, "processing");
    let check = c
        .payme(json!({"method": "CheckTransaction", "id": 2, "params": {"id": "b".repeat(24)}}))
        .await;
    assert_eq!(check["result"]["state"], 1, "{check}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn a_prepared_click_payment_is_asked_about_before_it_expires() {
    // The simulator says "processing" for a prepared payment: it is kept.
    let c = clocked(|_| {}).await;
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id");
    c.click_prepare(id).await;
    assert_eq!(c.status(id).await, "processing");
    c.clock.advance(Span::minutes(31));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            kept: 1,
            ..Default::default()
        }
    );
    assert_eq!(c.status(id).await, "processing");
}

async fn click_says(status: i64) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/payment/status_by_mti/10001/pay_[0-9A-Z]{26}/\d{4}-\d{2}-\d{2}$",
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"error_code": 0, "payment_id": 5550001})),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/payment/status/10001/5550001$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"error_code": 0, "payment_id": 5550001, "payment_status": status}),
        ))
        .mount(&mock)
        .await;
    mock
}

/// Reconciliation took Click's word that the payment succeeded; the attempt is confirmed with
/// it, so the merchant can refund it and Click's own late Complete hears "already paid" (-4),
/// not "cancelled" (-9, which would make Click return the money of a paid order).
#[tokio::test]
async fn reconciliation_applies_the_provider_s_success() {
    let mock = click_says(2).await;
    Mock::given(method("DELETE"))
        .and(path_regex(r"^/payment/reversal/10001/5550001$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"error_code": 0, "payment_id": 5550001})),
        )
        .mount(&mock)
        .await;
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let prepare_id = c.click_prepare(id).await;
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.checked, 0, "not stuck yet");
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.succeeded), (1, 1));
    assert_eq!(c.status(id).await, "succeeded");
    let e = c.last_event(id).await;
    assert_eq!(
        (e["type"].clone(), e["actor"].clone(), e["reason"].clone()),
        (
            json!("payment.succeeded"),
            json!("reconciliation"),
            json!("reconciled with click")
        )
    );
    assert_eq!(c.attempt_states(id).await, ["confirmed"]);
    let late = c.click_complete(id, prepare_id).await;
    assert_eq!(late["error"], -4, "{late}");
    assert_eq!(c.status(id).await, "succeeded");
    let refund = c
        .app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(refund.status().as_u16(), 201, "{:?}", refund.text().await);
    assert_eq!(c.status(id).await, "refunded");
}

/// As for expiry: a payment whose change the database refuses is logged and counted, and the
/// pass settles the others.
#[tokio::test]
async fn one_payment_the_database_refuses_does_not_stop_the_reconciliation_pass() {
    let mock = click_says(2).await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/payment/status/10001/5550002$"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"error_code": 0, "payment_id": 5550002, "payment_status": 2}),
            ),
        )
        .mount(&mock)
        .await;
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    let refused = c.app.new_payment("click", 150_000).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    c.click_prepare(&refused).await;
    c.clock.advance(Span::seconds(1));
    let other = c.app.new_payment("click", 150_000).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let answer = c.click_call_as("5550002", &other, None, "0").await;
    assert_eq!(answer["error"], 0, "{answer}");
    c.refuse_updates_of(&refused).await;
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.succeeded, report.failed), (2, 1, 1));
    assert_eq!(
        (c.status(&refused).await, c.status(&other).await),
        ("processing".to_owned(), "succeeded".to_owned())
    );
}

/// Reconciliation took Click's word that the attempt failed and reopened the payment; the
/// attempt is cancelled with it, so it no longer counts as live.
#[tokio::test]
async fn reconciliation_reopens_a_failed_attempt_and_leaves_unknowns_alone() {
    let mock = click_says(-1).await;
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let prepare_id = c.click_prepare(id).await;
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.reopened, 1);
    assert_eq!(c.status(id).await, "pending");
    assert_eq!(c.attempt_states(id).await, ["cancelled"]);
    let late = c.click_complete(id, prepare_id).await;
    assert_eq!(late["error"], -9, "{late}");
    assert_eq!(c.status(id).await, "pending");

    // Click unreachable: nothing changes.
    let down = clocked(|s| s.click.api_url = "http://127.0.0.1:9".into()).await;
    let q = down.app.new_payment("click", 150_000).await;
    let qid = q["id"].as_str().expect("id");
    down.click_prepare(qid).await;
    down.clock.advance(Span::minutes(16));
    let before = down.app.snapshot().await;
    let report = reconcile_once(&down.app.state, down.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.unavailable), (1, 1));
    assert_eq!(down.app.snapshot().await, before);
}

/// A Click payment with two open attempts (click_trans_id 5550001 and 5550002, the payer
/// started twice) whose `payment/status` answers are `first` and `second`, 16 minutes on, so
/// reconciliation looks at it. Returns the payment id and the first Prepare's answer.
async fn two_open_click_attempts(
    first: ResponseTemplate,
    second: ResponseTemplate,
) -> (Clocked, String, Value, MockServer) {
    let mock = MockServer::start().await;
    for (click_id, answer) in [("5550001", first), ("5550002", second)] {
        Mock::given(method("GET"))
            .and(path(format!("/payment/status/10001/{click_id}")))
            .respond_with(answer)
            .mount(&mock)
            .await;
    }
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let mut prepared = Vec::new();
    for click_id in ["5550001", "5550002"] {
        let a = c.click_call_as(click_id, &id, None, "0").await;
        assert_eq!(a["error"], 0, "{a}");
        prepared.push(a);
    }
    c.clock.advance(Span::minutes(16));
    (c, id, prepared.swap_remove(0), mock)
}

fn click_status(payment_id: i64, status: i64) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"error_code": 0, "payment_id": payment_id, "payment_status": status}))
}

/// Click debited the first of two open attempts, but its Complete was lost. Reconciliation asks
/// Click about each attempt by its own id, so the payment and the attempt Click paid are
/// settled together, whatever the second says.
#[tokio::test]
async fn reconciliation_settles_the_one_of_several_click_attempts_click_paid() {
    let (c, id, first, _mock) =
        two_open_click_attempts(click_status(5550001, 2), click_status(5550002, 0)).await;
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.succeeded), (1, 1));
    assert_eq!(c.status(&id).await, "succeeded");
    let mut states = c.attempt_states(&id).await;
    states.sort();
    assert_eq!(
        states,
        ["confirmed", "prepared"],
        "the paid attempt is the confirmed one"
    );
    let prepare_id = first["merchant_prepare_id"].as_i64().expect("prepare id");
    let late = c.click_call_as("5550001", &id, Some(prepare_id), "0").await;
    assert_eq!(
        late["error"], -4,
        "Click's late Complete hears 'already paid': {late}"
    );
}

/// Click paid the second of two open attempts; reconciliation heard so, but Click did not
/// answer when asked again which attempt to confirm, so the payment is succeeded with no
/// attempt confirmed. Click's late Complete for the paid attempt must then confirm it ("already
/// paid", -4: Click keeps the money) instead of cancelling it (-9: Click would return the money
/// of an order recorded as paid).
#[tokio::test]
async fn a_late_complete_confirms_the_attempt_reconciliation_could_not_name() {
    let (c, id, _, mock) =
        two_open_click_attempts(click_status(5550001, 0), ResponseTemplate::new(502)).await;
    // The first question about 5550002 is answered "successful"; the second is not answered.
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/5550002"))
        .respond_with(click_status(5550002, 2))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(c.status(&id).await, "succeeded");
    let prepared = c
        .app
        .transactions(&id)
        .await
        .into_iter()
        .find(|t| t.external_id == "5550002")
        .expect("attempt");
    let prepare_id = prepared.data["merchant_prepare_id"].as_i64().expect("id");
    let late = c.click_call_as("5550002", &id, Some(prepare_id), "0").await;
    assert_eq!(late["error"], -4, "{late}");
    assert_eq!(c.status(&id).await, "succeeded");
    let mut states = c.attempt_states(&id).await;
    states.sort();
    assert_eq!(states, ["confirmed", "prepared"]);
}

/// Click cannot say what became of one of two open attempts: nothing is decided, even though
/// the other one failed.
#[tokio::test]
async fn reconciliation_decides_nothing_while_an_open_click_attempt_is_unknown() {
    let (c, _id, _, _mock) =
        two_open_click_attempts(click_status(5550001, -1), ResponseTemplate::new(502)).await;
    let before = c.app.snapshot().await;
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!((report.checked, report.unavailable), (1, 1));
    assert_eq!(c.app.snapshot().await, before);
}

#[test]
fn reconcile_runs_once_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tolov"))
        .args(["reconcile", "--since", "2h"])
        .env(
            "TOLOV__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("r.db").display()),
        )
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ReconcileReport { checked: 0"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tolov"))
        .args(["reconcile", "--since", "soon"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since must look like"));
}

/// `n` Payme payments, each with a live Payme transaction (so expiry keeps them for 12 h and
/// reconciliation, which cannot ask Payme, leaves them as they are).
async fn live_payme_payments(c: &Clocked, n: u32) {
    for i in 0..n {
        let p = c.app.new_payment("payme", 150_000).await;
        let answer = c
            .payme(json!({"method": "CreateTransaction", "id": 1, "params": {
                "id": format!("{i:024x}"), "time": c.app.state.now().timestamp_millis(),
                "amount": 150_000, "account": {"order_id": p["id"]}}}))
            .await;
        assert_eq!(answer["result"]["state"], 1, "{answer}");
    }
}

/// More payments to keep than one page (100) must not hide the ones behind them.
#[tokio::test]
async fn expiry_reaches_payments_behind_a_full_page_of_kept_ones() {
    let c = clocked(|_| {}).await;
    live_payme_payments(&c, 100).await;
    c.clock.advance(Span::seconds(1));
    let p = c.app.new_payment("epay", 10_000).await;
    let id = p["id"].as_str().expect("id");
    c.clock.advance(Span::minutes(31));
    assert_eq!(
        expire_once(&c.app.state).await.expect("pass"),
        ExpiryReport {
            kept: 100,
            expired: 1,
            ..Default::default()
        }
    );
    assert_eq!(c.status(id).await, "expired");
}

#[tokio::test]
async fn reconciliation_reaches_payments_behind_a_full_page_of_unchanged_ones() {
    let mock = click_says(2).await;
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    live_payme_payments(&c, 100).await;
    c.clock.advance(Span::seconds(1));
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id");
    c.click_prepare(id).await;
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(
        (report.checked, report.unchanged, report.succeeded),
        (101, 100, 1)
    );
    assert_eq!(c.status(id).await, "succeeded");
}

/// A Click payment paid through Prepare/Complete whose refund got no answer from Click (the
/// reversal answered 5xx): it stays pending, holding the amount, until reconciliation asks
/// Click what became of it. `click_status` is what `payment/status` then says.
async fn unanswered_click_refund(click_status: i64) -> (Clocked, String, MockServer) {
    let mock = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path_regex(r"^/payment/reversal/10001/5550001$"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/payment/status/10001/5550001$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"error_code": 0, "payment_id": 5550001, "payment_status": click_status}),
        ))
        .mount(&mock)
        .await;
    let uri = mock.uri();
    let c = clocked(move |s| s.click.api_url = uri).await;
    let p = c.app.new_payment("click", 150_000).await;
    let id = p["id"].as_str().expect("id").to_owned();
    let prepare_id = c.click_prepare(&id).await;
    assert_eq!(c.click_complete(&id, prepare_id).await["error"], 0);
    let refund = c
        .app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(refund.status().as_u16(), 502);
    assert_eq!(c.status(&id).await, "succeeded");
    (c, id, mock)
}

async fn refund_states(c: &Clocked, id: &str) -> Vec<String> {
    c.app
        .state
        .store
        .list_refunds(&tolov::domain::PaymentId::parse(id).expect("payment id"))
        .await
        .expect("refunds")
        .into_iter()
        .map(|r| r.status.as_str().to_owned())
        .collect()
}

/// While Click still reports the paid payment as being processed or prepared (`payment_status`
/// 1 or 0), an unanswered reversal can be neither: the refund stays pending, holding its
/// amount, and the payment stays paid.
#[tokio::test]
async fn reconciliation_leaves_a_refund_pending_while_click_s_status_cannot_tell() {
    for click_status in [0, 1] {
        let (c, id, _mock) = unanswered_click_refund(click_status).await;
        c.clock.advance(Span::minutes(16));
        let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
            .await
            .expect("pass");
        assert_eq!(report.refunds_settled, 0, "payment_status {click_status}");
        assert_eq!(refund_states(&c, &id).await, ["pending"]);
        assert_eq!(c.status(&id).await, "succeeded");
    }
}

#[tokio::test]
async fn reconciliation_settles_a_refund_click_did_reverse() {
    let (c, id, _mock) = unanswered_click_refund(-9).await;
    // The pending refund holds the whole amount: nothing is left to refund, whatever is asked.
    let full = c
        .app
        .post_json(
            &format!("/v1/payments/{id}/refunds"),
            &json!({"amount": 150_000}),
        )
        .await;
    assert_problem(full, 422, "refund_exceeds_payment").await;
    let since = |c: &Clocked| c.app.state.now() - Span::minutes(15);
    let report = reconcile_once(&c.app.state, since(&c)).await.expect("pass");
    assert_eq!(report.refunds_settled, 0, "not stale yet");
    assert_eq!(refund_states(&c, &id).await, ["pending"]);
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, since(&c)).await.expect("pass");
    assert_eq!(report.refunds_settled, 1);
    assert_eq!(refund_states(&c, &id).await, ["succeeded"]);
    assert_eq!(c.status(&id).await, "refunded");
    let actors = event_actors(&c, &id).await;
    assert_eq!(
        actors[actors.len() - 2..],
        [
            ("payment.refunded".to_owned(), "reconciliation".to_owned()),
            ("refund.succeeded".to_owned(), "reconciliation".to_owned())
        ],
        "reconciliation settled it, not the merchant"
    );
    let report = reconcile_once(&c.app.state, since(&c)).await.expect("pass");
    assert_eq!(report.refunds_settled, 0, "once");
}

/// (type, actor) of the payment's events, oldest first.
async fn event_actors(c: &Clocked, id: &str) -> Vec<(String, String)> {
    c.app.get_json(&format!("/v1/payments/{id}/events")).await["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["actor"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reconciliation_fails_a_refund_click_never_reversed() {
    let (c, id, _mock) = unanswered_click_refund(2).await;
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.refunds_failed, 1);
    assert_eq!(refund_states(&c, &id).await, ["failed"]);
    assert_eq!(c.status(&id).await, "succeeded");
    assert_eq!(
        event_actors(&c, &id).await.last(),
        Some(&("refund.failed".to_owned(), "reconciliation".to_owned()))
    );
    // The amount is free again: the merchant can ask once more (Click still answers 5xx here).
    let again = c
        .app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(again.status().as_u16(), 502);
}

/// Same unnamed settlement, and the refund's reversal goes unanswered: the attempt Click named
/// as paid is recorded confirmed before the reversal is asked for, so reconciliation can later
/// ask Click about it and settle the refund, instead of leaving it pending (holding the whole
/// amount) for good.
#[tokio::test]
async fn an_unanswered_reversal_of_an_attempt_reconciliation_could_not_name_is_settled_later() {
    let (c, id, _, mock) =
        two_open_click_attempts(click_status(5550001, 0), click_status(5550002, 2)).await;
    // 5550002: "successful", no answer (reconciliation); "successful" (the refund asks which
    // attempt paid); then reversed (-9).
    for (priority, answer) in [
        (1, click_status(5550002, 2)),
        (2, ResponseTemplate::new(502)),
        (3, click_status(5550002, 2)),
    ] {
        Mock::given(method("GET"))
            .and(path("/payment/status/10001/5550002"))
            .respond_with(answer)
            .up_to_n_times(1)
            .with_priority(priority)
            .mount(&mock)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/5550002"))
        .respond_with(click_status(5550002, -9))
        .with_priority(4)
        .mount(&mock)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/payment/reversal/10001/5550002"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let since = |c: &Clocked| c.app.state.now() - Span::minutes(15);
    let report = reconcile_once(&c.app.state, since(&c)).await.expect("pass");
    assert_eq!(report.succeeded, 1, "{report:?}");
    let refund = c
        .app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(refund.status().as_u16(), 502);
    assert_eq!(refund_states(&c, &id).await, ["pending"]);
    let mut attempts = c.attempt_states(&id).await;
    attempts.sort();
    assert_eq!(
        attempts,
        ["confirmed", "prepared"],
        "Click named the paid one"
    );
    c.clock.advance(Span::minutes(16));
    let report = reconcile_once(&c.app.state, since(&c)).await.expect("pass");
    assert_eq!(report.refunds_settled, 1, "{report:?}");
    assert_eq!(refund_states(&c, &id).await, ["succeeded"]);
    assert_eq!(c.status(&id).await, "refunded");
}

/// Same unnamed settlement, and Click's late Complete never comes: a refund asks Click which
/// open attempt it paid and reverses that one, instead of answering `no_confirmed_payment` for
/// good.
#[tokio::test]
async fn a_refund_finds_the_attempt_reconciliation_could_not_name() {
    let (c, id, _, mock) =
        two_open_click_attempts(click_status(5550001, 0), click_status(5550002, 2)).await;
    // Reconciliation asks about 5550002 twice: "successful", then no answer.
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/5550002"))
        .respond_with(click_status(5550002, 2))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/payment/status/10001/5550002"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&mock)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/payment/reversal/10001/5550002"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"error_code": 0, "payment_id": 5550002})),
        )
        .mount(&mock)
        .await;
    let report = reconcile_once(&c.app.state, c.app.state.now() - Span::minutes(15))
        .await
        .expect("pass");
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(c.attempt_states(&id).await, ["prepared", "prepared"]);
    let refund = c
        .app
        .post_json(&format!("/v1/payments/{id}/refunds"), &json!({}))
        .await;
    assert_eq!(refund.status().as_u16(), 201, "{:?}", refund.text().await);
    assert_eq!(c.status(&id).await, "refunded");
}
