//! Payme Merchant API (payme-click.md §1): every method, every error code, the sandbox
//! scenarios of §1.10, the 12-hour timeout, concurrency, and bad input.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Duration;
use futures::future::join_all;
use serde_json::{json, Value};
use tolov::startup::Overrides;
use tolov::state::ManualClock;

use crate::helpers::*;

const KEY: &str = "sandbox-payme-key";

fn basic(login_key: &str) -> String {
    format!("Basic {}", STANDARD.encode(login_key))
}

struct Payme {
    app: TestApp,
    clock: Arc<ManualClock>,
}

async fn payme_app_with(db: Db, configure: impl FnOnce(&mut tolov::config::Settings)) -> Payme {
    let clock = Arc::new(ManualClock::default());
    let overrides = Overrides {
        clock: Some(clock.clone()),
        ..Overrides::default()
    };
    Payme {
        app: spawn_app_with(db, configure, overrides).await,
        clock,
    }
}

async fn payme_app() -> Payme {
    payme_app_with(Db::Sqlite, |_| {}).await
}

fn payme_id(n: u32) -> String {
    format!("{n:024x}")
}

impl Payme {
    async fn raw(&self, auth: Option<&str>, body: impl Into<reqwest::Body>) -> Value {
        let mut req = self
            .app
            .client
            .post(self.app.url("/v1/payme"))
            .header("content-type", "text/json; charset=UTF-8")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status().as_u16(), 200, "Payme always gets HTTP 200");
        res.json().await.expect("json-rpc answer")
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({ "method": method, "params": params, "id": 4242 });
        let answer = self
            .raw(Some(&basic(&format!("Paycom:{KEY}"))), body.to_string())
            .await;
        assert_eq!(answer["id"], 4242, "id echoed: {answer}");
        answer
    }

    async fn ok(&self, method: &str, params: Value) -> Value {
        let a = self.call(method, params).await;
        assert!(
            a.get("error").is_none() || a["error"].is_null(),
            "{method}: {a}"
        );
        a["result"].clone()
    }

    async fn err(&self, method: &str, params: Value, code: i64) -> Value {
        let a = self.call(method, params).await;
        assert_eq!(a["error"]["code"], code, "{method}: {a}");
        assert!(a.get("result").is_none(), "{a}");
        for lang in ["ru", "uz", "en"] {
            assert!(
                a["error"]["message"][lang]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{a}"
            );
        }
        a["error"].clone()
    }

    async fn payment(&self, amount: i64) -> String {
        self.app.new_payment("payme", amount).await["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    async fn status(&self, id: &str) -> String {
        self.app.get_json(&format!("/v1/payments/{id}")).await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    /// The Payme transaction `id` as stored.
    async fn stored(&self, id: &str) -> tolov::domain::Transaction {
        self.app
            .state
            .store
            .get_transaction(tolov::domain::ProviderKind::Payme, id)
            .await
            .expect("get")
            .expect("tx")
    }

    fn now_ms(&self) -> i64 {
        self.app.state.now().timestamp_millis()
    }

    async fn create(&self, pid: &str, order: &str, amount: i64) -> Value {
        let time = self.now_ms();
        self.call(
            "CreateTransaction",
            json!({"id": pid, "time": time, "amount": amount, "account": {"order_id": order}}),
        )
        .await
    }
}

fn account(order: &str) -> Value {
    json!({ "order_id": order })
}

impl Payme {
    /// A correctly authenticated CheckPerformTransaction carrying `X-Forwarded-For` headers.
    async fn check_via(&self, order: &str, forwarded: &[&str]) -> Value {
        let body = json!({"method": "CheckPerformTransaction", "id": 9,
                          "params": {"amount": 150_000, "account": account(order)}});
        let mut req = self
            .app
            .client
            .post(self.app.url("/v1/payme"))
            .header("authorization", basic(&format!("Paycom:{KEY}")))
            .body(body.to_string());
        for f in forwarded {
            req = req.header("x-forwarded-for", *f);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status().as_u16(), 200, "Payme always gets HTTP 200");
        let a: Value = res.json().await.expect("json-rpc answer");
        assert_eq!(a["id"], 9, "{a}");
        a
    }
}

fn allowed_check(a: &Value) -> bool {
    a["result"]["allow"] == true
}

fn refused_32504(a: &Value) -> bool {
    a["error"]["code"] == -32504 && a.get("result").is_none()
}

#[tokio::test]
async fn callers_outside_the_payme_networks_are_refused_with_32504() {
    let nets = |list: &[&str]| -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    };
    // The test client calls from 127.0.0.1: outside Payme's published network.
    let direct = payme_app_with(Db::Sqlite, |s| {
        s.payme.allowed_ips = nets(&["185.234.113.0/28"]);
    })
    .await;
    let order = direct.payment(150_000).await;
    let before = direct.app.snapshot().await;
    let refused = direct.check_via(&order, &[]).await;
    assert!(refused_32504(&refused), "{refused}");
    // Without a trusted proxy, a forwarded-for header is the caller's own claim: ignored.
    let spoofed = direct.check_via(&order, &["185.234.113.7"]).await;
    assert!(refused_32504(&spoofed), "{spoofed}");
    let create = direct.create(&payme_id(1), &order, 150_000).await;
    assert_eq!(create["error"]["code"], -32504, "{create}");
    assert_eq!(direct.app.snapshot().await, before, "nothing changed");

    // Behind a trusted reverse proxy (here: loopback) the hop it saw is the caller.
    let proxied = payme_app_with(Db::Sqlite, |s| {
        s.payme.allowed_ips = nets(&["185.234.113.0/28"]);
        s.server.trusted_proxies = nets(&["127.0.0.1/32"]);
    })
    .await;
    let order = proxied.payment(150_000).await;
    assert!(allowed_check(
        &proxied.check_via(&order, &["185.234.113.7"]).await
    ));
    assert!(allowed_check(
        &proxied
            .check_via(&order, &["203.0.113.5, 185.234.113.15"])
            .await
    ));
    // The rightmost untrusted hop decides; what the payer put on the left cannot.
    let spoofed = proxied
        .check_via(&order, &["185.234.113.7, 203.0.113.5"])
        .await;
    assert!(refused_32504(&spoofed), "{spoofed}");
    assert!(refused_32504(
        &proxied.check_via(&order, &["185.234.113.16"]).await
    ));
    assert!(
        refused_32504(&proxied.check_via(&order, &[]).await),
        "the proxy itself is not Payme"
    );

    // An allow-list naming the caller admits it; the default (empty) admits everyone.
    let loopback = payme_app_with(Db::Sqlite, |s| {
        s.payme.allowed_ips = nets(&["127.0.0.1/32"]);
    })
    .await;
    let order = loopback.payment(150_000).await;
    assert!(allowed_check(&loopback.check_via(&order, &[]).await));
    let open = payme_app().await;
    let order = open.payment(150_000).await;
    assert!(allowed_check(
        &open.check_via(&order, &["185.234.113.7"]).await
    ));
}

