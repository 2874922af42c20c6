//! Operational surface: health, readiness, metrics, the OpenAPI document, request ids, the
//! hosted payment page and the payer-facing checkout API.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::*;

fn header_str(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn metrics_text(app: &TestApp) -> String {
    let res = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    let ct = header_str(&res, "content-type");
    assert!(ct.starts_with("text/plain"), "{ct}");
    res.text().await.expect("metrics text")
}

/// Sample lines `name{...} value` (or `name value`) whose label part contains every `labels`.
fn samples<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample has a value");
            (series, value.parse::<f64>().expect("numeric sample value"))
        })
        .collect()
}

fn total(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name, labels).iter().map(|(_, v)| v).sum()
}

#[tokio::test]
async fn healthz_says_ok() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(header_str(&res, "content-type"), "application/json");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_ready_when_the_database_answers() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app_on(db).await;
        let res = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 200, "{db:?}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body, json!({"status": "ready"}), "{db:?}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_payments_by_status() {
    let app = spawn_app().await;
    let created_201 = [
        "method=\"POST\"",
        "route=\"/v1/payments\"",
        "status=\"201\"",
    ];

    let before = metrics_text(&app).await;
    let created_before = total(&before, "tolov_http_requests_total", &created_201);

    let mut ids = Vec::new();
    for amount in [10_000, 20_000, 30_000] {
        let p = app.new_payment("payme", amount).await;
        ids.push(p["id"].as_str().expect("id").to_owned());
    }
    let canceled = app
        .post_json(&format!("/v1/payments/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(canceled.status().as_u16(), 200);
    app.get_json(&format!("/v1/payments/{}", ids[1])).await;
    let unknown_path = format!("/no/such/route/{}", ulid::Ulid::new());
    let res = app.get(&unknown_path).await;
    assert_eq!(res.status().as_u16(), 404);

    let after = metrics_text(&app).await;

    // Counters are process-wide (other tests run in parallel): only growth is exact.
    let created_after = total(&after, "tolov_http_requests_total", &created_201);
    assert!(
        created_after >= created_before + 3.0,
        "POST /v1/payments 201 went from {created_before} to {created_after}\n{after}"
    );
    assert!(
        !samples(
            &after,
            "tolov_http_requests_total",
            &[
                "route=\"/v1/payments/{id}\"",
                "method=\"GET\"",
                "status=\"200\""
            ]
        )
        .is_empty(),
        "GET /v1/payments/{{id}} is counted under its pattern\n{after}"
    );
    assert!(
        total(
            &after,
            "tolov_http_requests_total",
            &["route=\"unmatched\""]
        ) >= 1.0,
        "unknown routes are counted as route=\"unmatched\"\n{after}"
    );
    // Labels carry route patterns, never raw paths or ids.
    for id in &ids {
        assert!(!after.contains(id.as_str()), "{id} leaked into a label");
    }
    assert!(!after.contains(&unknown_path), "raw unknown path leaked");
    // Methods are a label too: made-up ones are counted as OTHER, so they cannot grow the
    // label set either.
    let made_up = format!("M{}", ulid::Ulid::new());
    let res = app
        .client
        .request(
            reqwest::Method::from_bytes(made_up.as_bytes()).expect("method"),
            app.url("/healthz"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 405);
    let after = metrics_text(&app).await;
    assert!(
        !after.contains(&made_up),
        "a made-up method leaked into a label"
    );
    assert!(
        total(&after, "tolov_http_requests_total", &["method=\"OTHER\""]) >= 1.0,
        "{after}"
    );

    let buckets = samples(
        &after,
        "tolov_http_request_duration_seconds_bucket",
        &["route=\"/v1/payments\"", "method=\"POST\""],
    );
    assert!(!buckets.is_empty(), "latency histogram buckets\n{after}");
    assert!(
        buckets
            .iter()
            .any(|(series, _)| series.contains("le=\"+Inf\"")),
        "a +Inf bucket\n{after}"
    );
    let inf = buckets
        .iter()
        .find(|(series, _)| series.contains("le=\"+Inf\""))
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    let count = total(
        &after,
        "tolov_http_request_duration_seconds_count",
        &["route=\"/v1/payments\"", "method=\"POST\""],
    );
    assert!(inf >= 3.0 && count >= 3.0, "inf {inf}, count {count}");

    // The payments gauge is counted from this app's database: exact.
    assert!(after.contains("# TYPE tolov_payments gauge"), "{after}");
    let gauge = |status: &str| {
        let s = samples(&after, "tolov_payments", &[&format!("status=\"{status}\"")]);
        assert_eq!(s.len(), 1, "one tolov_payments line for {status}\n{after}");
        s[0].1
    };
    assert_eq!(gauge("pending"), 2.0);
    assert_eq!(gauge("canceled"), 1.0);
    for status in [
        "processing",
        "succeeded",
        "partially_refunded",
        "refunded",
        "failed",
        "expired",
    ] {
        assert_eq!(gauge(status), 0.0, "{status}");
    }
}

/// Every path the OpenAPI document must describe, and nothing else.
const DOCUMENTED: [&str; 28] = [
    "/v1/payments",
    "/pay/{id}",
    "/v1/payments/{id}",
    "/v1/payments/{id}/cancel",
    "/v1/payments/{id}/refunds",
    "/v1/payments/{id}/events",
    "/v1/checkout/{id}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/payme",
    "/sandbox/payme/{id}/pay",
    "/sandbox/payme/{id}/cancel",
    "/v1/click/prepare",
    "/v1/click/complete",
    "/sandbox/click/{id}/pay",
    "/v1/events",
    "/v1/webhooks/deliveries",
    "/v1/webhooks/deliveries/{id}/retry",
    "/v1/checkout/{id}/atmos/pre-apply",
    "/v1/checkout/{id}/atmos/confirm",
    "/v1/checkout/{id}/atmos/resend-otp",
    "/v1/atmos/callback",
    "/v1/epay/callback",
    "/sandbox/epay/{payment_id}/pay",
    "/v1/payments/{id}/capture",
    "/sandbox/epay/payform/{payment_id}",
];

/// Provider callbacks answer in their provider's protocol, not with problem+json.
fn is_callback(path: &str) -> bool {
    [
        "/v1/payme",
        "/v1/click/",
        "/v1/atmos/callback",
        "/v1/epay/callback",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

#[tokio::test]
async fn openapi_documents_exactly_the_live_routes() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(header_str(&res, "content-type"), "application/json");
    let doc: Value = res.json().await.expect("openapi is JSON");
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert!(doc["info"]["title"].is_string());
    assert!(
        doc["components"]["schemas"]["Problem"].is_object(),
        "Problem schema"
    );
    assert!(
        doc["components"]["securitySchemes"]["api_key"].is_object(),
        "api_key security scheme"
    );

    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = DOCUMENTED.into_iter().collect();
    assert_eq!(documented, expected);

    let created = app.new_payment("payme", 150_000).await;
    let id = created["id"].as_str().expect("id");
    let secret = created["client_secret"].as_str().expect("client secret");

    let mut operations = 0;
    for (path, item) in paths {
        let item = item.as_object().expect("path item");
        for (method, op) in item {
            let method = match method.as_str() {
                "get" => reqwest::Method::GET,
                "post" => reqwest::Method::POST,
                "put" => reqwest::Method::PUT,
                "patch" => reqwest::Method::PATCH,
                "delete" => reqwest::Method::DELETE,
                _ => continue,
            };
            operations += 1;
            // A parameter is in the path exactly when the path template names it, and a path
            // parameter is required (OpenAPI 3); the others are query or header parameters.
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().expect("parameter name");
                let in_template = path.contains(&format!("{{{name}}}"));
                let place = param["in"].as_str().unwrap_or("");
                let allowed: &[&str] = if in_template {
                    &["path"]
                } else {
                    &["query", "header"]
                };
                assert!(
                    allowed.contains(&place),
                    "{method} {path}: parameter {name}: {param}"
                );
                if in_template {
                    assert_eq!(param["required"], true, "{method} {path}: {param}");
                }
            }
            let live_path = path.replace("{id}", id);
            let mut req = app
                .client
                .request(method.clone(), app.url(&live_path))
                .bearer_auth(API_KEY)
                .header("x-client-secret", secret);
            if method == reqwest::Method::POST {
                let body = if path == "/v1/payments" {
                    payment_body("click", 150_000)
                } else {
                    json!({})
                };
                req = req.json(&body);
            }
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            let text = res.text().await.expect("body");
            let what = format!("{method} {path} -> {status} {text}");
            assert!(
                !text.contains("route_not_found") && status != 405,
                "documented but not served: {what}"
            );
            assert!(status < 500, "{what}");
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key(&status.to_string()),
                "live status is not among the documented responses {:?}: {what}",
                responses.keys().collect::<Vec<_>>()
            );
            // Our own problem+json routes document the refusals every one of them can give:
            // the database out of reach or the request out of time (503), an undecodable id
            // (400), a body too large or not JSON (413, 415).
            let ours =
                (path.starts_with("/v1/") || path.starts_with("/sandbox/")) && !is_callback(path);
            if ours {
                assert!(
                    responses.contains_key("503"),
                    "{method} {path}: 503 undocumented"
                );
            }
            if ours && path.contains("{") {
                let bad_id = path.replace("{id}", "%FF").replace("{payment_id}", "%FF");
                let res = app
                    .client
                    .request(method.clone(), app.url(&bad_id))
                    .bearer_auth(API_KEY)
                    .header("x-client-secret", secret)
                    .send()
                    .await
                    .expect("request");
                let status = res.status().as_u16();
                assert!(
                    responses.contains_key(&status.to_string()),
                    "{method} {bad_id} -> {status}, documented {:?}",
                    responses.keys().collect::<Vec<_>>()
                );
            }
            if ours && method == reqwest::Method::POST {
                for (content_type, body) in [
                    ("text/plain", "{}".to_owned()),
                    ("application/json", " ".repeat(100_000)),
                ] {
                    let res = app
                        .client
                        .post(app.url(&live_path))
                        .bearer_auth(API_KEY)
                        .header("x-client-secret", secret)
                        .header("content-type", content_type)
                        .body(body)
                        .send()
                        .await
                        .expect("request");
                    let status = res.status().as_u16();
                    assert!(
                        responses.contains_key(&status.to_string()),
                        "POST {path} with {content_type} -> {status}, documented {:?}",
                        responses.keys().collect::<Vec<_>>()
                    );
                }
            }
            // Our own JSON routes also document how they refuse a body that is not JSON.
            if method == reqwest::Method::POST && path.starts_with("/v1/") && !is_callback(path) {
                let res = app
                    .client
                    .post(app.url(&live_path))
                    .bearer_auth(API_KEY)
                    .header("x-client-secret", secret)
                    .header("content-type", "application/json")
                    .body("{")
                    .send()
                    .await
                    .expect("request");
                let status = res.status().as_u16();
                assert!(
                    responses.contains_key(&status.to_string()),
                    "POST {path} with a malformed body -> {status}, documented {:?}",
                    responses.keys().collect::<Vec<_>>()
                );
            }
        }
    }
    assert_eq!(
        operations, 29,
        "one operation per route, two on /v1/payments"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_client_one_is_echoed() {
    let app = spawn_app().await;
    let p = app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");

    let big = "x".repeat(70 * 1024);
    let responses = vec![
        ("healthz", app.client.get(app.url("/healthz")).send()),
        ("metrics", app.client.get(app.url("/metrics")).send()),
        (
            "route_not_found",
            app.client.get(app.url("/v1/nope")).send(),
        ),
        (
            "method_not_allowed",
            app.client.delete(app.url("/v1/payments")).send(),
        ),
        (
            "unauthorized",
            app.client.get(app.url("/v1/payments")).send(),
        ),
        (
            "payload_too_large",
            app.client
                .post(app.url("/v1/payments"))
                .bearer_auth(API_KEY)
                .json(&json!({ "description": big }))
                .send(),
        ),
        (
            "validation_failed",
            app.client
                .post(app.url("/v1/payments"))
                .bearer_auth(API_KEY)
                .json(&payment_body("payme", -1))
                .send(),
        ),
        (
            "read payment",
            app.client
                .get(app.url(&format!("/v1/payments/{id}")))
                .bearer_auth(API_KEY)
                .send(),
        ),
        (
            "hosted page",
            app.client.get(app.url(&format!("/pay/{id}"))).send(),
        ),
    ];
    let mut seen = BTreeSet::new();
    for (what, fut) in responses {
        let res = fut.await.expect("request");
        let rid = header_str(&res, "x-request-id");
        assert!(
            !rid.is_empty(),
            "{what} ({}) has no x-request-id",
            res.status()
        );
        assert!(seen.insert(rid.clone()), "{what}: request id {rid} reused");
    }

    for (what, req) in [
        ("healthz", app.client.get(app.url("/healthz"))),
        ("unauthorized", app.client.get(app.url("/v1/payments"))),
        ("route_not_found", app.client.get(app.url("/v1/nope"))),
        (
            "created",
            app.client
                .post(app.url("/v1/payments"))
                .bearer_auth(API_KEY)
                .json(&payment_body("click", 150_000)),
        ),
    ] {
        let res = req
            .header("x-request-id", "abc-123")
            .send()
            .await
            .expect("request");
        assert_eq!(header_str(&res, "x-request-id"), "abc-123", "{what}");
        let all: Vec<_> = res.headers().get_all("x-request-id").iter().collect();
        assert_eq!(all.len(), 1, "{what}: exactly one x-request-id");
    }
}

/// The page speaks the payment's language, leads back to the shop, and takes card data under
/// a policy that allows no plugins, no `<base>` rewriting and no native form posts.
#[tokio::test]
async fn the_hosted_page_is_in_the_payment_s_language_leads_back_and_is_locked_down() {
    let app = spawn_app().await;
    let mut body = payment_body("atmos", 150_000);
    body["language"] = json!("uz");
    body["return_url"] = json!("https://shop.example.uz/done?x=1&y=2");
    let (id, page) = page_with_secret(&app, &body).await;
    let res = app
        .client
        .get(app.url(&format!("/pay/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(header_str(&res, "x-content-type-options"), "nosniff");
    let csp = header_str(&res, "content-security-policy");
    for rule in [
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(rule), "{rule}: {csp}");
    }
    let html = res.text().await.expect("html");
    assert!(html.contains("<html lang=\"uz\">"), "{html}");
    for uz in ["Holat: <strong", "Karta raqami", "SMS kodni olish"] {
        assert!(html.contains(uz), "{uz}: {html}");
    }
    assert!(!html.contains("Card number"), "{html}");
    let driver = r#"
  await loaded;
  check(elements.status.textContent === "to'lov kutilmoqda", "the status in Uzbek");
  check(!elements.back.hidden && elements.back_a.href === "https://shop.example.uz/done?x=1&y=2", "the way back");
"#;
    let (ok, out) = run_page(&app, &page, driver).await;
    assert!(ok, "{out}");
}

/// What is being paid is shown to whoever holds the client secret, in major units and as text
/// (markup in a description stays text); the payment id alone shows none of it.
#[tokio::test]
async fn hosted_page_shows_major_units_and_escapes_the_description() {
    let app = spawn_app().await;
    let description = "<script>alert('x')</script> & \"tea\"";
    let mut body = payment_body("payme", 150_000);
    body["description"] = json!(description);
    let (id, page) = page_with_secret(&app, &body).await;

    let res = app
        .client
        .get(app.url(&format!("/pay/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    let ct = header_str(&res, "content-type");
    assert!(ct.starts_with("text/html"), "{ct}");
    assert_eq!(header_str(&res, "referrer-policy"), "no-referrer");
    let html = res.text().await.expect("html");
    for private in ["tea", "1500", "alert"] {
        assert!(
            !html.contains(private),
            "{private} without the secret: {html}"
        );
    }
    let driver = format!(
        r#"
  await loaded;
  check(elements.amount.textContent === "1500.00 UZS", "major units: " + elements.amount.textContent);
  check(elements.desc.textContent === {description}, "the description as text");
  check(!elements.pay.hidden && elements.pay_a.href.startsWith("https://test.paycom.uz/"), "the pay link");
"#,
        description = json!(description)
    );
    let (ok, out) = run_page(&app, &page, &driver).await;
    assert!(ok, "{out}");

    // Without the secret, or with a wrong one: nothing about the payment, and how to get in.
    let bare = page.split('#').next().expect("url").to_owned();
    for url in [bare.clone(), format!("{bare}#cs=wrong")] {
        let driver = r#"
  await loaded;
  check(elements.amount.textContent === "" && elements.desc.textContent === "", "nothing shown");
  check(elements.pay.hidden, "no pay link");
  check(elements.msg.textContent === "Do'kon bergan to'lov havolasini oching.", "how to get in");
"#;
        let (ok, out) = run_page(&app, &url, driver).await;
        assert!(ok, "{url}: {out}");
    }

    let mut kzt = payment_body("epay", 150_050);
    kzt["language"] = json!("en");
    let (_, page) = page_with_secret(&app, &kzt).await;
    let driver = r#"
  await loaded;
  check(elements.amount.textContent === "1500.50 KZT", elements.amount.textContent);
"#;
    let (ok, out) = run_page(&app, &page, driver).await;
    assert!(ok, "{out}");

    for unknown in [
        "pay_01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned(),
        "pay_x".to_owned(),
        "%3Cscript%3E".to_owned(),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/pay/{unknown}")))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 404, "/pay/{unknown}");
        let text = res.text().await.expect("body");
        assert!(!text.contains("<script>"), "{text}");
    }
}

#[tokio::test]
async fn checkout_view_needs_the_client_secret_and_hides_merchant_fields() {
    let app = spawn_app().await;
    let created = app.new_payment("payme", 150_000).await;
    let id = created["id"].as_str().expect("id");
    let secret = created["client_secret"].as_str().expect("client secret");
    let other = app.new_payment("payme", 150_000).await;
    let other_secret = other["client_secret"].as_str().expect("client secret");
    let path = format!("/v1/checkout/{id}");

    let before = app.snapshot().await;
    let res = app
        .client
        .get(app.url(&path))
        .header("x-client-secret", secret)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    let view: Value = res.json().await.expect("json");
    assert_eq!(view["id"], id);
    assert_eq!(view["status"], "pending");
    assert_eq!(view["amount"], 150_000);
    assert_eq!(view["currency"], "UZS");
    assert_eq!(view["provider"], "payme");
    for hidden in ["client_secret", "order_id", "metadata"] {
        assert!(view.get(hidden).is_none(), "{hidden} exposed: {view}");
    }
    let expires = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339")
    };
    assert_eq!(expires(&view), expires(&created), "same expiry instant");

    let wrong = [
        ("missing secret", None),
        ("wrong secret", Some("pay_x_secret_nope".to_owned())),
        ("empty secret", Some(String::new())),
        ("another payment's secret", Some(other_secret.to_owned())),
        (
            "secret with a flipped last character",
            Some({
                let mut s = secret.to_owned();
                let last = s.pop().expect("non-empty");
                s.push(if last == 'A' { 'B' } else { 'A' });
                s
            }),
        ),
        ("the merchant API key", Some(API_KEY.to_owned())),
    ];
    for (what, presented) in wrong {
        let mut req = app.client.get(app.url(&path));
        if let Some(s) = &presented {
            req = req.header("x-client-secret", s.as_str());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        assert_eq!(status, 401, "{what}");
        assert_problem(res, 401, "invalid_client_secret").await;
    }
    // The merchant's bearer key does not open the payer's view either.
    let res = app
        .client
        .get(app.url(&path))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("request");
    assert_problem(res, 401, "invalid_client_secret").await;

    let res = app
        .client
        .get(app.url("/v1/checkout/pay_01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .header("x-client-secret", secret)
        .send()
        .await
        .expect("request");
    assert_problem(res, 404, "not_found").await;
    assert_eq!(before, app.snapshot().await, "reading changes nothing");
}

/// With `server.metrics_token` set, `/metrics` (payment counts by status, request rates) is
/// read only with `Authorization: Bearer <token>`; without it, it stays open.
#[tokio::test]
async fn metrics_can_be_closed_behind_a_token() {
    let app = spawn_app_with(
        Db::Sqlite,
        |s| s.server.metrics_token = secrecy::SecretString::from("scrape-token-0123456789"),
        tolov::startup::Overrides::default(),
    )
    .await;
    let get = |token: Option<&'static str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_problem(get(None).await.expect("req"), 401, "unauthorized").await;
    assert_problem(get(Some("wrong")).await.expect("req"), 401, "unauthorized").await;
    let ok = get(Some("scrape-token-0123456789")).await.expect("req");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.text().await.expect("text").contains("tolov_payments"));
    // The scheme is case-insensitive (RFC 9110 §11.1), as on the merchant API.
    let lower = app
        .client
        .get(app.url("/metrics"))
        .header("Authorization", "bearer scrape-token-0123456789")
        .send()
        .await
        .expect("req");
    assert_eq!(lower.status().as_u16(), 200);
}

/// A database that drops the connections (a failover, a restart) is "retry later" for the
/// merchant, `503 database_unavailable`, not a 500 that reads as tolov's bug; the next request
/// gets a fresh connection.
#[tokio::test]
async fn a_database_that_drops_its_connections_is_503_and_then_served_again() {
    use sqlx::Connection;
    let app = spawn_app_on(Db::Postgres).await;
    let p = app.new_payment("payme", 10_000).await;
    let path = format!("/v1/payments/{}", p["id"].as_str().expect("id"));
    let mut admin = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .expect("terminate");
    let problem = assert_problem(app.get(&path).await, 503, "database_unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("retry"),
        "{problem}"
    );
    assert_eq!(app.get(&path).await.status(), 200);
}
