//! Load generator for full Payme lifecycles against a running tolov (loopback only):
//! POST /v1/payments → CheckPerformTransaction → CreateTransaction → PerformTransaction →
//! CheckTransaction, by `concurrency` workers for `seconds`. Prints one JSON line of results.
//! Not part of `cargo test`; driven by tools/bench.sh.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Drive full Payme lifecycles against tolov")]
struct Args {
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
    args: Args,
    client: reqwest::Client,
    payme_auth: String,
    measuring: AtomicBool,
    stop: AtomicBool,
    errors: AtomicU64,
    seq: AtomicU64,
}

async fn rpc(s: &Shared, method: &str, params: Value) -> Result<Value, String> {
    let id = s.seq.fetch_add(1, Ordering::Relaxed);
    let res = s
        .client
        .post(format!("{}/v1/payme", s.args.url))
        .header("authorization", &s.payme_auth)
        .json(&json!({ "method": method, "params": params, "id": id }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = res.json().await.map_err(|e| e.to_string())?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(format!("{method}: {}", v["error"]));
    }
    Ok(v["result"].clone())
}

async fn lifecycle(s: &Shared, n: u64, out: &mut Samples) -> Result<(), String> {
    let mut timed = Vec::with_capacity(5);
    let t = Instant::now();
    let res = s
        .client
        .post(format!("{}/v1/payments", s.args.url))
        .bearer_auth(&s.args.api_key)
        .json(&json!({"provider": "payme", "amount": 150_000, "currency": "UZS", "order_id": format!("bench-{n}")}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status().as_u16() != 201 {
        return Err(format!("create payment: {}", res.status()));
    }
    let payment: Value = res.json().await.map_err(|e| e.to_string())?;
    timed.push(t.elapsed());
    let account = json!({ "order_id": payment["id"] });
    let payme_id = format!("{:024x}", n);

    let t = Instant::now();
    rpc(
        s,
        "CheckPerformTransaction",
        json!({"amount": 150_000, "account": account}),
    )
    .await?;
    timed.push(t.elapsed());
    let t = Instant::now();
    let time = chrono::Utc::now().timestamp_millis();
    rpc(
        s,
        "CreateTransaction",
        json!({"id": payme_id, "time": time, "amount": 150_000, "account": account}),
    )
    .await?;
    timed.push(t.elapsed());
    let t = Instant::now();
    rpc(s, "PerformTransaction", json!({"id": payme_id})).await?;
    timed.push(t.elapsed());
    let t = Instant::now();
    let check = rpc(s, "CheckTransaction", json!({"id": payme_id})).await?;
    timed.push(t.elapsed());
    if check["state"] != 2 {
        return Err(format!("unexpected state {check}"));
    }
    if s.measuring.load(Ordering::Relaxed) {
        for (i, d) in timed.iter().enumerate() {
            out.micros[i].push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
        out.lifecycles += 1;
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .build()
        .expect("http client");
    let payme_auth = format!(
        "Basic {}",
        STANDARD.encode(format!("Paycom:{}", args.payme_key))
    );
    let seed = u64::from(rand_seed());
    let shared = Arc::new(Shared {
        args,
        client,
        payme_auth,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        seq: AtomicU64::new(seed << 32),
    });
    let workers: Vec<_> = (0..shared.args.concurrency)
        .map(|w| {
            let s = shared.clone();
            tokio::spawn(async move {
                let mut out = Samples::default();
                let mut n = (seed << 40) | ((w as u64) << 24);
                while !s.stop.load(Ordering::Relaxed) {
                    n += 1;
                    if let Err(e) = lifecycle(&s, n, &mut out).await {
                        if s.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("lifecycle failed: {e}");
                        }
                    }
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(shared.args.warmup)).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(shared.args.seconds)).await;
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
        "concurrency": shared.args.concurrency,
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