/// A wrong key is -32504 even when the stored key cannot be read (§1.2): a caller who is not
/// authenticated never gets -32400 ("retry"), while the known key keeps working.
#[tokio::test]
async fn a_wrong_key_is_32504_even_when_the_database_cannot_be_read() {
    use sqlx::Connection;
    let p = payme_app_with(Db::Postgres, |_| {}).await;
    let order = p.payment(150_000).await;
    let check = json!({"amount": 150_000, "account": account(&order)});
    p.ok("CheckPerformTransaction", check.clone()).await;
    let mut db = sqlx::PgConnection::connect(&p.app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql("ALTER TABLE settings RENAME TO settings_away")
        .execute(&mut db)
        .await
        .expect("hide settings");
    let body = json!({"method": "CheckPerformTransaction", "params": check, "id": 7});
    let wrong = p
        .raw(Some(&basic("Paycom:not-the-key")), body.to_string())
        .await;
    assert_eq!(wrong["error"]["code"], -32504, "{wrong}");
    p.ok("CheckPerformTransaction", check).await;
    sqlx::raw_sql("ALTER TABLE settings_away RENAME TO settings")
        .execute(&mut db)
        .await
        .expect("restore settings");
}

/// The key is judged from the headers before anything else is waited for: a wrong key is -32504
/// even when its body arrives too slowly (§1.2), never the -32400 ("retry") a known caller gets.
#[tokio::test]
async fn a_slowly_sent_call_with_a_wrong_key_is_32504() {
    let p = payme_app_with(Db::Sqlite, |s| s.server.request_timeout_secs = 1).await;
    let body =
        json!({"method": "CheckTransaction", "id": 7, "params": {"id": payme_id(1)}}).to_string();
    let wrong = basic("Paycom:not-the-key");
    let (status_line, answer) = post_slowly(
        &p.app,
        "/v1/payme",
        &[
            ("Authorization", wrong.as_str()),
            ("Content-Type", "text/json"),
        ],
        &body,
        std::time::Duration::from_millis(1_100),
    )
    .await;
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{answer}");
    let v: Value = serde_json::from_str(&answer).expect("JSON-RPC");
    assert_eq!(v["error"]["code"], -32504, "{v}");
}

/// A wrong key is -32504 also when the stored key's read waits on a lock past the deadline:
/// only the key last known to be right is told -32400 ("retry").
#[tokio::test]
async fn a_wrong_key_is_32504_while_the_key_read_waits_on_a_lock() {
    use sqlx::Connection;
    let p = payme_app_with(Db::Postgres, |s| s.server.request_timeout_secs = 1).await;
    let order = p.payment(150_000).await;
    let check = json!({"amount": 150_000, "account": account(&order)});
    p.ok("CheckPerformTransaction", check.clone()).await;
    let mut db = sqlx::PgConnection::connect(&p.app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut db)
        .await
        .expect("lock settings");
    let body = json!({"method": "CheckPerformTransaction", "params": check, "id": 7});
    let wrong = p
        .raw(Some(&basic("Paycom:not-the-key")), body.to_string())
        .await;
    assert_eq!(
        (wrong["id"].clone(), wrong["error"]["code"].clone()),
        (json!(7), json!(-32504)),
        "{wrong}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut db)
        .await
        .expect("unlock");
}

/// The right key whose stored copy cannot be read in time is told -32400 ("retry"), and its
/// answer still carries the request's id (§1.3), though the deadline passed while it waited.
#[tokio::test]
async fn the_known_key_waiting_on_a_lock_gets_32400_with_its_id() {
    use sqlx::Connection;
    let p = payme_app_with(Db::Postgres, |s| s.server.request_timeout_secs = 1).await;
    let order = p.payment(150_000).await;
    let check = json!({"amount": 150_000, "account": account(&order)});
    p.ok("CheckPerformTransaction", check.clone()).await;
    // The copy of the key is no longer fresh: the next call reads the stored one.
    p.clock.advance(Duration::seconds(6));
    let mut db = sqlx::PgConnection::connect(&p.app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut db)
        .await
        .expect("lock settings");
    let body = json!({"method": "CheckPerformTransaction", "params": check, "id": 7});
    let answer = p
        .raw(Some(&basic(&format!("Paycom:{KEY}"))), body.to_string())
        .await;
    assert_eq!(
        (answer["id"].clone(), answer["error"]["code"].clone()),
        (json!(7), json!(-32400)),
        "{answer}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut db)
        .await
        .expect("unlock");
}

#[tokio::test]
async fn every_method_refuses_bad_credentials_with_32504() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    let before = p.app.snapshot().await;
    let methods = [
        (
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)}),
        ),
        (
            "CreateTransaction",
            json!({"id": payme_id(1), "time": p.now_ms(), "amount": 150_000, "account": account(&order)}),
        ),
        ("PerformTransaction", json!({"id": payme_id(1)})),
        ("CancelTransaction", json!({"id": payme_id(1), "reason": 3})),
        ("CheckTransaction", json!({"id": payme_id(1)})),
        ("GetStatement", json!({"from": 0, "to": p.now_ms()})),
        ("ChangePassword", json!({"password": "attacker"})),
        (
            "SetFiscalData",
            json!({"id": payme_id(1), "type": "PERFORM", "fiscal_data": {}}),
        ),
    ];
    let bad_auth = [
        None,
        Some(basic("Paycom:wrong-key")),
        Some(basic(&format!("paycom:{KEY}"))),
        Some(basic(&format!("Other:{KEY}"))),
        Some(basic(KEY)),
        Some(format!("Bearer {KEY}")),
        Some("Basic !!!".to_owned()),
        Some(basic(&format!("Paycom:{KEY} "))),
    ];
    for (method, params) in &methods {
        for auth in &bad_auth {
            let body = json!({"method": method, "params": params, "id": 7}).to_string();
            let a = p.raw(auth.as_deref(), body).await;
            assert_eq!(a["error"]["code"], -32504, "{method} with {auth:?}: {a}");
            assert_eq!(a["id"], 7);
            assert!(a.get("result").is_none());
        }
    }
    assert_eq!(p.app.snapshot().await, before, "nothing changed");
    // The key still is the configured one (ChangePassword was refused).
    p.ok(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(&order)}),
    )
    .await;
}

#[tokio::test]
async fn transport_errors_follow_json_rpc_and_always_answer_200() {
    let p = payme_app().await;
    let auth = basic(&format!("Paycom:{KEY}"));
    let get = p
        .app
        .client
        .get(p.app.url("/v1/payme"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status().as_u16(), 200);
    assert_eq!(
        get.json::<Value>().await.expect("json")["error"]["code"],
        -32300
    );

    let cases: Vec<(&str, String, i64)> = vec![
        ("garbage", "not json at all".into(), -32700),
        (
            "truncated",
            r#"{"method":"CheckTransaction","params":{"id":"x"#.into(),
            -32700,
        ),
        ("empty body", String::new(), -32700),
        ("array", "[1,2]".into(), -32600),
        ("string", "\"CheckTransaction\"".into(), -32600),
        ("no method", r#"{"params":{},"id":1}"#.into(), -32600),
        (
            "method not a string",
            r#"{"method":5,"params":{},"id":1}"#.into(),
            -32600,
        ),
        (
            "no params",
            r#"{"method":"CheckTransaction","id":1}"#.into(),
            -32600,
        ),
        (
            "params an array",
            r#"{"method":"CheckTransaction","params":[],"id":1}"#.into(),
            -32600,
        ),
        (
            "no id",
            r#"{"method":"CheckTransaction","params":{"id":"a"}}"#.into(),
            -32600,
        ),
        (
            "id an object",
            r#"{"method":"CheckTransaction","params":{"id":"a"},"id":{}}"#.into(),
            -32600,
        ),
        (
            "unknown method",
            r#"{"method":"StealMoney","params":{},"id":1}"#.into(),
            -32601,
        ),
        (
            "unknown method without params",
            r#"{"method":"StealMoney","id":1}"#.into(),
            -32601,
        ),
        (
            // Every field valid on its own: only the body's size (over 64 KiB) is wrong.
            "oversized",
            format!(
                r#"{{"method":"CheckTransaction","params":{{"id":"{}"}},"id":1,"padding":"{}"}}"#,
                "a".repeat(24),
                "x".repeat(70_000)
            ),
            -32600,
        ),
        (
            "just under the size limit",
            format!(
                r#"{{"method":"CheckTransaction","params":{{"id":"{}"}},"id":1,"padding":"{}"}}"#,
                "a".repeat(24),
                "x".repeat(60_000)
            ),
            -31003,
        ),
    ];
    let before = p.app.snapshot().await;
    for (name, body, code) in cases {
        let a = p.raw(Some(&auth), body).await;
        assert_eq!(a["error"]["code"], code, "{name}: {a}");
    }
    let unknown = p
        .raw(Some(&auth), r#"{"method":"StealMoney","params":{},"id":9}"#)
        .await;
    assert_eq!(unknown["error"]["data"], "StealMoney");
    assert_eq!(unknown["id"], 9);
    // JSON-RPC 2.0: an id that is neither a string nor a number cannot be the request's id, so
    // the answer's id is null rather than the value echoed back.
    for bad_id in ["{}", "[1]", "true"] {
        let a = p
            .raw(
                Some(&auth),
                format!(r#"{{"method":"CheckTransaction","params":{{"id":"a"}},"id":{bad_id}}}"#),
            )
            .await;
        assert_eq!(
            (a["error"]["code"].clone(), a["id"].clone()),
            (json!(-32600), Value::Null),
            "{bad_id}: {a}"
        );
    }
    assert_eq!(p.app.snapshot().await, before);
}

#[tokio::test]
async fn check_perform_transaction_validates_order_amount_and_state() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    let click = p.app.new_payment("click", 150_000).await;
    assert_eq!(
        p.ok(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)})
        )
        .await,
        json!({"allow": true})
    );
    let before = p.app.snapshot().await;
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_001, "account": account(&order)}),
        -31001,
    )
    .await;
    for bad_amount in [
        json!(0),
        json!(-150_000),
        json!(1500.5),
        json!(1e30),
        json!(u64::MAX),
    ] {
        p.err(
            "CheckPerformTransaction",
            json!({"amount": bad_amount, "account": account(&order)}),
            -31001,
        )
        .await;
    }
    let huge = format!(
        r#"{{"method":"CheckPerformTransaction","params":{{"amount":99999999999999999999999999,"account":{{"order_id":"{order}"}}}},"id":1}}"#
    );
    let a = p.raw(Some(&basic(&format!("Paycom:{KEY}"))), huge).await;
    assert_eq!(a["error"]["code"], -31001, "{a}");
    p.err(
        "CheckPerformTransaction",
        json!({"amount": "150000", "account": account(&order)}),
        -32600,
    )
    .await;
    p.err(
        "CheckPerformTransaction",
        json!({"account": account(&order)}),
        -32600,
    )
    .await;
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000}),
        -32600,
    )
    .await;
    let unknown = format!("pay_{}", ulid::Ulid::new());
    for acc in [
        account(&unknown),
        account("197"),
        account("pay_x"),
        json!({"phone": order}),
        json!({"order_id": 5}),
    ] {
        let e = p
            .err(
                "CheckPerformTransaction",
                json!({"amount": 150_000, "account": acc}),
                -31050,
            )
            .await;
        assert_eq!(e["data"], "order_id", "the account field is named");
    }
    // A Click payment is not a Payme order.
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(click["id"].as_str().expect("id"))}),
        -31050,
    )
    .await;
    assert_eq!(p.app.snapshot().await, before);

    // Busy while a transaction is live; not payable once paid or cancelled.
    p.create(&payme_id(1), &order, 150_000).await;
    let e = p
        .err(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)}),
            -31052,
        )
        .await;
    assert_eq!(e["data"], "order_id");
    p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    let e = p
        .err(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)}),
            -31051,
        )
        .await;
    assert_eq!(
        e["data"], "order_id",
        "-31050..-31099 name the account field"
    );
    let canceled = p.payment(150_000).await;
    p.app
        .post_json(&format!("/v1/payments/{canceled}/cancel"), &json!({}))
        .await;
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(&canceled)}),
        -31051,
    )
    .await;
    // Past the payment's own deadline it is no longer payable either.
    let late = p.payment(150_000).await;
    p.clock.advance(Duration::minutes(31));
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(&late)}),
        -31051,
    )
    .await;
}

