//! The malformed-input matrix: every bad request to the merchant API is answered with a 4xx
//! `application/problem+json` carrying a stable `code` (never a 5xx), and leaves the database
//! exactly as it was.
//!
//! Each case is one row of a table: a name, the request, the expected status and code (and,
//! for `validation_failed`, the field the `errors` array must name). All rows run even when one
//! fails; the test then lists every failing row by name.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tolov::domain::{Actor, PaymentId, PaymentStatus};
use tolov::lifecycle::change_status;
use tolov::startup::Overrides;

use crate::helpers::*;

const PAYMENTS: &str = "/v1/payments";
const JSON: Option<&str> = Some("application/json");
/// A well-formed payment id (`pay_` + a valid ULID) that no test ever creates.
const MISSING_ID: &str = "pay_01ARZ3NDEKTSV4RRFFQ69G5FAV";
/// `'; DROP TABLE payments;--`, percent-encoded for the path.
const SQL_INJECTION: &str = "%27%3B%20DROP%20TABLE%20payments%3B--";
/// The Idempotency-Key the set-up's pending payment was created with.
const USED_KEY: &str = "matrix-setup-key-1";

// ---------------------------------------------------------------------------------------------
// The table's vocabulary.

#[derive(Debug, Clone)]
enum Auth {
    /// `Authorization: Bearer <valid key>`.
    Key,
    /// No `Authorization` header.
    Missing,
    /// This exact `Authorization` header value.
    Raw(String),
}

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    auth: Auth,
    headers: Vec<(&'static str, HeaderValue)>,
    /// Body bytes and the `Content-Type` to send with them (none: no header).
    body: Option<(Vec<u8>, Option<&'static str>)>,
}

fn request(method: Method, path: impl Into<String>) -> Request {
    Request {
        method,
        path: path.into(),
        auth: Auth::Key,
        headers: Vec::new(),
        body: None,
    }
}

fn get(path: impl Into<String>) -> Request {
    request(Method::GET, path)
}

fn post(path: impl Into<String>) -> Request {
    request(Method::POST, path)
}

impl Request {
    fn json(self, body: Value) -> Self {
        let bytes = serde_json::to_vec(&body).expect("serializable body");
        self.raw(bytes, JSON)
    }

    fn raw(mut self, bytes: impl Into<Vec<u8>>, content_type: Option<&'static str>) -> Self {
        self.body = Some((bytes.into(), content_type));
        self
    }

    fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn idempotency_key(self, value: HeaderValue) -> Self {
        self.header("idempotency-key", value)
    }

    fn no_auth(mut self) -> Self {
        self.auth = Auth::Missing;
        self
    }

    fn authorization(mut self, value: impl Into<String>) -> Self {
        self.auth = Auth::Raw(value.into());
        self
    }

    async fn send(&self, app: &TestApp) -> reqwest::Response {
        let mut rb = app.client.request(self.method.clone(), app.url(&self.path));
        match &self.auth {
            Auth::Key => rb = rb.bearer_auth(API_KEY),
            Auth::Missing => {}
            Auth::Raw(v) => rb = rb.header(AUTHORIZATION, v.as_str()),
        }
        for (name, value) in &self.headers {
            rb = rb.header(*name, value.clone());
        }
        if let Some((bytes, content_type)) = &self.body {
            if let Some(ct) = content_type {
                rb = rb.header(CONTENT_TYPE, *ct);
            }
            rb = rb.body(bytes.clone());
        }
        rb.send().await.expect("request is sent")
    }
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    request: Request,
    status: u16,
    code: &'static str,
    /// For `validation_failed`: a field the `errors` array must name.
    field: Option<&'static str>,
    /// A substring the `detail` must contain (e.g. the missing field's name).
    detail_has: Option<&'static str>,
}

fn case(name: impl Into<String>, request: Request, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        request,
        status,
        code,
        field: None,
        detail_has: None,
    }
}

/// A `422 validation_failed` whose `errors` array names `field`.
fn invalid(name: impl Into<String>, request: Request, field: &'static str) -> Case {
    Case {
        field: Some(field),
        ..case(name, request, 422, "validation_failed")
    }
}

impl Case {
    fn detail_has(mut self, s: &'static str) -> Self {
        self.detail_has = Some(s);
        self
    }
}

/// A valid creation body (payme, 1 500.00 UZS) with `key` set to `value`.
fn body_with(key: &str, value: Value) -> Value {
    let mut body = payment_body("payme", 150_000);
    body.as_object_mut()
        .expect("payment_body is an object")
        .insert(key.to_owned(), value);
    body
}

/// A valid creation body with `key` removed.
fn body_without(key: &str) -> Value {
    let mut body = payment_body("payme", 150_000);
    body.as_object_mut()
        .expect("payment_body is an object")
        .remove(key);
    body
}

/// `POST /v1/payments` with a valid body whose `key` is replaced by `value`.
fn create_with(key: &str, value: Value) -> Request {
    post(PAYMENTS).json(body_with(key, value))
}

