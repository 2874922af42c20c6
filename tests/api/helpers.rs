//! `spawn_app`: the real application on 127.0.0.1:0 with a fresh database (a temp SQLite file,
//! or a new PostgreSQL database on 127.0.0.1:5432 / `DATABASE_URL`).

use std::sync::LazyLock;

use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tolov::config::Settings;
use tolov::startup::{Application, Overrides};
use tolov::state::AppState;

/// Declares each listed `async fn name(db: Db)` as two tests, `sqlite::name` and `postgres::name`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(crate::helpers::Db::Postgres).await })*
        }
    };
}

pub const API_KEY: &str = "sk_test_tolov_sandbox";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let mut s = Settings::sandbox_defaults().expect("defaults");
        s.log.level = "debug".into();
        tolov::telemetry::init_tracing(&s);
    }
});

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh, empty database URL for the backend; the guard deletes SQLite files on drop.
pub async fn fresh_database(db: Db) -> (String, Option<tempfile::TempDir>) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("tolov.db").display());
            (url, Some(dir))
        }
        Db::Postgres => {
            let admin = postgres_admin_url();
            let name = format!(
                "tolov_test_{}",
                ulid::Ulid::new().to_string().to_lowercase()
            );
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL must be reachable at DATABASE_URL or 127.0.0.1:5432 (bash .ci/run starts it)");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or(admin);
            (format!("{base}/{name}"), None)
        }
    }
}

pub fn test_settings(database_url: String) -> Settings {
    let mut s = Settings::sandbox_defaults().expect("defaults");
    s.server.listen = "127.0.0.1:0".parse().expect("addr");
    s.database.url = SecretString::from(database_url);
    s.database.max_connections = 8;
    s.api.keys = vec![
        SecretString::from(API_KEY),
        SecretString::from("sk_test_second_key"),
    ];
    s
}

pub struct TestApp {
    pub address: String,
    /// The database this instance runs on; [`TestApp::second_instance`] shares it.
    pub database_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: CancellationToken,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Db::Sqlite, |_| {}, Overrides::default()).await
}

pub async fn spawn_app_on(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}, Overrides::default()).await
}

pub async fn spawn_app_with(
    db: Db,
    configure: impl FnOnce(&mut Settings),
    overrides: Overrides,
) -> TestApp {
    LazyLock::force(&TRACING);
    let (url, dir) = fresh_database(db).await;
    spawn_app_at(url, dir, configure, overrides).await
}

async fn spawn_app_at(
    url: String,
    dir: Option<tempfile::TempDir>,
    configure: impl FnOnce(&mut Settings),
    overrides: Overrides,
) -> TestApp {
    let mut settings = test_settings(url.clone());
    configure(&mut settings);
    let app = Application::build_with(settings, overrides)
        .await
        .expect("app builds");
    let port = app.port();
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        database_url: url,
        client: reqwest::Client::new(),
        state,
        shutdown,
        server: Some(server),
        _dir: dir,
    }
}

/// A valid creation body for the provider.
pub fn payment_body(provider: &str, amount: i64) -> Value {
    let currency = if provider == "epay" { "KZT" } else { "UZS" };
    json!({
        "provider": provider,
        "amount": amount,
        "currency": currency,
        "order_id": "order-1001",
        "description": "Green tea, 2 boxes",
        "return_url": "https://shop.example/return",
        "language": "uz",
        "metadata": {"cart": "c-77"}
    })
}

impl TestApp {
    /// Another instance of tolov (default test settings, its own process state) on this
    /// instance's database, as when several replicas serve one merchant.
    pub async fn second_instance(&self) -> TestApp {
        self.second_instance_with(Overrides::default()).await
    }

    /// [`Self::second_instance`] with its own clock or other overrides.
    pub async fn second_instance_with(&self, overrides: Overrides) -> TestApp {
        self.second_instance_configured(|_| {}, overrides).await
    }