#[tokio::test]
async fn create_transaction_is_idempotent_and_exclusive() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    let time = p.now_ms() - 1_000;
    let params =
        json!({"id": payme_id(1), "time": time, "amount": 150_000, "account": account(&order)});
    let first = p.ok("CreateTransaction", params.clone()).await;
    assert_eq!(first["state"], 1);
    assert!(first["transaction"]
        .as_str()
        .is_some_and(|t| t.starts_with("txn_")));
    assert!(first["create_time"].as_i64().is_some_and(|t| t >= time));
    assert_eq!(p.status(&order).await, "processing");
    p.clock.advance(Duration::seconds(3));
    assert_eq!(
        p.ok("CreateTransaction", params.clone()).await,
        first,
        "a repeat answers the stored values"
    );
    // Another Payme transaction for the same awaiting order: -31008 (the sandbox's code).
    let other = json!({"id": payme_id(2), "time": p.now_ms(), "amount": 150_000, "account": account(&order)});
    p.err("CreateTransaction", other, -31008).await;
    // Validation.
    let fresh = p.payment(150_000).await;
    let before = p.app.snapshot().await;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "time": p.now_ms(), "amount": 1, "account": account(&fresh)}),
        -31001,
    )
    .await;
    let e = p
        .err("CreateTransaction", json!({"id": payme_id(3), "time": p.now_ms(), "amount": 150_000, "account": account("nope")}), -31050)
        .await;
    assert_eq!(e["data"], "order_id");
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "amount": 150_000, "account": account(&fresh)}),
        -32600,
    )
    .await;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "time": "now", "amount": 150_000, "account": account(&fresh)}),
        -32600,
    )
    .await;
    p.err(
        "CreateTransaction",
        json!({"id": 12, "time": p.now_ms(), "amount": 150_000, "account": account(&fresh)}),
        -32600,
    )
    .await;
    p.err(
        "CreateTransaction",
        json!({"id": "", "time": p.now_ms(), "amount": 150_000, "account": account(&fresh)}),
        -32600,
    )
    .await;
    // §1.4: a timestamp is 13 digits of milliseconds.
    for not_13_digits in [1_700_000_000i64, 99_999_999_999_999] {
        p.err(
            "CreateTransaction",
            json!({"id": payme_id(3), "time": not_13_digits, "amount": 150_000, "account": account(&fresh)}),
            -32600,
        )
        .await;
    }
    // Dated more than Payme's 12-hour window ahead of tolov's clock: it could never time out.
    let ahead = p.now_ms() + 43_200_000 + 60_000;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "time": ahead, "amount": 150_000, "account": account(&fresh)}),
        -31008,
    )
    .await;
    // A brand-new transaction already older than 12 hours.
    let stale = p.now_ms() - 43_200_000;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "time": stale, "amount": 150_000, "account": account(&fresh)}),
        -31008,
    )
    .await;
    // §1.6 step 1: the account and the amount are validated first, whatever the time says.
    for time in [ahead, stale] {
        let e = p
            .err(
                "CreateTransaction",
                json!({"id": payme_id(3), "time": time, "amount": 150_000, "account": {"order_id": "pay_unknown"}}),
                -31050,
            )
            .await;
        assert_eq!(e["data"], "order_id");
        p.err(
            "CreateTransaction",
            json!({"id": payme_id(3), "time": time, "amount": 100, "account": account(&fresh)}),
            -31001,
        )
        .await;
    }
    assert_eq!(
        p.app.snapshot().await,
        before,
        "refused creates change nothing"
    );
}

/// §1.6 CreateTransaction, step 1 before the lookup: a repeated id is validated like a new one,
/// so a repeat naming another amount (-31001) or another order (-31050) is refused rather than
/// answered with the stored transaction, and changes nothing.
#[tokio::test]
async fn a_repeated_create_with_another_amount_or_order_is_refused() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    let other_order = p.payment(150_000).await;
    let time = p.now_ms();
    let params = |amount: i64, order: &str| json!({"id": payme_id(1), "time": time, "amount": amount, "account": account(order)});
    let first = p.ok("CreateTransaction", params(150_000, &order)).await;
    let before = p.app.snapshot().await;
    p.err("CreateTransaction", params(149_999, &order), -31001)
        .await;
    let e = p
        .err("CreateTransaction", params(150_000, &other_order), -31050)
        .await;
    assert_eq!(e["data"], "order_id");
    let e = p
        .err("CreateTransaction", params(150_000, "nope"), -31050)
        .await;
    assert_eq!(e["data"], "order_id");
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": time, "amount": 150_000}),
        -32600,
    )
    .await;
    assert_eq!(
        p.app.snapshot().await,
        before,
        "refused repeats change nothing"
    );
    assert_eq!(p.status(&other_order).await, "pending");
    assert_eq!(
        p.ok("CreateTransaction", params(150_000, &order)).await,
        first,
        "the exact repeat is still answered with the stored values"
    );
}

/// §1.6 CreateTransaction: another Payme id while a transaction of this one-time order is in
/// state 1 *or 2* is -31008 (the sandbox's code); only an order with neither (refunded,
/// cancelled, expired) is "not awaiting payment", -31051.
#[tokio::test]
async fn a_new_transaction_for_a_paid_order_gets_31008_and_for_a_refunded_one_31051() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    let before = p.app.snapshot().await;
    let other = |n: u32| json!({"id": payme_id(n), "time": p.now_ms(), "amount": 150_000, "account": account(&order)});
    p.err("CreateTransaction", other(2), -31008).await;
    assert_eq!(p.app.snapshot().await, before, "nothing recorded");
    p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 5}))
        .await;
    assert_eq!(p.status(&order).await, "refunded");
    let e = p.err("CreateTransaction", other(3), -31051).await;
    assert_eq!(e["data"], "order_id");
}

#[tokio::test]
async fn perform_transaction_pays_once_and_repeats_the_stored_time() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31003)
        .await;
    p.create(&payme_id(1), &order, 150_000).await;
    let first = p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(first["state"], 2);
    assert!(first["perform_time"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(p.status(&order).await, "succeeded");
    p.clock.advance(Duration::seconds(5));
    assert_eq!(
        p.ok("PerformTransaction", json!({"id": payme_id(1)})).await,
        first,
        "same perform_time on repeat"
    );
    // A repeated Create of a performed transaction is refused.
    let time = p.now_ms();
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": time, "amount": 150_000, "account": account(&order)}),
        -31008,
    )
    .await;
    let events = p
        .app
        .get_json(&format!("/v1/payments/{order}/events"))
        .await;
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
    assert_eq!(events["data"][2]["actor"], "provider");
    p.err("PerformTransaction", json!({}), -32600).await;
}

#[tokio::test]
async fn cancel_before_perform_keeps_the_payment_payable() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.err(
        "CancelTransaction",
        json!({"id": payme_id(1), "reason": 3}),
        -31003,
    )
    .await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.err("CancelTransaction", json!({"id": payme_id(1)}), -32600)
        .await;
    let first = p
        .ok("CancelTransaction", json!({"id": payme_id(1), "reason": 3}))
        .await;
    assert_eq!(first["state"], -1);
    assert_eq!(
        p.status(&order).await,
        "pending",
        "the attempt ended, the payment did not"
    );
    p.clock.advance(Duration::seconds(2));
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 3}))
            .await,
        first
    );
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        (
            check["state"].clone(),
            check["reason"].clone(),
            check["perform_time"].clone()
        ),
        (json!(-1), json!(3), json!(0))
    );
    assert_eq!(check["cancel_time"], first["cancel_time"]);
    // Perform and a repeated Create of a cancelled transaction are refused.
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31008)
        .await;
    let time = p.now_ms();
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": time, "amount": 150_000, "account": account(&order)}),
        -31008,
    )
    .await;
    // A new Payme transaction can pay the same payment.
    assert_eq!(
        p.create(&payme_id(2), &order, 150_000).await["result"]["state"],
        1
    );
    p.ok("PerformTransaction", json!({"id": payme_id(2)})).await;
    assert_eq!(p.status(&order).await, "succeeded");
}

#[tokio::test]
async fn cancel_after_perform_refunds_the_payment() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    let performed = p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    let first = p
        .ok("CancelTransaction", json!({"id": payme_id(1), "reason": 5}))
        .await;
    assert_eq!(first["state"], -2);
    assert_eq!(p.status(&order).await, "refunded");
    // Later repeats answer the stored cancel time, not the time of the repeat.
    p.clock.advance(Duration::seconds(2));
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 5}))
            .await,
        first
    );
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(check["cancel_time"], first["cancel_time"]);
    assert_eq!(
        check["perform_time"], performed["perform_time"],
        "perform time kept"
    );
    assert_eq!(
        (check["state"].clone(), check["reason"].clone()),
        (json!(-2), json!(5))
    );
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31008)
        .await;
}

