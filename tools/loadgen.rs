//! Load generator for full Payme lifecycles against a running tolov (loopback only):
//! POST /v1/payments → CheckPerformTransaction → CreateTransaction → PerformTransaction →
//! CheckTransaction, by `concurrency` workers for `seconds`. Prints one JSON line of results.
//! Not part of `cargo test`; driven by tools/bench.sh.
//!
//! It shares the 2 cores with tolov and the database, so every microsecond it spends is taken
//! from the system it measures: one single-threaded runtime (no cross-thread wake-ups), one
//! kept-alive HTTP/1.1 connection per worker (hyper's connection API, no pool), request bodies
//! formatted directly, and answers parsed into borrowed fields. Every answer is still checked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Drive full Payme lifecycles against tolov")]
struct Args {
    /// tolov's address (host:port on loopback; an `http://` prefix is accepted).
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value = "sk_test_tolov_sandbox")]
    api_key: String,
    #[arg(long, default_value = "sandbox-payme-key")]
    payme_key: String,
}

const CALLS: [&str; 5] = [
    "create_payment",
    "CheckPerformTransaction",
    "CreateTransaction",
    "PerformTransaction",
    "CheckTransaction",
];

#[derive(Default)]
struct Samples {
    micros: [Vec<u32>; 5],
    lifecycles: u64,
}

struct Shared {
    addr: String,
    bearer: String,
    payme_auth: String,
    measuring: AtomicBool,
    stop: AtomicBool,
    errors: AtomicU64,
    seq: AtomicU64,
}

#[derive(Deserialize)]
struct CreatedPayment<'a> {
    #[serde(borrow)]
    id: &'a str,
    status: &'a str,
}

#[derive(Deserialize)]
struct RpcAnswer<T> {
    result: Option<T>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CheckResult {
    state: i64,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    async fn post(
        &mut self,
        s: &Shared,
        path: &'static str,
        auth: &str,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &s.addr)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// One Payme call; its `result`, read as `T`, unless the answer is an error.
    async fn rpc<T: DeserializeOwned>(
        &mut self,
        s: &Shared,
        method: &str,
        params: String,
    ) -> Result<T, String> {
        let id = s.seq.fetch_add(1, Ordering::Relaxed);
        let body = format!(r#"{{"method":"{method}","params":{params},"id":{id}}}"#);
        let (status, answer) = self.post(s, "/v1/payme", &s.payme_auth, body).await?;
        let parsed: RpcAnswer<T> =
            serde_json::from_slice(&answer).map_err(|e| format!("{method}: {status} {e}"))?;
        match (parsed.error, parsed.result) {
            (None, Some(result)) if status == 200 => Ok(result),
            _ => Err(format!(
                "{method}: {status} {}",
                String::from_utf8_lossy(&answer)
            )),
        }
    }
}

async fn lifecycle(s: &Shared, conn: &mut Conn, n: u64, out: &mut Samples) -> Result<(), String> {
    let mut timed = [Duration::ZERO; 5];
    let t = Instant::now();
    let body = format!(
        r#"{{"provider":"payme","amount":150000,"currency":"UZS","order_id":"bench-{n}"}}"#
    );
    let (status, answer) = conn.post(s, "/v1/payments", &s.bearer, body).await?;
    if status != 201 {
        return Err(format!("create payment: {status}"));
    }
    let payment: CreatedPayment<'_> =
        serde_json::from_slice(&answer).map_err(|e| format!("create payment: {e}"))?;
    if payment.status != "pending" {
        return Err(format!("create payment: status {}", payment.status));
    }
    timed[0] = t.elapsed();
    let account = format!(r#"{{"order_id":"{}"}}"#, payment.id);
    let payme_id = format!("{n:024x}");

    let t = Instant::now();
    conn.rpc::<IgnoredAny>(
        s,
        "CheckPerformTransaction",
        format!(r#"{{"amount":150000,"account":{account}}}"#),
    )
    .await?;
    timed[1] = t.elapsed();
    let t = Instant::now();
    let time = chrono::Utc::now().timestamp_millis();
    conn.rpc::<IgnoredAny>(
        s,
        "CreateTransaction",
        format!(r#"{{"id":"{payme_id}","time":{time},"amount":150000,"account":{account}}}"#),
    )
    .await?;
    timed[2] = t.elapsed();
    let t = Instant::now();
    let by_id = format!(r#"{{"id":"{payme_id}"}}"#);
    conn.rpc::<IgnoredAny>(s, "PerformTransaction", by_id.clone())
        .await?;
    timed[3] = t.elapsed();
    let t = Instant::now();
    let check: CheckResult = conn.rpc(s, "CheckTransaction", by_id).await?;
    timed[4] = t.elapsed();
    if check.state != 2 {
        return Err(format!("CheckTransaction: state {}", check.state));
    }
    if s.measuring.load(Ordering::Relaxed) {
        for (i, d) in timed.iter().enumerate() {
            out.micros[i].push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
        out.lifecycles += 1;
    }
    Ok(())
}

async fn worker(s: Arc<Shared>, mut n: u64) -> Samples {
    let mut out = Samples::default();
    let mut conn: Option<Conn> = None;
    while !s.stop.load(Ordering::Relaxed) {
        n += 1;
        let result = match conn.as_mut() {
            Some(c) => lifecycle(&s, c, n, &mut out).await,
            None => match Conn::open(&s.addr).await {
                Ok(c) => {
                    conn = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            // A failed call may leave the connection mid-answer: start the next on a new one.
            conn = None;
            if s.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("lifecycle failed: {e}");
            }
            if s.errors.load(Ordering::Relaxed) > 1000 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let addr = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let seed = u64::from(rand_seed());
    let shared = Arc::new(Shared {
        addr,
        bearer: format!("Bearer {}", args.api_key),
        payme_auth: format!(
            "Basic {}",
            STANDARD.encode(format!("Paycom:{}", args.payme_key))
        ),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        seq: AtomicU64::new(seed << 32),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| tokio::spawn(worker(shared.clone(), (seed << 40) | ((w as u64) << 24))))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let mut all = Samples::default();
    for w in workers {
        if let Ok(out) = w.await {
            all.lifecycles += out.lifecycles;
            for (i, v) in out.micros.into_iter().enumerate() {
                all.micros[i].extend(v);
            }
        }
    }
    let mut calls = serde_json::Map::new();
    let mut every: Vec<u32> = Vec::new();
    for (i, name) in CALLS.iter().enumerate() {
        let v = &mut all.micros[i];
        v.sort_unstable();
        every.extend_from_slice(v);
        calls.insert(
            (*name).to_owned(),
            json!({"p50_ms": percentile(v, 0.50), "p99_ms": percentile(v, 0.99)}),
        );
    }
    every.sort_unstable();
    let report = json!({
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "lifecycles": all.lifecycles,
        "lifecycles_per_sec": all.lifecycles as f64 / elapsed,
        "calls_per_sec": (all.lifecycles * 5) as f64 / elapsed,
        "errors": shared.errors.load(Ordering::Relaxed),
        "all_calls": {"p50_ms": percentile(&every, 0.50), "p99_ms": percentile(&every, 0.99)},
        "calls": calls,
    });
    println!("{report}");
}

fn rand_seed() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id()) as u16
}