    /// [`Self::second_instance_with`] with its own settings, as after a configuration change.
    pub async fn second_instance_configured(
        &self,
        configure: impl FnOnce(&mut Settings),
        overrides: Overrides,
    ) -> TestApp {
        spawn_app_at(self.database_url.clone(), None, configure, overrides).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A payment's provider transactions as stored.
    pub async fn transactions(&self, payment_id: &str) -> Vec<tolov::domain::Transaction> {
        let pid = tolov::domain::PaymentId::parse(payment_id).expect("payment id");
        self.state
            .store
            .list_transactions(&pid)
            .await
            .expect("transactions")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn create_payment(&self, body: &Value) -> reqwest::Response {
        self.post_json("/v1/payments", body).await
    }

    /// Creates a payment and returns its JSON, asserting 201.
    pub async fn new_payment(&self, provider: &str, amount: i64) -> Value {
        let res = self.create_payment(&payment_body(provider, amount)).await;
        assert_eq!(res.status().as_u16(), 201, "create payment");
        res.json().await.expect("json")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("request")
    }

    /// The hosted payment page of payment `id`, as HTML.
    pub async fn hosted_page(&self, id: &str) -> String {
        self.client
            .get(self.url(&format!("/pay/{id}")))
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("html")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status().as_u16(), 200, "GET {path}");
        res.json().await.expect("json")
    }

    /// Everything a merchant could observe in the database, for "nothing changed" checks.
    pub async fn snapshot(&self) -> String {
        self.dump(|t| format!("{t:?}")).await
    }

    /// Every payment with its events, attempts (as `attempt` writes them) and refunds.
    async fn dump(&self, attempt: impl Fn(&tolov::domain::Transaction) -> String) -> String {
        let store = &self.state.store;
        let mut out = String::new();
        let q = tolov::domain::PaymentQuery {
            limit: 1000,
            ..Default::default()
        };
        for p in store.list_payments(&q).await.expect("list") {
            out.push_str(&format!("{p:?}\n"));
            for e in store.list_events(&p.id).await.expect("events") {
                out.push_str(&format!("  {e:?}\n"));
            }
            for t in store.list_transactions(&p.id).await.expect("txs") {
                out.push_str(&format!("  {}\n", attempt(&t)));
            }
            for r in store.list_refunds(&p.id).await.expect("refunds") {
                out.push_str(&format!("  {r:?}\n"));
            }
        }
        out
    }
}

impl TestApp {
    /// [`TestApp::snapshot`] with the provider attempts reduced to what they decide (state,
    /// times, card, data), leaving out their version and update time, and the ATMOS records that
    /// a code was sent (`code_sent`) or went unanswered (`apply_unanswered`), facts, not
    /// decisions: for calls that may take and release a mark on an attempt (an ATMOS code
    /// check) while deciding nothing.
    pub async fn decisions(&self) -> String {
        self.dump(|t| {
            let mut data = t.data.clone();
            if let Some(map) = data.as_object_mut() {
                map.remove("code_sent");
                map.remove("apply_unanswered");
            }
            format!(
                "{} {} {:?} {:?} {:?} {:?} {}",
                t.external_id,
                t.state,
                t.perform_time,
                t.cancel_time,
                t.reason,
                t.masked_card,
                data
            )
        })
        .await
    }
}

/// Asserts an RFC 9457 problem response with the given status and code.
pub async fn assert_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json", "content-type");
    let body: Value = res.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["type"], format!("urn:tolov:problem:{code}"), "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

/// Runs the hosted page at `page_url` (this server's `/pay/{id}`, with or without `#cs=…`) as a
/// browser would run its script, in Node.js with a minimal DOM of the page's elements (each
/// with `hidden`, `value`, `textContent`, `href`, handlers), its calls going to this server;
/// then `driver`, JavaScript that may `await loaded`, read `elements.<id>`, and call
/// `check(condition, what)`. Returns whether every check held, and Node's output.
pub async fn run_page(app: &TestApp, page_url: &str, driver: &str) -> (bool, String) {
    let path = page_url
        .strip_prefix(&app.address)
        .and_then(|p| p.split('#').next())
        .expect("a page of this server");
    let html = app
        .client
        .get(app.url(path))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let elements: serde_json::Map<String, Value> = html
        .split('<')
        .filter_map(|tag| {
            let tag = tag.split('>').next()?;
            let id = tag.split("id=\"").nth(1)?.split('"').next()?;
            Some((id.to_owned(), json!(tag.contains(" hidden"))))
        })
        .collect();
    let script: String = html
        .split("<script>")
        .skip(1)
        .filter_map(|s| s.split("</script>").next())
        .collect::<Vec<_>>()
        .join("\n");
    let harness = format!(
        r#"const PAGE_URL = {page_url};
const elements = {{}};
for (const [id, hidden] of Object.entries({elements})) elements[id] = {{ id, hidden, value: "", textContent: "", href: "" }};
globalThis.document = {{ getElementById: (id) => elements[id] }};
globalThis.location = {{ hash: new URL(PAGE_URL).hash }};
const realFetch = globalThis.fetch;
globalThis.fetch = (url, options) => realFetch(new URL(url, PAGE_URL), options);
{script}
const submit = {{ preventDefault() {{}} }};
function check(ok, what) {{
  if (!ok) {{ console.error("FAILED: " + what + " | message: " + (elements.msg || {{}}).textContent); process.exit(1); }}
}}
(async () => {{
{driver}
  console.log("ok");
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#,
        page_url = json!(page_url),
        elements = Value::Object(elements),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("page.js");
    std::fs::write(&file, harness).expect("write");
    let out = tokio::process::Command::new("node")
        .arg(&file)
        .output()
        .await
        .expect("Node.js runs the page's script (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The hosted page of a payment created with `body`, with its client secret (`#cs=…`).
pub async fn page_with_secret(app: &TestApp, body: &Value) -> (String, String) {
    let created: Value = app.create_payment(body).await.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let checkout = created["checkout_url"].as_str().expect("checkout_url");
    let fragment = checkout.split_once('#').map(|(_, f)| f).expect("fragment");
    let url = format!("{}#{fragment}", app.url(&format!("/pay/{id}")));
    (id, url)
}

/// A POST whose body arrives in two parts `pause` apart (a slow link or proxy), over a raw
/// connection; returns the status line and the body of the answer.
pub async fn post_slowly(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    pause: std::time::Duration,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len().min(10));
    conn.write_all(format!("{head}{first}").as_bytes())
        .await
        .expect("head");
    tokio::time::sleep(pause).await;
    conn.write_all(rest.as_bytes()).await.expect("rest");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("answer");
    let (status_line, _) = answer.split_once("\r\n").unwrap_or((&answer, ""));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status_line.to_owned(), body)
}