#[tokio::test]
async fn cancel_after_perform_can_be_refused_by_policy() {
    let p = payme_app_with(Db::Sqlite, |s| s.payme.allow_cancel_after_perform = false).await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    let before = p.app.snapshot().await;
    p.err(
        "CancelTransaction",
        json!({"id": payme_id(1), "reason": 5}),
        -31007,
    )
    .await;
    assert_eq!(p.app.snapshot().await, before);
    assert_eq!(p.status(&order).await, "succeeded");
    // Cancelling an unperformed transaction is still allowed.
    let other = p.payment(150_000).await;
    p.create(&payme_id(2), &other, 150_000).await;
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(2), "reason": 3}))
            .await["state"],
        -1
    );
}

#[tokio::test]
async fn twelve_hours_after_payme_time_a_created_transaction_is_cancelled_with_reason_4() {
    let p = payme_app().await;
    // Perform past the timeout.
    let a = p.payment(150_000).await;
    let created = p.create(&payme_id(1), &a, 150_000).await;
    assert_eq!(created["result"]["state"], 1);
    p.clock.advance(Duration::hours(12));
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31008)
        .await;
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        (check["state"].clone(), check["reason"].clone()),
        (json!(-1), json!(4))
    );
    assert_eq!(p.status(&a).await, "pending");
    // A repeated Create past the timeout does the same.
    let b = p.payment(150_000).await;
    let time = p.now_ms();
    let params =
        json!({"id": payme_id(2), "time": time, "amount": 150_000, "account": account(&b)});
    p.ok("CreateTransaction", params.clone()).await;
    p.clock.advance(Duration::hours(11) + Duration::minutes(59));
    assert_eq!(
        p.ok("CreateTransaction", params.clone()).await["state"],
        1,
        "just under 12 h still live"
    );
    p.clock.advance(Duration::minutes(1));
    p.err("CreateTransaction", params, -31008).await;
    let check = p.ok("CheckTransaction", json!({"id": payme_id(2)})).await;
    assert_eq!(
        (check["state"].clone(), check["reason"].clone()),
        (json!(-1), json!(4))
    );
    let events = p.app.get_json(&format!("/v1/payments/{b}/events")).await;
    let last = events["data"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("event");
    assert_eq!(last["type"], "payment.pending");
    assert!(
        last["reason"].as_str().is_some_and(|r| r.contains("12 h")),
        "{last}"
    );
}

/// §1.6: CreateTransaction reserves the order "until paid or timed out". While a Payme
/// transaction is in state 1 the merchant's cancel is refused (Payme would perform it and find
/// the order gone, with CheckTransaction still saying state 1); once Payme's 12 hours are over,
/// the cancel goes through and ends the transaction too (state -1, reason 4).
#[tokio::test]
async fn a_merchant_cannot_cancel_an_order_payme_has_reserved() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    let res = p
        .app
        .post_json(&format!("/v1/payments/{order}/cancel"), &json!({}))
        .await;
    let problem = assert_problem(res, 422, "provider_rejected").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("payment_in_progress")),
        "{problem}"
    );
    assert_eq!(p.status(&order).await, "processing");
    let performed = p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(performed["state"], 2);
    assert_eq!(p.status(&order).await, "succeeded");

    let other = p.payment(150_000).await;
    p.create(&payme_id(2), &other, 150_000).await;
    p.clock.advance(Duration::hours(12));
    let res = p
        .app
        .post_json(&format!("/v1/payments/{other}/cancel"), &json!({}))
        .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(p.status(&other).await, "canceled");
    let check = p.ok("CheckTransaction", json!({"id": payme_id(2)})).await;
    assert_eq!(
        (check["state"].clone(), check["reason"].clone()),
        (json!(-1), json!(4))
    );
    assert!(
        check["cancel_time"].as_i64().is_some_and(|t| t > 0),
        "{check}"
    );
}

/// §1.7 with payments that outlive Payme's 12 hours (`api.payment_ttl_minutes` above 720): a
/// transaction whose 12 hours ran out no longer holds its order. CheckPerformTransaction allows
/// the order, and a new CreateTransaction cancels the old one (state -1, reason 4) and starts.
#[tokio::test]
async fn a_timed_out_transaction_no_longer_holds_a_long_lived_order() {
    let p = payme_app_with(Db::Sqlite, |s| s.api.payment_ttl_minutes = 24 * 60).await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(&order)}),
        -31052,
    )
    .await;
    p.clock.advance(Duration::hours(12));
    assert_eq!(
        p.ok(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)})
        )
        .await,
        json!({"allow": true})
    );
    let created = p.create(&payme_id(2), &order, 150_000).await;
    assert_eq!(created["result"]["state"], 1, "{created}");
    let old = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        (old["state"].clone(), old["reason"].clone()),
        (json!(-1), json!(4))
    );
    assert_eq!(p.status(&order).await, "processing");
    // Once the order's own deadline has passed too, it is not payable: -31051, not "allow",
    // and nothing changes (expiry ends it).
    p.clock.advance(Duration::hours(13));
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account(&order)}),
        -31051,
    )
    .await;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(3), "time": p.now_ms(), "amount": 150_000, "account": account(&order)}),
        -31051,
    )
    .await;
    let live = p.ok("CheckTransaction", json!({"id": payme_id(2)})).await;
    assert_eq!(live["state"], 1, "{live}");
    assert_eq!(p.status(&order).await, "processing");
}

/// §1.7: Payme itself ends a state-1 transaction whose 12 hours ran out, with CancelTransaction
/// reason 4. The attempt ends (-1, reason 4, the same answer on repeats) and the order, still
/// within its own deadline, is payable by a new transaction.
#[tokio::test]
async fn payme_s_own_timeout_cancel_ends_the_attempt_and_frees_the_order() {
    let p = payme_app_with(Db::Sqlite, |s| s.api.payment_ttl_minutes = 24 * 60).await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.clock.advance(Duration::hours(12) + Duration::minutes(1));
    let cancel = p
        .ok("CancelTransaction", json!({"id": payme_id(1), "reason": 4}))
        .await;
    assert_eq!(cancel["state"], -1, "{cancel}");
    assert!(cancel["cancel_time"].as_i64().is_some_and(|t| t > 0));
    p.clock.advance(Duration::seconds(5));
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 4}))
            .await,
        cancel
    );
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        (
            check["state"].clone(),
            check["reason"].clone(),
            check["cancel_time"].clone()
        ),
        (json!(-1), json!(4), cancel["cancel_time"].clone())
    );
    assert_eq!(p.status(&order).await, "pending");
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31008)
        .await;
    let again = p.create(&payme_id(2), &order, 150_000).await;
    assert_eq!(again["result"]["state"], 1, "{again}");
    assert_eq!(p.status(&order).await, "processing");
}

/// §1.7: the 12 hours run from Payme's `time`, not from when tolov stored the transaction; a
/// CreateTransaction may arrive hours after Payme made it.
#[tokio::test]
async fn the_timeout_runs_from_payme_s_time_not_from_tolov_s_create_time() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    let payme_time = p.now_ms() - Duration::hours(11).num_milliseconds();
    let created = p
        .ok("CreateTransaction", json!({"id": payme_id(1), "time": payme_time, "amount": 150_000, "account": account(&order)}))
        .await;
    assert_eq!(created["state"], 1);
    assert!(created["create_time"]
        .as_i64()
        .is_some_and(|t| t > payme_time));
    // 11 h 1 min after Payme's time, 1 min after tolov's create_time.
    p.clock.advance(Duration::hours(1) + Duration::minutes(1));
    p.err("PerformTransaction", json!({"id": payme_id(1)}), -31008)
        .await;
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        (check["state"].clone(), check["reason"].clone()),
        (json!(-1), json!(4))
    );
    assert_eq!(p.status(&order).await, "pending");
}

/// §1.3: the request `id` comes back as sent, a string as a string.
#[tokio::test]
async fn a_string_request_id_is_echoed_as_a_string() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    for id in [json!("req-7f3a"), json!("42"), json!(0)] {
        let body = json!({"method": "CheckPerformTransaction", "id": id,
            "params": {"amount": 150_000, "account": account(&order)}});
        let answer = p
            .raw(Some(&basic(&format!("Paycom:{KEY}"))), body.to_string())
            .await;
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["allow"], true, "{answer}");
    }
}

#[tokio::test]
async fn check_transaction_reports_stored_times() {
    let p = payme_app().await;
    p.err("CheckTransaction", json!({"id": payme_id(9)}), -31003)
        .await;
    let order = p.payment(150_000).await;
    let created = p.create(&payme_id(1), &order, 150_000).await["result"].clone();
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        check,
        json!({"create_time": created["create_time"], "perform_time": 0, "cancel_time": 0,
               "transaction": created["transaction"], "state": 1, "reason": null})
    );
    p.clock.advance(Duration::seconds(1));
    let performed = p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    p.clock.advance(Duration::seconds(1));
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        check,
        json!({"create_time": created["create_time"], "perform_time": performed["perform_time"],
               "cancel_time": 0, "transaction": created["transaction"], "state": 2, "reason": null})
    );
    assert!(performed["perform_time"].as_i64() > created["create_time"].as_i64());
    p.clock.advance(Duration::seconds(1));
    let cancelled = p
        .ok("CancelTransaction", json!({"id": payme_id(1), "reason": 5}))
        .await;
    p.clock.advance(Duration::seconds(1));
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(
        check,
        json!({"create_time": created["create_time"], "perform_time": performed["perform_time"],
               "cancel_time": cancelled["cancel_time"], "transaction": created["transaction"],
               "state": -2, "reason": 5})
    );
    assert!(cancelled["cancel_time"].as_i64() > performed["perform_time"].as_i64());
}