fn provider_with_currency(provider: &str, currency: &str) -> Request {
    let mut body = payment_body(provider, 150_000);
    body["currency"] = json!(currency);
    post(PAYMENTS).json(body)
}

fn amount_for(provider: &str, amount: i64) -> Request {
    post(PAYMENTS).json(payment_body(provider, amount))
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("valid header value")
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// `POST /v1/payments` with a bad body or bad headers.
fn creation_cases() -> Vec<Case> {
    let many_keys: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
    let big_description = "x".repeat(70 * 1024);
    vec![
        // Not JSON at all, or not a JSON object.
        case("garbage bytes", post(PAYMENTS).raw(&b"\x00\xff\xfe garbage \x01"[..], JSON), 400, "malformed_json"),
        case("truncated JSON", post(PAYMENTS).raw(r#"{"provider":"payme","amount":"#, JSON), 400, "malformed_json"),
        case("trailing garbage after the object", post(PAYMENTS).raw(r#"{"provider":"payme"} x"#, JSON), 400, "malformed_json"),
        case("invalid UTF-8 inside a string", post(PAYMENTS).raw(&b"{\"provider\":\"pay\xffme\"}"[..], JSON), 400, "malformed_json"),
        case("JSON array instead of object", post(PAYMENTS).raw("[]", JSON), 400, "malformed_json"),
        case("JSON array of a valid body", post(PAYMENTS).json(json!([payment_body("payme", 150_000)])), 400, "malformed_json"),
        case("JSON string instead of object", post(PAYMENTS).raw(r#""payme""#, JSON), 400, "malformed_json"),
        case("JSON number instead of object", post(PAYMENTS).raw("150000", JSON), 400, "malformed_json"),
        case("JSON null instead of object", post(PAYMENTS).raw("null", JSON), 400, "malformed_json"),
        case("JSON true instead of object", post(PAYMENTS).raw("true", JSON), 400, "malformed_json"),
        case("byte-order mark before the object", post(PAYMENTS).raw(&b"\xef\xbb\xbf{\"provider\":\"payme\"}"[..], JSON), 400, "malformed_json"),
        case("nesting deeper than the parser allows", post(PAYMENTS).raw(format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)), JSON), 400, "malformed_json"),
        case("metadata nested 200 levels deep", post(PAYMENTS).raw(format!(r#"{{"provider":"payme","amount":150000,"currency":"UZS","order_id":"o-1","metadata":{}1{}}}"#, r#"{"a":"#.repeat(200), "}".repeat(200)), JSON), 400, "malformed_json"),
        // Empty bodies count as `{}`, which lacks the required fields.
        case("empty body, no content-type", post(PAYMENTS).raw("", None), 422, "invalid_request").detail_has("provider"),
        case("empty body, application/json", post(PAYMENTS).raw("", JSON), 422, "invalid_request").detail_has("provider"),
        case("whitespace-only body", post(PAYMENTS).raw(" \n\t ", JSON), 422, "invalid_request"),
        case("empty object", post(PAYMENTS).json(json!({})), 422, "invalid_request"),
        // Missing required fields.
        case("missing provider", post(PAYMENTS).json(body_without("provider")), 422, "invalid_request").detail_has("provider"),
        case("missing amount", post(PAYMENTS).json(body_without("amount")), 422, "invalid_request").detail_has("amount"),
        case("missing currency", post(PAYMENTS).json(body_without("currency")), 422, "invalid_request").detail_has("currency"),
        case("missing order_id", post(PAYMENTS).json(body_without("order_id")), 422, "invalid_request").detail_has("order_id"),
        // Wrong JSON types.
        case("amount as string \"1000\"", create_with("amount", json!("1000")), 422, "invalid_request"),
        case("amount as float 10.5", create_with("amount", json!(10.5)), 422, "invalid_request"),
        case("amount as float 1000.0", create_with("amount", json!(1000.0)), 422, "invalid_request"),
        case("amount as 1e30", post(PAYMENTS).raw(r#"{"provider":"payme","amount":1e30,"currency":"UZS","order_id":"o-1"}"#, JSON), 422, "invalid_request"),
        case("amount as 1e3 (exponent form)", post(PAYMENTS).raw(r#"{"provider":"payme","amount":1e3,"currency":"UZS","order_id":"o-1"}"#, JSON), 422, "invalid_request"),
        case("amount 99999999999999999999", post(PAYMENTS).raw(r#"{"provider":"payme","amount":99999999999999999999,"currency":"UZS","order_id":"o-1"}"#, JSON), 422, "invalid_request"),
        case("amount i64::MAX + 1", post(PAYMENTS).raw(r#"{"provider":"payme","amount":9223372036854775808,"currency":"UZS","order_id":"o-1"}"#, JSON), 422, "invalid_request"),
        case("amount -0 (a float to serde_json)", post(PAYMENTS).raw(r#"{"provider":"payme","amount":-0,"currency":"UZS","order_id":"o-1"}"#, JSON), 422, "invalid_request"),
        case("amount null", create_with("amount", Value::Null), 422, "invalid_request"),
        case("amount true", create_with("amount", json!(true)), 422, "invalid_request"),
        case("amount as object", create_with("amount", json!({"value": 1000})), 422, "invalid_request"),
        case("provider as number", create_with("provider", json!(1)), 422, "invalid_request"),
        case("provider null", create_with("provider", Value::Null), 422, "invalid_request"),
        case("currency as number 860", create_with("currency", json!(860)), 422, "invalid_request"),
        case("order_id as number", create_with("order_id", json!(1001)), 422, "invalid_request"),
        case("description as number", create_with("description", json!(42)), 422, "invalid_request"),
        case("language as number", create_with("language", json!(1)), 422, "invalid_request"),
        // Unknown fields (deny_unknown_fields), including attempts to set server-owned fields.
        case("unknown field", create_with("amount_major", json!(1500)), 422, "invalid_request").detail_has("amount_major"),
        case("field name in another case", create_with("Amount", json!(150_000)), 422, "invalid_request"),
        case("server-owned field status", create_with("status", json!("succeeded")), 422, "invalid_request"),
        case("server-owned field id", create_with("id", json!(MISSING_ID)), 422, "invalid_request"),
        case("server-owned field client_secret", create_with("client_secret", json!("x")), 422, "invalid_request"),
        // Values the handler validates.
        invalid("amount negative", create_with("amount", json!(-1000)), "amount"),
        invalid("amount zero", create_with("amount", json!(0)), "amount"),
        invalid("amount i64::MIN", create_with("amount", json!(i64::MIN)), "amount"),
        invalid("unknown provider", create_with("provider", json!("stripe")), "provider"),
        invalid("provider in upper case", create_with("provider", json!("PAYME")), "provider"),
        invalid("provider empty", create_with("provider", json!("")), "provider"),
        invalid("unknown currency", create_with("currency", json!("USD")), "currency"),
        invalid("currency in lower case", create_with("currency", json!("uzs")), "currency"),
        invalid("order_id empty", create_with("order_id", json!("")), "order_id"),
        invalid("order_id blank", create_with("order_id", json!("   ")), "order_id"),
        invalid("order_id 129 chars", create_with("order_id", json!("o".repeat(129))), "order_id"),
        invalid("order_id with NUL", create_with("order_id", json!("order\u{0}1")), "order_id"),
        invalid("order_id with newline", create_with("order_id", json!("order\n1")), "order_id"),
        invalid("order_id with DEL", create_with("order_id", json!("order\u{7f}1")), "order_id"),
        invalid("order_id with C1 control", create_with("order_id", json!("order\u{85}1")), "order_id"),
        invalid("description 501 chars", create_with("description", json!("d".repeat(501))), "description"),
        invalid("description with NUL", create_with("description", json!("tea\u{0}")), "description"),
        invalid("description with an ESC sequence", create_with("description", json!("green \u{1b}[31mtea")), "description"),
        invalid("description with DEL", create_with("description", json!("green tea\u{7f}")), "description"),
        invalid("return_url not a URL", create_with("return_url", json!("not a url")), "return_url"),
        invalid("return_url ftp scheme", create_with("return_url", json!("ftp://shop.example/return")), "return_url"),
        invalid("return_url javascript scheme", create_with("return_url", json!("javascript:alert(1)")), "return_url"),
        invalid("return_url relative", create_with("return_url", json!("/return")), "return_url"),
        invalid("return_url over 2048 chars", create_with("return_url", json!(format!("https://shop.example/{}", "r".repeat(2048)))), "return_url"),
        invalid("payme return_url with ';' (breaks the checkout link)", create_with("return_url", json!("https://shop.example/r;x=1")), "return_url"),
        invalid("language de", create_with("language", json!("de")), "language"),
        invalid("language in upper case", create_with("language", json!("RU")), "language"),
        invalid("metadata as array", create_with("metadata", json!(["cart", "c-77"])), "metadata"),
        invalid("metadata as string", create_with("metadata", json!("cart=c-77")), "metadata"),
        invalid("metadata as number", create_with("metadata", json!(77)), "metadata"),
        invalid("metadata with 51 keys", create_with("metadata", Value::Object(many_keys)), "metadata"),
        invalid("metadata over 8 KiB", create_with("metadata", json!({"blob": "m".repeat(8 * 1024)})), "metadata"),
        invalid(
            "several bad fields at once (first named)",
            post(PAYMENTS).json(json!({"provider": "stripe", "amount": -1, "currency": "EUR", "order_id": "", "language": "de"})),
            "provider",
        ),
        // Provider rules.
        case("payme with KZT", provider_with_currency("payme", "KZT"), 422, "currency_mismatch"),
        case("click with KZT", provider_with_currency("click", "KZT"), 422, "currency_mismatch"),
        case("atmos with KZT", provider_with_currency("atmos", "KZT"), 422, "currency_mismatch"),
        case("epay with UZS", provider_with_currency("epay", "UZS"), 422, "currency_mismatch"),
        case("payme amount below min (99)", amount_for("payme", 99), 422, "amount_out_of_range"),
        case("epay amount below min (1)", amount_for("epay", 1), 422, "amount_out_of_range"),
        case("click amount above max", amount_for("click", 100_000_000_001), 422, "amount_out_of_range"),
        case("atmos amount i64::MAX", amount_for("atmos", i64::MAX), 422, "amount_out_of_range"),
        // Transport.
        case("body over 64 KiB", create_with("description", json!(big_description)), 413, "payload_too_large"),
        case("content-type text/plain", post(PAYMENTS).raw(serde_json::to_vec(&payment_body("payme", 150_000)).expect("json"), Some("text/plain")), 415, "unsupported_media_type"),
        case("content-type form-urlencoded", post(PAYMENTS).raw("provider=payme&amount=150000&currency=UZS&order_id=o-1", Some("application/x-www-form-urlencoded")), 415, "unsupported_media_type"),
        case("content-type application/xml", post(PAYMENTS).raw("<payment/>", Some("application/xml")), 415, "unsupported_media_type"),
        case("Idempotency-Key with a space", post(PAYMENTS).json(payment_body("payme", 150_000)).idempotency_key(header("has space")), 400, "invalid_idempotency_key"),
        case("Idempotency-Key of 256 chars", post(PAYMENTS).json(payment_body("payme", 150_000)).idempotency_key(header(&"k".repeat(256))), 400, "invalid_idempotency_key"),
        case("Idempotency-Key empty", post(PAYMENTS).json(payment_body("payme", 150_000)).idempotency_key(header("")), 400, "invalid_idempotency_key"),
        case("Idempotency-Key with a tab", post(PAYMENTS).json(payment_body("payme", 150_000)).idempotency_key(header("a\tb")), 400, "invalid_idempotency_key"),
        case("Idempotency-Key non-ASCII", post(PAYMENTS).json(payment_body("payme", 150_000)).idempotency_key(HeaderValue::from_bytes("ключ".as_bytes()).expect("opaque header")), 400, "invalid_idempotency_key"),
    ]
}

/// Reads, cancels, refunds and events of payments that do not exist or cannot take the request.
/// `pending` is an open payment, `paid` a succeeded one.
fn payment_cases(pending: &str, paid: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let bad_ids = [
        ("well-formed but unknown id", MISSING_ID.to_owned()),
        ("garbage id pay_x", "pay_x".to_owned()),
        ("SQL injection as id", SQL_INJECTION.to_owned()),
        ("SQL injection after pay_", format!("pay_{SQL_INJECTION}")),
        (
            "ULID without the pay_ prefix",
            MISSING_ID["pay_".len()..].to_owned(),
        ),
        (
            "id with the wrong prefix",
            format!("ref_{}", &MISSING_ID["pay_".len()..]),
        ),
        ("id with an encoded slash", "pay_x%2F..%2Fetc".to_owned()),
        ("id with an extra character", format!("{pending}0")),
        (
            "id of 10 000 characters",
            format!("pay_{}", "A".repeat(10_000)),
        ),
    ];
    for (what, id) in &bad_ids {
        let base = format!("{PAYMENTS}/{id}");
        cases.push(case(
            format!("GET payment: {what}"),
            get(base.clone()),
            404,
            "not_found",
        ));
        cases.push(case(
            format!("cancel: {what}"),
            post(format!("{base}/cancel")),
            404,
            "not_found",
        ));
        cases.push(case(
            format!("cancel with body: {what}"),
            post(format!("{base}/cancel")).json(json!({"reason": "x"})),
            404,
            "not_found",
        ));
        cases.push(case(
            format!("refund: {what}"),
            post(format!("{base}/refunds")).json(json!({})),
            404,
            "not_found",
        ));
        cases.push(case(
            format!("events: {what}"),
            get(format!("{base}/events")),
            404,
            "not_found",
        ));
    }
    let cancel = format!("{PAYMENTS}/{pending}/cancel");
    let refund = format!("{PAYMENTS}/{pending}/refunds");
    let refund_paid = format!("{PAYMENTS}/{paid}/refunds");
    cases.extend([
        case(
            "GET payment: path not UTF-8",
            get(format!("{PAYMENTS}/%FF")),
            400,
            "invalid_path",
        ),
        // Cancel.
        case(
            "cancel with unknown field",
            post(&cancel).json(json!({"reason": "dup", "force": true})),
            422,
            "invalid_request",
        )
        .detail_has("force"),
        case(
            "cancel with reason as number",
            post(&cancel).json(json!({"reason": 1})),
            422,
            "invalid_request",
        ),
        case(
            "cancel with JSON array body",
            post(&cancel).raw("[]", JSON),
            400,
            "malformed_json",
        ),
        case(
            "cancel with garbage body",
            post(&cancel).raw("reason=dup", JSON),
            400,
            "malformed_json",
        ),
        case(
            "cancel with text/plain body",
            post(&cancel).raw(r#"{"reason":"dup"}"#, Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        case(
            "cancel with bad Idempotency-Key",
            post(&cancel).idempotency_key(header("has space")),
            400,
            "invalid_idempotency_key",
        ),
        invalid(
            "cancel with reason over 500 chars",
            post(&cancel).json(json!({"reason": "r".repeat(501)})),
            "reason",
        ),
        case(
            "cancel a paid payment",
            post(format!("{PAYMENTS}/{paid}/cancel")),
            409,
            "payment_not_cancelable",
        ),
        // Refunds.
        invalid(
            "refund amount 0",
            post(&refund).json(json!({"amount": 0})),
            "amount",
        ),
        invalid(
            "refund amount negative",
            post(&refund).json(json!({"amount": -500})),
            "amount",
        ),
        invalid(
            "refund amount 0 on a paid payment",
            post(&refund_paid).json(json!({"amount": 0})),
            "amount",
        ),
        invalid(
            "refund amount i64::MIN",
            post(&refund_paid).json(json!({"amount": i64::MIN})),
            "amount",
        ),
        invalid(
            "refund reason over 500 chars",
            post(&refund_paid).json(json!({"reason": "r".repeat(501)})),
            "reason",
        ),
        case(
            "refund amount as string",
            post(&refund_paid).json(json!({"amount": "500"})),
            422,
            "invalid_request",
        ),
        case(
            "refund amount as float",
            post(&refund_paid).json(json!({"amount": 5.5})),
            422,
            "invalid_request",
        ),
        case(
            "refund with unknown field",
            post(&refund_paid).json(json!({"amount": 500, "currency": "UZS"})),
            422,
            "invalid_request",
        )
        .detail_has("currency"),
        case(
            "refund with JSON null body",
            post(&refund_paid).raw("null", JSON),
            400,
            "malformed_json",
        ),
        case(
            "refund with text/plain body",
            post(&refund_paid).raw(r#"{"amount":500}"#, Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        case(
            "refund with bad Idempotency-Key",
            post(&refund_paid)
                .json(json!({}))
                .idempotency_key(header(&"k".repeat(256))),
            400,
            "invalid_idempotency_key",
        ),
        // Idempotency keys.
        case(
            "create reusing a key with another body",
            post(PAYMENTS)
                .json(payment_body("payme", 150_001))
                .idempotency_key(header(USED_KEY)),
            422,
            "idempotency_key_reused",
        ),
        case(
            "cancel reusing a creation key",
            post(&cancel).idempotency_key(header(USED_KEY)),
            422,
            "idempotency_key_reused",
        ),
        case(
            "refund reusing a creation key",
            post(&refund_paid)
                .json(json!({"amount": 500}))
                .idempotency_key(header(USED_KEY)),
            422,
            "idempotency_key_reused",
        ),
        case(
            "refund of a pending payment",
            post(&refund).json(json!({"amount": 500})),
            409,
            "payment_not_refundable",
        ),
        case(
            "refund through a provider without refunds",
            post(&refund_paid).json(json!({"amount": 500})),
            422,
            "refund_not_supported",
        ),
    ]);
    cases
}

/// `GET /v1/payments` with a bad query string.
fn list_cases() -> Vec<Case> {
    [
        ("limit=0", "limit=0"),
        ("limit=101", "limit=101"),
        ("limit=abc", "limit=abc"),
        ("limit=-1", "limit=-1"),
        ("limit=1.5", "limit=1.5"),
        ("limit empty", "limit="),
        ("limit over u32", "limit=4294967296"),
        ("limit given twice", "limit=1&limit=2"),
        ("status=bogus", "status=bogus"),
        ("status in upper case", "status=PENDING"),
        ("provider=bogus", "provider=bogus"),
        ("starting_after=nonsense", "starting_after=nonsense"),
        (
            "starting_after without prefix",
            "starting_after=01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ),
        (
            "starting_after SQL injection",
            "starting_after=%27%20OR%201%3D1--",
        ),
        ("unknown query parameter", "foo=bar"),
        ("offset (not supported)", "offset=10"),
    ]
    .into_iter()
    .map(|(name, query)| {
        case(
            format!("list: {name}"),
            get(format!("{PAYMENTS}?{query}")),
            400,
            "invalid_query",
        )
    })
    .collect()
}

/// Unknown routes, wrong methods and missing or wrong credentials.
fn routing_and_auth_cases(pending: &str) -> Vec<Case> {
    let one = format!("{PAYMENTS}/{pending}");
    let mut cases = vec![
        case(
            "unknown route /v1/nope",
            get("/v1/nope"),
            404,
            "route_not_found",
        ),
        case("unknown route /", get("/"), 404, "route_not_found"),
        case(
            "unknown version /v2/payments",
            post("/v2/payments").json(payment_body("payme", 150_000)),
            404,
            "route_not_found",
        ),
        case(
            "trailing slash /v1/payments/",
            post("/v1/payments/").json(payment_body("payme", 150_000)),
            404,
            "route_not_found",
        ),
        case(
            "unknown sub-resource",
            get(format!("{one}/captures")),
            404,
            "route_not_found",
        ),
        case(
            "unknown route without auth",
            get("/v1/nope").no_auth(),
            404,
            "route_not_found",
        ),
        case(
            "DELETE /v1/payments",
            request(Method::DELETE, PAYMENTS),
            405,
            "method_not_allowed",
        ),
        case(
            "PUT /v1/payments",
            request(Method::PUT, PAYMENTS).json(payment_body("payme", 150_000)),
            405,
            "method_not_allowed",
        ),
        case(
            "PATCH /v1/payments/{id}",
            request(Method::PATCH, &one).json(json!({"amount": 1})),
            405,
            "method_not_allowed",
        ),
        case(
            "DELETE /v1/payments/{id}",
            request(Method::DELETE, &one),
            405,
            "method_not_allowed",
        ),
        case(
            "GET /v1/payments/{id}/cancel",
            get(format!("{one}/cancel")),
            405,
            "method_not_allowed",
        ),
        case(
            "GET /v1/payments/{id}/refunds",
            get(format!("{one}/refunds")),
            405,
            "method_not_allowed",
        ),
        case(
            "POST /v1/payments/{id}/events",
            post(format!("{one}/events")).json(json!({})),
            405,
            "method_not_allowed",
        ),
        case("POST /healthz", post("/healthz"), 405, "method_not_allowed"),
    ];
    let protected = [
        (
            "create",
            post(PAYMENTS).json(payment_body("payme", 150_000)),
        ),
        ("list", get(PAYMENTS)),
        ("read", get(&one)),
        ("cancel", post(format!("{one}/cancel"))),
        (
            "refund",
            post(format!("{one}/refunds")).json(json!({"amount": 100})),
        ),
        ("events", get(format!("{one}/events"))),
    ];
    for (what, req) in protected {
        cases.push(case(
            format!("{what}: no Authorization"),
            req.clone().no_auth(),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: wrong key"),
            req.clone().authorization("Bearer sk_test_wrong"),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: Basic scheme"),
            req.clone()
                .authorization("Basic c2tfdGVzdF90b2xvdl9zYW5kYm94Og=="),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: empty Bearer"),
            req.clone().authorization("Bearer "),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: key without scheme"),
            req.clone().authorization(API_KEY),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: key in other case"),
            req.clone()
                .authorization(format!("Bearer {}", API_KEY.to_uppercase())),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: truncated key"),
            req.clone()
                .authorization(format!("Bearer {}", &API_KEY[..API_KEY.len() - 1])),
            401,
            "unauthorized",
        ));
        cases.push(case(
            format!("{what}: key with extra token"),
            req.authorization(format!("Bearer {API_KEY} extra")),
            401,
            "unauthorized",
        ));
    }
    cases.push(case(
        "create without auth and with a garbage body (auth is checked first)",
        post(PAYMENTS).raw("garbage", JSON).no_auth(),
        401,
        "unauthorized",
    ));
    cases
}

// ---------------------------------------------------------------------------------------------
// Running the table.

/// Sends the case's request and checks the answer and that the database did not change.
/// Panics with a message that names what went wrong.
async fn check(app: &TestApp, case: &Case) {
    let before = app.snapshot().await;
    let res = case.request.send(app).await;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("response body");
    let text = String::from_utf8_lossy(&bytes);
    assert!(status < 500, "answered {status} (a 5xx): {text}");
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let code = parsed.as_ref().and_then(|v| v["code"].as_str());
    assert!(
        status == case.status && code == Some(case.code),
        "expected {} {}, got {status} {code:?}: {text}",
        case.status,
        case.code
    );
    // The helper's full problem+json check, on the same response.
    let mut rebuilt = axum::http::Response::builder().status(status);
    for (name, value) in &headers {
        rebuilt = rebuilt.header(name, value);
    }
    let rebuilt = rebuilt.body(bytes.to_vec()).expect("rebuild response");
    let body = assert_problem(reqwest::Response::from(rebuilt), case.status, case.code).await;

    if case.code == "validation_failed" {
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("validation_failed without an errors array: {body}"));
        assert!(!errors.is_empty(), "empty errors array: {body}");
        for e in errors {
            assert!(
                e["field"].as_str().is_some_and(|f| !f.is_empty())
                    && e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "each error names a field and a message: {body}"
            );
        }
    }
    if let Some(field) = case.field {
        let named = body["errors"]
            .as_array()
            .is_some_and(|errs| errs.iter().any(|e| e["field"] == field));
        assert!(named, "errors does not name `{field}`: {body}");
    }
    if let Some(s) = case.detail_has {
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(s), "detail does not mention `{s}`: {body}");
    }
    let after = app.snapshot().await;
    assert_eq!(before, after, "the database changed");
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic without a message".to_owned())
}

/// Runs every case, then fails once listing each failing case by name.
async fn run_matrix(app: &TestApp, cases: &[Case], label: &str) {
    let mut names = std::collections::HashSet::new();
    for c in cases {
        assert!(
            names.insert(c.name.as_str()),
            "duplicate case name {}",
            c.name
        );
    }
    let mut failures = Vec::new();
    for c in cases {
        if let Err(payload) = AssertUnwindSafe(check(app, c)).catch_unwind().await {
            failures.push(format!(
                "  [{}] {}",
                c.name,
                panic_message(payload.as_ref())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// An app with one pending and one paid payment; returns their ids.
async fn app_with_payments(db: Db) -> (TestApp, String, String) {
    let app = spawn_app_on(db).await;
    let res = app
        .client
        .post(app.url(PAYMENTS))
        .bearer_auth(API_KEY)
        .header("idempotency-key", USED_KEY)
        .json(&payment_body("payme", 150_000))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 201, "set-up payment");
    let created: Value = res.json().await.expect("json");
    let pending = created["id"].as_str().expect("id").to_owned();
    let paid = app.new_payment("payme", 250_000).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    change_status(
        app.state.store.as_ref(),
        &PaymentId::parse(&paid).expect("payment id"),
        PaymentStatus::Succeeded,
        Actor::Provider,
        None,
        app.state.now(),
    )
    .await
    .expect("mark paid");
    (app, pending, paid)
}

fn all_cases(pending: &str, paid: &str) -> Vec<Case> {
    let mut cases = creation_cases();
    cases.extend(payment_cases(pending, paid));
    cases.extend(list_cases());
    cases.extend(routing_and_auth_cases(pending));
    cases
}

async fn assert_still_intact(app: &TestApp, pending: &str, paid: &str) {
    let list = app.get_json("/v1/payments?limit=100").await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "only the two set-up payments exist: {list}");
    assert!(ids.contains(&pending) && ids.contains(&paid), "{list}");
    assert_eq!(
        app.get_json(&format!("/v1/payments/{pending}")).await["status"],
        "pending"
    );
    assert_eq!(
        app.get_json(&format!("/v1/payments/{paid}")).await["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn bad_requests_are_4xx_problems_and_change_nothing_on_sqlite() {
    let (app, pending, paid) = app_with_payments(Db::Sqlite).await;
    let cases = all_cases(&pending, &paid);
    assert!(cases.len() > 150, "{}", cases.len());
    run_matrix(&app, &cases, "sqlite").await;
    assert_still_intact(&app, &pending, &paid).await;
}

#[tokio::test]
async fn bad_requests_are_4xx_problems_and_change_nothing_on_postgres() {
    let (app, pending, paid) = app_with_payments(Db::Postgres).await;
    run_matrix(&app, &all_cases(&pending, &paid), "postgres").await;
    assert_still_intact(&app, &pending, &paid).await;
}

#[tokio::test]
async fn validation_reports_every_bad_field_at_once() {
    let app = spawn_app().await;
    let before = app.snapshot().await;
    let res = app
        .create_payment(&json!({
            "provider": "stripe",
            "amount": -1,
            "currency": "EUR",
            "order_id": "",
            "description": "d".repeat(501),
            "return_url": "ftp://x",
            "language": "de",
            "metadata": [1],
        }))
        .await;
    let body = assert_problem(res, 422, "validation_failed").await;
    let mut fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "amount",
            "currency",
            "description",
            "language",
            "metadata",
            "order_id",
            "provider",
            "return_url"
        ],
        "{body}"
    );
    let detail = body["detail"].as_str().expect("detail");
    for f in fields {
        assert!(detail.contains(f), "detail names {f}: {detail}");
    }
    assert_eq!(before, app.snapshot().await);
}

#[tokio::test]
async fn the_limits_themselves_are_accepted() {
    // The boundaries of the rejected cases above, so the matrix is not passing by rejecting all.
    let app = spawn_app().await;
    let mut many_keys = Map::new();
    for i in 0..50 {
        many_keys.insert(format!("k{i}"), json!(i));
    }
    let accepted = [
        ("amount at the provider min", payment_body("payme", 100)),
        (
            "amount at the provider max",
            payment_body("epay", 100_000_000_000),
        ),
        (
            "order_id of 128 chars",
            body_with("order_id", json!("o".repeat(128))),
        ),
        (
            "description of 500 chars with a newline",
            body_with("description", json!(format!("{}\n", "d".repeat(499)))),
        ),
        (
            "metadata with 50 keys",
            body_with("metadata", Value::Object(many_keys)),
        ),
        ("metadata null", body_with("metadata", Value::Null)),
        ("language omitted", body_without("language")),
        (
            "return_url http",
            body_with("return_url", json!("http://shop.example/r")),
        ),
    ];
    for (name, body) in accepted {
        let res = app.create_payment(&body).await;
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        assert_eq!(status, 201, "{name}: {text}");
    }
    let res = app
        .client
        .post(app.url(PAYMENTS))
        .bearer_auth(API_KEY)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .header(
            "idempotency-key",
            "~!@#$%^&*()_+{}|:<>?".repeat(12).as_str(),
        )
        .body(serde_json::to_vec(&payment_body("click", 100)).expect("json"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        res.status().as_u16(),
        201,
        "charset parameter and a 240-char visible-ASCII key are fine"
    );
}

#[tokio::test]
async fn a_disabled_provider_is_refused_without_writing() {
    let app = spawn_app_with(Db::Sqlite, |s| s.epay.enabled = false, Overrides::default()).await;
    let before = app.snapshot().await;
    let res = app.create_payment(&payment_body("epay", 150_000)).await;
    assert_problem(res, 422, "provider_disabled").await;
    assert_eq!(before, app.snapshot().await);
}

// ---------------------------------------------------------------------------------------------
// Findings: bad input the gateway currently mishandles. Each test states the behaviour a
// payments engineer would expect; un-ignore it with the fix.

/// Sends a raw JSON text to `path` with the API key.
async fn post_raw(app: &TestApp, path: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(API_KEY)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

async fn return_url_with_nul_is_refused(db: Db) {
    let app = spawn_app_on(db).await;
    let before = app.snapshot().await;
    let res = post_raw(
        &app,
        PAYMENTS,
        r#"{"provider":"payme","amount":150000,"currency":"UZS","order_id":"o-1","return_url":"https://shop.example/\u0000x"}"#,
    )
    .await;
    let body = assert_problem(res, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "return_url", "{body}");
    assert_eq!(before, app.snapshot().await);
}

#[tokio::test]

async fn return_url_with_nul_is_refused_on_postgres() {
    return_url_with_nul_is_refused(Db::Postgres).await;
}

#[tokio::test]

async fn return_url_with_nul_is_refused_on_sqlite() {
    return_url_with_nul_is_refused(Db::Sqlite).await;
}

#[tokio::test]

async fn return_url_with_line_breaks_is_refused() {
    let app = spawn_app().await;
    let before = app.snapshot().await;
    let res = post_raw(
        &app,
        PAYMENTS,
        r#"{"provider":"payme","amount":150000,"currency":"UZS","order_id":"o-1","return_url":"https://shop.example/\r\nSet-Cookie: x=1"}"#,
    )
    .await;
    let body = assert_problem(res, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "return_url", "{body}");
    assert_eq!(before, app.snapshot().await);
}

async fn cancel_reason_with_nul_is_refused(db: Db) {
    let app = spawn_app_on(db).await;
    let p = app.new_payment("payme", 150_000).await;
    let id = p["id"].as_str().expect("id");
    let before = app.snapshot().await;
    let res = post_raw(
        &app,
        &format!("{PAYMENTS}/{id}/cancel"),
        r#"{"reason":"duplicate\u0000"}"#,
    )
    .await;
    let body = assert_problem(res, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "reason", "{body}");
    assert_eq!(before, app.snapshot().await);
}

#[tokio::test]

async fn cancel_reason_with_nul_is_refused_on_postgres() {
    cancel_reason_with_nul_is_refused(Db::Postgres).await;
}

#[tokio::test]

async fn cancel_reason_with_nul_is_refused_on_sqlite() {
    cancel_reason_with_nul_is_refused(Db::Sqlite).await;
}

#[tokio::test]

async fn list_with_nul_in_order_id_is_not_a_5xx_on_postgres() {
    let app = spawn_app_on(Db::Postgres).await;
    app.new_payment("payme", 150_000).await;
    let res = app.get(&format!("{PAYMENTS}?order_id=a%00b")).await;
    let status = res.status().as_u16();
    if status == 200 {
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["data"], json!([]), "{body}");
    } else {
        assert_problem(res, 400, "invalid_query").await;
    }
}

#[tokio::test]

async fn duplicate_keys_in_the_body_are_refused() {
    let app = spawn_app().await;
    let before = app.snapshot().await;
    let res = post_raw(
        &app,
        PAYMENTS,
        r#"{"provider":"payme","amount":100,"currency":"UZS","order_id":"o-dup","amount":99999900}"#,
    )
    .await;
    let status = res.status().as_u16();
    assert!(
        status == 400 || status == 422,
        "duplicate keys must be refused, got {status}: {}",
        res.text().await.expect("body")
    );
    assert_eq!(before, app.snapshot().await);
}

#[tokio::test]

async fn order_id_limit_counts_characters() {
    let app = spawn_app().await;
    let res = app
        .create_payment(&body_with("order_id", json!("ж".repeat(100))))
        .await;
    let status = res.status().as_u16();
    assert_eq!(status, 201, "{}", res.text().await.expect("body"));
}

#[tokio::test]

async fn unauthorized_names_the_scheme() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url(PAYMENTS))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 401);
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
}

#[tokio::test]

async fn bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url(PAYMENTS))
        .header(AUTHORIZATION, format!("bearer {API_KEY}"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
}