#[tokio::test]
async fn get_statement_lists_by_payme_time_inclusive_and_ascending() {
    let p = payme_app().await;
    let mut orders = Vec::new();
    // Created out of order; the statement sorts by Payme `time`, not by our clock.
    // Payme's `time` may be older than now but not by 12 h: times just before now, fixed
    // before the loop so that how long each call takes cannot reorder them.
    let base = p.now_ms() - 10_000;
    for (n, offset) in [(1u32, 2_000i64), (2, 0), (3, 1_000), (4, 5_000)] {
        let order = p.payment(150_000).await;
        let time = base + offset;
        // Cash-desk settings may add account fields; the statement gives back what Payme sent.
        let mut acc = account(&order);
        acc["phone"] = json!(format!("99890123456{n}"));
        p.ok(
            "CreateTransaction",
            json!({"id": payme_id(n), "time": time, "amount": 150_000, "account": acc}),
        )
        .await;
        orders.push((n, time, order));
    }
    p.ok("PerformTransaction", json!({"id": payme_id(3)})).await;
    let t = |n: u32| orders.iter().find(|o| o.0 == n).map(|o| o.1).expect("time");
    let statement = p
        .ok("GetStatement", json!({"from": t(2), "to": t(1)}))
        .await;
    let txs = statement["transactions"].as_array().expect("list");
    let ids: Vec<&str> = txs.iter().map(|x| x["id"].as_str().unwrap_or("")).collect();
    assert_eq!(
        ids,
        [payme_id(2), payme_id(3), payme_id(1)],
        "inclusive at both ends, ascending"
    );
    let third = &txs[1];
    let order3 = &orders.iter().find(|o| o.0 == 3).expect("order").2;
    assert_eq!(third["time"], t(3));
    assert_eq!(third["amount"], 150_000);
    assert_eq!(
        third["account"],
        json!({"order_id": order3, "phone": "998901234563"})
    );
    assert_eq!(third["state"], 2);
    assert!(third["perform_time"].as_i64().is_some_and(|x| x > 0));
    assert!(third["transaction"]
        .as_str()
        .is_some_and(|x| x.starts_with("txn_")));
    assert!(third["reason"].is_null());
    assert_eq!(
        p.ok("GetStatement", json!({"from": 1, "to": 2})).await,
        json!({"transactions": []})
    );
    let e = p
        .err("GetStatement", json!({"from": t(1), "to": t(2)}), -31050)
        .await;
    assert_eq!(e["data"], "from");
    p.err(
        "GetStatement",
        json!({"from": "yesterday", "to": 5}),
        -32600,
    )
    .await;
}

/// §1.6 GetStatement lists every transaction whose CreateTransaction succeeded, cancelled ones
/// too, each with the times and reason CheckTransaction reports for it.
#[tokio::test]
async fn get_statement_lists_cancelled_transactions_with_their_times_and_reasons() {
    let p = payme_app().await;
    let base = p.now_ms() - 10_000;
    let (a, b) = (p.payment(150_000).await, p.payment(150_000).await);
    for (n, order, offset) in [(1u32, &a, 0i64), (2, &b, 1_000)] {
        p.ok(
            "CreateTransaction",
            json!({"id": payme_id(n), "time": base + offset, "amount": 150_000, "account": account(order)}),
        )
        .await;
    }
    p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 3}))
        .await;
    p.ok("PerformTransaction", json!({"id": payme_id(2)})).await;
    p.ok("CancelTransaction", json!({"id": payme_id(2), "reason": 5}))
        .await;
    let statement = p
        .ok("GetStatement", json!({"from": base, "to": base + 1_000}))
        .await;
    let txs = statement["transactions"].as_array().expect("list");
    assert_eq!(txs.len(), 2, "{statement}");
    for (row, n, state, reason) in [(&txs[0], 1, -1, 3), (&txs[1], 2, -2, 5)] {
        let check = p.ok("CheckTransaction", json!({"id": payme_id(n)})).await;
        assert_eq!(row["id"], payme_id(n));
        assert_eq!(
            (row["state"].clone(), row["reason"].clone()),
            (json!(state), json!(reason))
        );
        for field in [
            "create_time",
            "perform_time",
            "cancel_time",
            "transaction",
            "state",
            "reason",
        ] {
            assert_eq!(row[field], check[field], "{field} of {n}: {row} / {check}");
        }
        assert!(row["cancel_time"].as_i64().is_some_and(|t| t > 0), "{row}");
        assert!(
            row.as_object().is_some_and(|o| o.contains_key("receivers")),
            "{row}"
        );
    }
    assert_eq!(txs[0]["perform_time"], 0, "never performed");
    assert!(txs[1]["perform_time"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(p.status(&a).await, "pending");
    assert_eq!(p.status(&b).await, "refunded");
}

/// Creates a Payme payment on the instance at `base` and has the sandbox payer pay it; returns
/// the payer's HTTP status, its answer and the payment's status afterwards.
async fn sandbox_pays(client: &reqwest::Client, base: &str) -> (u16, Value, String) {
    let created: Value = client
        .post(format!("{base}/v1/payments"))
        .bearer_auth(API_KEY)
        .json(&payment_body("payme", 150_000))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("id");
    let res = client
        .post(format!("{base}/sandbox/payme/{id}/pay"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    let status = res.status().as_u16();
    let answer: Value = res.json().await.expect("json");
    let payment: Value = client
        .get(format!("{base}/v1/payments/{id}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let after = payment["status"].as_str().expect("status").to_owned();
    (status, answer, after)
}

#[tokio::test]
async fn change_password_replaces_the_key_and_survives_a_restart() {
    let (url, dir) = fresh_database(Db::Sqlite).await;
    let settings = test_settings(url.clone());
    let app = tolov::startup::Application::build(settings)
        .await
        .expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let call = |key: &str, method: &str, params: Value| {
        client
            .post(format!("{base}/v1/payme"))
            .header("authorization", basic(&format!("Paycom:{key}")))
            .json(&json!({"method": method, "params": params, "id": 1}))
            .send()
    };
    let code = |v: &Value| v["error"]["code"].as_i64();
    let a: Value = call(KEY, "ChangePassword", json!({"password": KEY}))
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(code(&a), Some(-32504), "the current key is not a change");
    for bad in [
        json!({}),
        json!({"password": ""}),
        json!({"password": "  \n"}),
        json!({"password": 42}),
    ] {
        let a: Value = call(KEY, "ChangePassword", bad)
            .await
            .expect("req")
            .json()
            .await
            .expect("json");
        assert_eq!(
            (code(&a), a["error"]["data"].clone()),
            (Some(-31050), json!("password")),
            "{a}"
        );
    }
    let a: Value = call(
        KEY,
        "ChangePassword",
        json!({"password": "new-cash-desk-key"}),
    )
    .await
    .expect("req")
    .json()
    .await
    .expect("json");
    assert_eq!(a["result"], json!({"success": true}));
    let old: Value = call(KEY, "CheckTransaction", json!({"id": "x"}))
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(
        code(&old),
        Some(-32504),
        "the old key stops working at once"
    );
    let new: Value = call("new-cash-desk-key", "CheckTransaction", json!({"id": "x"}))
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(code(&new), Some(-31003));
    // The sandbox payer plays Payme, which knows the key it just set.
    let (status, answer, after) = sandbox_pays(&client, &base).await;
    assert_eq!((status, after.as_str()), (200, "succeeded"), "{answer}");
    token.cancel();
    server.await.expect("join").expect("stopped");

    // Restart on the same database: the new key holds, the configured one does not.
    let app = tolov::startup::Application::build(test_settings(url.clone()))
        .await
        .expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let call = |key: &str| {
        client
            .post(format!("{base}/v1/payme"))
            .header("authorization", basic(&format!("Paycom:{key}")))
            .json(&json!({"method": "CheckTransaction", "params": {"id": "x"}, "id": 1}))
            .send()
    };
    let new: Value = call("new-cash-desk-key")
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(code(&new), Some(-31003));
    let old: Value = call(KEY).await.expect("req").json().await.expect("json");
    assert_eq!(code(&old), Some(-32504));
    // Only the new key's digest is stored: the payer cannot present it, says so, calls nothing.
    let (status, answer, after) = sandbox_pays(&client, &base).await;
    assert_eq!((status, after.as_str()), (409, "pending"), "{answer}");
    assert_eq!(answer["code"], "payme_key_changed", "{answer}");
    token.cancel();
    server.await.expect("join").expect("stopped");

    // An operator who configures a new key afterwards takes precedence over the stored change.
    let mut settings = test_settings(url);
    settings.payme.key = secrecy::SecretString::from("operator-rotated-key");
    let app = tolov::startup::Application::build(settings)
        .await
        .expect("app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let answer: Value = client
        .post(format!("{base}/v1/payme"))
        .header("authorization", basic("Paycom:operator-rotated-key"))
        .json(&json!({"method": "CheckTransaction", "params": {"id": "x"}, "id": 1}))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(code(&answer), Some(-31003));
    let (status, answer, after) = sandbox_pays(&client, &base).await;
    assert_eq!((status, after.as_str()), (200, "succeeded"), "{answer}");
    token.cancel();
    server.await.expect("join").expect("stopped");
    drop(dir);
}

#[tokio::test]
async fn set_fiscal_data_is_stored_per_transaction() {
    let p = payme_app().await;
    let order = p.payment(150_000).await;
    p.create(&payme_id(1), &order, 150_000).await;
    p.ok("PerformTransaction", json!({"id": payme_id(1)})).await;
    let fiscal = json!({"receipt_id": 7, "status_code": 0, "message": "accepted", "terminal_id": "EP000000000025",
                        "fiscal_sign": "123456789012", "qr_code_url": "https://ofd.soliq.uz/check?t=1", "date": "20261123100000"});
    assert_eq!(
        p.ok(
            "SetFiscalData",
            json!({"id": payme_id(1), "type": "PERFORM", "fiscal_data": fiscal})
        )
        .await,
        json!({"success": true})
    );
    p.err(
        "SetFiscalData",
        json!({"id": payme_id(1), "type": "REFUND", "fiscal_data": fiscal}),
        -32602,
    )
    .await;
    p.err(
        "SetFiscalData",
        json!({"id": payme_id(1), "type": "PERFORM", "fiscal_data": "x"}),
        -32602,
    )
    .await;
    p.err(
        "SetFiscalData",
        json!({"id": payme_id(2), "type": "PERFORM", "fiscal_data": fiscal}),
        -31003,
    )
    .await;
    let tx = p.stored(&payme_id(1)).await;
    assert_eq!(tx.data["fiscal"]["PERFORM"], fiscal);
    assert_eq!(tx.state, "2", "fiscal data does not change the state");
    // The refund's receipt goes beside the sale's; a repeat replaces the one of its type only.
    p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 5}))
        .await;
    let refund_receipt = json!({"receipt_id": 8, "status_code": 0, "message": "accepted",
                                "terminal_id": "EP000000000025", "fiscal_sign": "210987654321",
                                "qr_code_url": "https://ofd.soliq.uz/check?t=2", "date": "20261123110000"});
    for _ in 0..2 {
        assert_eq!(
            p.ok(
                "SetFiscalData",
                json!({"id": payme_id(1), "type": "CANCEL", "fiscal_data": refund_receipt})
            )
            .await,
            json!({"success": true})
        );
    }
    for missing in [
        json!({"id": payme_id(1), "fiscal_data": refund_receipt}),
        json!({"id": payme_id(1), "type": "CANCEL"}),
    ] {
        p.err("SetFiscalData", missing, -32602).await;
    }
    p.err(
        "SetFiscalData",
        json!({"type": "CANCEL", "fiscal_data": refund_receipt}),
        -32600,
    )
    .await;
    let tx = p.stored(&payme_id(1)).await;
    assert_eq!(tx.data["fiscal"]["PERFORM"], fiscal);
    assert_eq!(tx.data["fiscal"]["CANCEL"], refund_receipt);
    assert_eq!(tx.state, "-2");
}

#[tokio::test]
async fn sandbox_scenario_1_create_and_cancel_an_unconfirmed_transaction() {
    let p = payme_app().await;
    let order = p.payment(500_000).await;
    let acc = account(&order);
    // 1. wrong credentials: covered method by method in every_method_refuses_bad_credentials_with_32504.
    // 2. wrong amount
    p.err(
        "CheckPerformTransaction",
        json!({"amount": 400_000, "account": acc}),
        -31001,
    )
    .await;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": p.now_ms(), "amount": 400_000, "account": acc}),
        -31001,
    )
    .await;
    // 3. unknown account
    let ghost = account(&format!("pay_{}", ulid::Ulid::new()));
    let e = p
        .err(
            "CheckPerformTransaction",
            json!({"amount": 500_000, "account": ghost}),
            -31050,
        )
        .await;
    assert_eq!(e["data"], "order_id");
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": p.now_ms(), "amount": 500_000, "account": ghost}),
        -31050,
    )
    .await;
    // 4. check
    p.ok(
        "CheckPerformTransaction",
        json!({"amount": 500_000, "account": acc}),
    )
    .await;
    // 5. create twice, check, a new id → -31008
    let time = p.now_ms();
    let create = json!({"id": payme_id(1), "time": time, "amount": 500_000, "account": acc});
    let first = p.ok("CreateTransaction", create.clone()).await;
    assert_eq!(p.ok("CreateTransaction", create).await, first);
    p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    p.err(
        "CreateTransaction",
        json!({"id": payme_id(2), "time": p.now_ms(), "amount": 500_000, "account": acc}),
        -31008,
    )
    .await;
    // 6. cancel twice, check
    let cancel = p
        .ok("CancelTransaction", json!({"id": payme_id(1), "reason": 3}))
        .await;
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(1), "reason": 3}))
            .await,
        cancel
    );
    assert_eq!(
        p.ok("CheckTransaction", json!({"id": payme_id(1)})).await["state"],
        -1
    );
}

#[tokio::test]
async fn sandbox_scenario_2_create_perform_and_cancel_a_confirmed_transaction() {
    let p = payme_app().await;
    let order = p.payment(500_000).await;
    let acc = account(&order);
    p.ok(
        "CheckPerformTransaction",
        json!({"amount": 500_000, "account": acc}),
    )
    .await;
    let create = json!({"id": payme_id(7), "time": p.now_ms(), "amount": 500_000, "account": acc});
    let first = p.ok("CreateTransaction", create.clone()).await;
    assert_eq!(p.ok("CreateTransaction", create).await, first);
    let perform = p.ok("PerformTransaction", json!({"id": payme_id(7)})).await;
    assert_eq!(
        p.ok("PerformTransaction", json!({"id": payme_id(7)})).await,
        perform
    );
    assert_eq!(
        p.ok("CheckTransaction", json!({"id": payme_id(7)})).await["state"],
        2
    );
    let cancel = p
        .ok("CancelTransaction", json!({"id": payme_id(7), "reason": 5}))
        .await;
    assert_eq!(
        p.ok("CancelTransaction", json!({"id": payme_id(7), "reason": 5}))
            .await,
        cancel
    );
    assert_eq!(
        p.ok("CheckTransaction", json!({"id": payme_id(7)})).await["state"],
        -2
    );
    assert_eq!(p.status(&order).await, "refunded");
}

on_both!(
    twenty_identical_creates_and_performs_have_one_effect,
    different_payme_ids_racing_leave_one_live_transaction,
    rows_changed_by_another_instance_are_decided_from_the_database,
    twenty_identical_cancels_have_one_effect,
    perform_racing_cancel_ends_in_one_consistent_state,
);

/// §1.6 CancelTransaction: Payme repeats it; 20 at once, before and after Perform, cancel
/// once, each answering the same stored `cancel_time` and state.
async fn twenty_identical_cancels_have_one_effect(db: Db) {
    let p = payme_app_with(db, |_| {}).await;
    for (n, perform_first, state, status) in [(1, false, -1, "pending"), (2, true, -2, "refunded")]
    {
        let order = p.payment(150_000).await;
        p.ok("CreateTransaction", json!({"id": payme_id(n), "time": p.now_ms(), "amount": 150_000, "account": account(&order)}))
            .await;
        if perform_first {
            p.ok("PerformTransaction", json!({"id": payme_id(n)})).await;
        }
        let cancels = join_all(
            (0..20).map(|_| p.call("CancelTransaction", json!({"id": payme_id(n), "reason": 5}))),
        )
        .await;
        for a in &cancels {
            assert_eq!(a["result"], cancels[0]["result"], "identical answers: {a}");
        }
        assert_eq!(cancels[0]["result"]["state"], state, "{}", cancels[0]);
        assert_eq!(p.status(&order).await, status);
        let pid = tolov::domain::PaymentId::parse(&order).expect("id");
        let events = p.app.state.store.list_events(&pid).await.expect("events");
        let to_status = events
            .iter()
            .filter(|e| e.kind == format!("payment.{status}"))
            .count();
        assert_eq!(to_status, 1, "one transition to {status}: {events:?}");
        let txs = p.app.transactions(&order).await;
        assert_eq!(txs.len(), 1);
        assert_eq!(txs[0].reason, Some(5));
    }
}

/// PerformTransaction and CancelTransaction of one transaction at once (10 of each): whichever
/// wins, the transaction and its payment agree: performed then cancelled (state -2, the payment
/// refunded), or cancelled first (state -1, every Perform refused with -31008, the payment
/// payable again).
async fn perform_racing_cancel_ends_in_one_consistent_state(db: Db) {
    let p = payme_app_with(db, |_| {}).await;
    for n in 0..3u32 {
        let order = p.payment(150_000).await;
        let id = payme_id(500 + n);
        p.ok(
            "CreateTransaction",
            json!({"id": id, "time": p.now_ms(), "amount": 150_000, "account": account(&order)}),
        )
        .await;
        let calls = (0..20).map(|i| {
            if i % 2 == 0 {
                p.call("PerformTransaction", json!({"id": id}))
            } else {
                p.call("CancelTransaction", json!({"id": id, "reason": 3}))
            }
        });
        let answers = join_all(calls).await;
        let tx = p.app.transactions(&order).await.remove(0);
        let status = p.status(&order).await;
        match tx.state.as_str() {
            "-2" => {
                assert_eq!(status, "refunded");
                assert!(tx.perform_time.is_some() && tx.cancel_time.is_some());
            }
            "-1" => {
                assert_eq!(status, "pending");
                assert!(tx.perform_time.is_none());
                for (i, a) in answers.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                    assert_eq!(a["error"]["code"], -31008, "perform {i}: {a}");
                }
            }
            other => panic!("the transaction ended in state {other}: {answers:?}"),
        }
        for a in answers.iter().skip(1).step_by(2) {
            assert_eq!(a["result"]["state"].to_string(), tx.state, "{a}");
            assert_eq!(a["result"]["cancel_time"], json!(tx.cancel_time), "{a}");
        }
    }
}

/// Each instance keeps copies of the rows it wrote to skip a read before its next change
/// (`store::recent`). With two instances on one database, a copy the other instance made
/// stale must never decide an answer: Payme sees what the database says.
async fn rows_changed_by_another_instance_are_decided_from_the_database(db: Db) {
    let a = payme_app_with(db, |_| {}).await;
    let b = Payme {
        app: a.app.second_instance().await,
        clock: Arc::new(ManualClock::default()),
    };

    // A created the order (its copy: pending); B starts a transaction on it.
    let order = a.payment(150_000).await;
    assert_eq!(
        b.create(&payme_id(1), &order, 150_000).await["result"]["state"],
        1
    );
    let second = a.create(&payme_id(2), &order, 150_000).await;
    assert_eq!(
        second["error"]["code"], -31008,
        "one live transaction: {second}"
    );

    // A started a transaction (its copies: state 1, processing); B cancels it.
    let order2 = a.payment(150_000).await;
    assert_eq!(
        a.create(&payme_id(10), &order2, 150_000).await["result"]["state"],
        1
    );
    let cancelled = b
        .ok(
            "CancelTransaction",
            json!({"id": payme_id(10), "reason": 3}),
        )
        .await;
    assert_eq!(cancelled["state"], -1);
    a.err("PerformTransaction", json!({"id": payme_id(10)}), -31008)
        .await;
    assert_eq!(a.status(&order2).await, "pending");
    // The order is payable again, though A's copy last saw it processing.
    assert_eq!(
        a.create(&payme_id(11), &order2, 150_000).await["result"]["state"],
        1
    );
    assert_eq!(
        a.ok("PerformTransaction", json!({"id": payme_id(11)}))
            .await["state"],
        2
    );

    let states: Vec<String> = a
        .app
        .transactions(&order2)
        .await
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["-1", "2"]);
    assert_eq!(a.app.transactions(&order).await.len(), 1);
}

async fn twenty_identical_creates_and_performs_have_one_effect(db: Db) {
    let p = payme_app_with(db, |_| {}).await;
    let order = p.payment(150_000).await;
    let time = p.now_ms();
    let params =
        json!({"id": payme_id(1), "time": time, "amount": 150_000, "account": account(&order)});
    let creates = join_all((0..20).map(|_| p.call("CreateTransaction", params.clone()))).await;
    for a in &creates {
        assert_eq!(a["result"], creates[0]["result"], "identical answers: {a}");
    }
    assert_eq!(creates[0]["result"]["state"], 1);
    let performs =
        join_all((0..20).map(|_| p.call("PerformTransaction", json!({"id": payme_id(1)})))).await;
    for a in &performs {
        assert_eq!(a["result"], performs[0]["result"], "identical answers: {a}");
    }
    assert_eq!(performs[0]["result"]["state"], 2);
    assert_eq!(p.app.transactions(&order).await.len(), 1);
    let pid = tolov::domain::PaymentId::parse(&order).expect("id");
    let events = p.app.state.store.list_events(&pid).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

async fn different_payme_ids_racing_leave_one_live_transaction(db: Db) {
    let p = payme_app_with(db, |_| {}).await;
    let order = p.payment(150_000).await;
    let time = p.now_ms();
    let answers = join_all((0..20u32).map(|n| {
        p.call("CreateTransaction", json!({"id": payme_id(100 + n), "time": time, "amount": 150_000, "account": account(&order)}))
    }))
    .await;
    let winners = answers.iter().filter(|a| a["result"]["state"] == 1).count();
    let refused = answers
        .iter()
        .filter(|a| a["error"]["code"] == -31008)
        .count();
    assert_eq!((winners, refused), (1, 19), "{answers:?}");
    let txs = p.app.transactions(&order).await;
    assert_eq!(txs.len(), 1);
    assert_eq!(txs[0].state, "1");
}

#[tokio::test]
async fn payme_payments_carry_the_checkout_link() {
    let app = spawn_app().await;
    let p = app.new_payment("payme", 150_000).await;
    let url = p["provider_data"]["checkout_url"]
        .as_str()
        .expect("checkout_url");
    let encoded = url
        .strip_prefix("https://test.paycom.uz/")
        .expect("sandbox host");
    let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf8");
    assert_eq!(
        decoded,
        format!(
            "m=sandbox-payme-merchant;ac.order_id={};a=150000;c=https://shop.example/return;l=uz",
            p["id"].as_str().expect("id")
        )
    );
    let mut body = payment_body("payme", 150_000);
    body["return_url"] = json!("https://shop.example/a;b");
    let before = app.snapshot().await;
    let problem = assert_problem(app.create_payment(&body).await, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "return_url");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn the_account_field_is_configurable() {
    let p = payme_app_with(Db::Sqlite, |s| s.payme.account_field = "invoice".into()).await;
    let order = p.payment(150_000).await;
    p.ok(
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": {"invoice": order}}),
    )
    .await;
    let e = p
        .err(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": {"order_id": order}}),
            -31050,
        )
        .await;
    assert_eq!(e["data"], "invoice");
    let link = p.app.get_json(&format!("/v1/payments/{order}")).await["provider_data"]
        ["checkout_url"]
        .as_str()
        .map(str::to_owned)
        .expect("link");
    let decoded = String::from_utf8(
        STANDARD
            .decode(link.rsplit('/').next().expect("b64"))
            .expect("b64"),
    )
    .expect("utf8");
    assert!(
        decoded.contains(&format!(";ac.invoice={order};")),
        "{decoded}"
    );
}

#[tokio::test]
async fn the_sandbox_payer_pays_and_cancels_through_the_real_endpoint() {
    let app = spawn_app().await;
    let p = app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let res = app
        .client
        .post(app.url(&format!("/sandbox/payme/{id}/pay")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_eq!(res.status().as_u16(), 200);
    let report: Value = res.json().await.expect("json");
    let methods: Vec<&str> = report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["method"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        methods,
        [
            "CheckPerformTransaction",
            "CreateTransaction",
            "PerformTransaction",
            "CheckTransaction"
        ]
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "succeeded"
    );
    // Paying again is refused by Payme's rules, not by the payer.
    let again = app
        .client
        .post(app.url(&format!("/sandbox/payme/{id}/pay")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_eq!(again.status().as_u16(), 422);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["calls"][0]["answer"]["error"]["code"], -31051);
    let cancel = app
        .client
        .post(app.url(&format!("/sandbox/payme/{id}/cancel")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.status().as_u16(), 200);
    assert_eq!(
        app.get_json(&format!("/v1/payments/{id}")).await["status"],
        "refunded"
    );
    let nothing = app
        .client
        .post(app.url(&format!("/sandbox/payme/{id}/cancel")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("cancel");
    assert_problem(nothing, 409, "nothing_to_cancel").await;
    let unknown = app
        .client
        .post(app.url("/sandbox/payme/pay_x/pay"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("pay");
    assert_problem(unknown, 404, "not_found").await;
    // The payer signs with the real Payme key: only the merchant may have it play Payme.
    for path in [
        format!("/sandbox/payme/{id}/pay"),
        format!("/sandbox/payme/{id}/cancel"),
        format!("/sandbox/click/{id}/pay"),
    ] {
        let res = app.client.post(app.url(&path)).send().await.expect("call");
        assert_problem(res, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn the_sandbox_payer_is_not_mounted_in_production() {
    let app = spawn_app_with(
        Db::Sqlite,
        |s| s.mode = tolov::config::Mode::Production,
        Overrides::default(),
    )
    .await;
    let res = app
        .client
        .post(app.url("/sandbox/payme/pay_01JD3Z8Q4S5V6W7X8Y9Z0A1B2C/pay"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("req");
    assert_problem(res, 404, "route_not_found").await;
}

// Fiscal receipt lines (§1.6 `detail`): given at payment creation, answered to Payme.

fn receipt() -> Value {
    json!({
        "items": [
            {"title": "Чай зелёный", "price": 50_000, "count": 2, "code": "10899002001000000",
             "package_code": "1495186", "vat_percent": 12, "discount": 10_000},
            {"title": "Choynak", "price": 40_000, "count": 1, "code": "07323001001000000",
             "package_code": "1343587", "vat_percent": 12, "units": 241092}
        ],
        "shipping": {"title": "Yetkazib berish", "price": 20_000}
    })
}

#[tokio::test]
async fn a_receipt_reaches_payme_as_the_detail_of_check_perform_transaction() {
    let p = payme_app().await;
    let mut body = payment_body("payme", 150_000);
    body["receipt"] = receipt();
    let res = p.app.create_payment(&body).await;
    assert_eq!(res.status().as_u16(), 201);
    let created: Value = res.json().await.expect("json");
    let order = created["id"].as_str().expect("id").to_owned();
    // What Payme will print: the lines as given, receipt type 0 (sale) and a zero discount
    // filled in where they were left out.
    let mut detail = receipt();
    detail["receipt_type"] = json!(0);
    detail["items"][1]["discount"] = json!(0);
    assert_eq!(created["provider_data"]["detail"], detail);
    let answer = p
        .ok(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)}),
        )
        .await;
    assert_eq!(answer, json!({"allow": true, "detail": detail}));

    // Without a receipt the answer is the bare allow.
    let plain = p.payment(150_000).await;
    let answer = p
        .ok(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&plain)}),
        )
        .await;
    assert_eq!(answer, json!({"allow": true}));
}

#[tokio::test]
async fn malformed_receipts_are_refused_and_nothing_is_stored() {
    let p = payme_app().await;
    let before = p.app.snapshot().await;
    let with = |provider: &str, edit: &dyn Fn(&mut Value)| {
        let mut body = payment_body(provider, 150_000);
        let mut r = receipt();
        edit(&mut r);
        body["receipt"] = r;
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("click", &|_| {}), "receipt"),
        (with("payme", &|r| r["items"] = json!([])), "receipt.items"),
        (
            with("payme", &|r| {
                r["items"][1]["code"] = json!("0732300100100000")
            }),
            "receipt.items[1].code",
        ),
        (
            with("payme", &|r| r["items"][0]["discount"] = json!(100_001)),
            "receipt.items[0].discount",
        ),
        (
            with("payme", &|r| r["items"][0]["vat_percent"] = json!(-1)),
            "receipt.items[0].vat_percent",
        ),
        (
            with("payme", &|r| r["items"][0]["count"] = json!(0)),
            "receipt.items[0].count",
        ),
        (
            with("payme", &|r| r["shipping"]["title"] = json!("")),
            "receipt.shipping.title",
        ),
        (
            with("payme", &|r| r["receipt_type"] = json!(1)),
            "receipt.receipt_type",
        ),
    ];
    for (body, field) in cases {
        let problem =
            assert_problem(p.app.create_payment(&body).await, 422, "validation_failed").await;
        assert!(
            problem["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .any(|e| e["field"] == field),
            "{field}: {problem}"
        );
    }
    // Wrong types and unknown fields never reach validation.
    for body in [
        with("payme", &|r| r["items"][0]["price"] = json!("50000")),
        with("payme", &|r| r["items"][0]["price"] = json!(500.5)),
        with("payme", &|r| r["items"][0]["colour"] = json!("green")),
        with("payme", &|r| r["items"] = json!({"title": "x"})),
        with("payme", &|r| *r = json!("receipt")),
    ] {
        assert_problem(p.app.create_payment(&body).await, 422, "invalid_request").await;
    }
    assert_eq!(p.app.snapshot().await, before, "nothing stored");
}

/// Several instances behind a load balancer: a key changed through one of them stops working on
/// every other one within the key's cache lifetime (5 s), and the new key works everywhere.
#[tokio::test]
async fn a_changed_key_stops_working_on_every_instance() {
    let a = spawn_app().await;
    let clock = Arc::new(ManualClock::default());
    let b = a
        .second_instance_with(Overrides {
            clock: Some(clock.clone()),
            ..Overrides::default()
        })
        .await;
    let call = |app: &TestApp, key: &str, method: &str, params: Value| {
        let req = app
            .client
            .post(app.url("/v1/payme"))
            .header("authorization", basic(&format!("Paycom:{key}")))
            .json(&json!({"method": method, "params": params, "id": 1}));
        async move {
            let v: Value = req.send().await.expect("req").json().await.expect("json");
            v["error"]["code"].as_i64()
        }
    };
    let probe =
        json!({"amount": 100_000, "account": {"order_id": "pay_00000000000000000000000000"}});
    // B has the configured key in its cache.
    assert_eq!(
        call(&b, KEY, "CheckPerformTransaction", probe.clone()).await,
        Some(-31050)
    );
    assert_eq!(
        call(
            &a,
            KEY,
            "ChangePassword",
            json!({"password": "rotated-key"})
        )
        .await,
        None
    );
    clock.advance(Duration::seconds(6));
    assert_eq!(
        call(&b, KEY, "CheckPerformTransaction", probe.clone()).await,
        Some(-32504),
        "the old key no longer works on the other instance"
    );
    assert_eq!(
        call(&b, "rotated-key", "CheckPerformTransaction", probe.clone()).await,
        Some(-31050),
        "the new key works there"
    );
    assert_eq!(
        call(&b, KEY, "ChangePassword", json!({"password": KEY})).await,
        Some(-32504)
    );
}

/// A second PostgreSQL connection holding the payment's row (`FOR UPDATE` in an open
/// transaction), so tolov's changes of it wait until the test commits or rolls back.
async fn lock_payment_row(p: &Payme, order: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut blocker = sqlx::PgConnection::connect(&p.app.database_url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query("SELECT id FROM payments WHERE id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut blocker)
        .await
        .expect("lock");
    blocker
}

/// A call that outlasts `server.request_timeout_secs` (here: the payment's row is locked by
/// another transaction) still answers Payme in JSON-RPC, HTTP 200, with its `id` (-32400,
/// "retry"), and leaves nothing half-done: the retry succeeds once the row is free.
#[tokio::test]
async fn a_call_that_takes_too_long_is_answered_32400_in_json_rpc() {
    let p = payme_app_with(Db::Postgres, |s| s.server.request_timeout_secs = 1).await;
    let order = p.payment(150_000).await;
    let create = json!({"id": payme_id(1), "time": p.now_ms(), "amount": 150_000,
        "account": {"order_id": order}});
    let mut blocker = lock_payment_row(&p, &order).await;
    let before = p.app.snapshot().await;
    let e = p.err("CreateTransaction", create.clone(), -32400).await;
    assert!(e["message"]["en"].is_string(), "{e}");
    assert_eq!(p.app.snapshot().await, before);
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("rollback");
    let r = p.ok("CreateTransaction", create).await;
    assert_eq!(r["state"], 1, "{r}");
    assert_eq!(p.status(&order).await, "processing");
}

/// The -32400 deadline counts from the request's arrival, as the server-wide timeout does: a
/// body that arrives slowly (a slow link or proxy) must not leave the server's 503 to answer.
#[tokio::test]
async fn a_slowly_sent_call_that_takes_too_long_is_still_32400_in_json_rpc() {
    let p = payme_app_with(Db::Postgres, |s| s.server.request_timeout_secs = 1).await;
    let order = p.payment(150_000).await;
    let body = json!({"method": "CreateTransaction", "id": 7, "params": {"id": payme_id(1),
        "time": p.now_ms(), "amount": 150_000, "account": {"order_id": order}}})
    .to_string();
    let mut blocker = lock_payment_row(&p, &order).await;
    let before = p.app.snapshot().await;
    let auth = basic(&format!("Paycom:{KEY}"));
    let (status_line, answer) = post_slowly(
        &p.app,
        "/v1/payme",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "text/json; charset=UTF-8"),
        ],
        &body,
        std::time::Duration::from_millis(300),
    )
    .await;
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{answer}");
    let v: Value = serde_json::from_str(&answer).expect("JSON-RPC");
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(7), json!(-32400)),
        "{v}"
    );
    assert_eq!(p.app.snapshot().await, before);
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("rollback");
}

/// A Perform that reads the transaction just before another Perform of it commits, at the moment
/// its 12 hours run out, must not answer -31008 for a transaction that ended performed: it
/// answers the stored perform, like every repeat (§1.6 PerformTransaction, state 2). The
/// payment's row is held by a second connection so both Performs are inside at once.
#[tokio::test]
async fn a_perform_losing_to_a_perform_at_the_12_hour_mark_answers_the_stored_perform() {
    let p = payme_app_with(Db::Postgres, |_| {}).await;
    let order = p.payment(150_000).await;
    let time = p.now_ms() - 43_200_000 + 60_000;
    p.ok(
        "CreateTransaction",
        json!({"id": payme_id(1), "time": time, "amount": 150_000, "account": account(&order)}),
    )
    .await;
    let mut blocker = lock_payment_row(&p, &order).await;
    let first = p.call("PerformTransaction", json!({"id": payme_id(1)}));
    let second = async {
        // The first Perform is waiting on the row (even on a busy machine); now the 12 hours
        // are over.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        p.clock.advance(Duration::minutes(2));
        let answer = p.call("PerformTransaction", json!({"id": payme_id(1)}));
        let release = async {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            sqlx::query("COMMIT")
                .execute(&mut blocker)
                .await
                .expect("commit");
        };
        tokio::join!(answer, release).0
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first["result"]["state"], 2, "{first}");
    assert_eq!(second, first, "the loser answers the stored perform");
    let check = p.ok("CheckTransaction", json!({"id": payme_id(1)})).await;
    assert_eq!(check["state"], 2, "{check}");
    assert_eq!(p.status(&order).await, "succeeded");
}

/// §1.6 ChangePassword: a key tolov could not store is answered -32400 (Payme retries), and
/// the current key keeps working; the new one does not. Here PostgreSQL refuses the write.
#[tokio::test]
async fn a_change_password_that_cannot_be_stored_is_32400_and_keeps_the_old_key() {
    use sqlx::Connection;
    let p = payme_app_with(Db::Postgres, |_| {}).await;
    let mut db = sqlx::PgConnection::connect(&p.app.database_url)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_settings() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER refuse_settings BEFORE INSERT OR UPDATE ON settings FOR EACH ROW
           EXECUTE FUNCTION refuse_settings();",
    )
    .execute(&mut db)
    .await
    .expect("install fault");
    p.err(
        "ChangePassword",
        json!({"password": "never-stored-key"}),
        -32400,
    )
    .await;
    let order = p.payment(150_000).await;
    assert_eq!(
        p.ok(
            "CheckPerformTransaction",
            json!({"amount": 150_000, "account": account(&order)})
        )
        .await["allow"],
        true,
        "the configured key still works"
    );
    let body = json!({"method": "CheckTransaction", "params": {"id": "x"}, "id": 7});
    let refused = p
        .raw(Some(&basic("Paycom:never-stored-key")), body.to_string())
        .await;
    assert_eq!(refused["error"]["code"], -32504, "{refused}");
}
