//! Benchmarks with baselines measured in the same run, and the soak run.
//! Use through `cargo xtask bench` and `cargo xtask soak`.

mod soak;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use x402_payer::verify_exact;
use x402_server::{Config, DEV_PAY_TO, Limits, ServerBuilder, SourceConfig, StreamConfig};
use x402_types::{
    Offer, PathVersion, PaymentRequiredV2, PaymentRequirements, Schema, ServerMessage,
};

pub(crate) const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Rounds each throughput comparison runs, alternating ours and the baseline.
const ROUNDS: usize = 5;

/// The receive rows move up to 1.5 GB/s through memory, where single rounds
/// spread most on this machine: more (short) rounds for their medians.
const RECEIVE_ROUNDS: usize = 9;

/// One row of the report.
struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: Option<(String, f64)>,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn ratio(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        base_name: &str,
        base: f64,
        min_ratio: f64,
    ) {
        let r = value / base;
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            baseline: Some((base_name.into(), base)),
            ratio: Some(r),
            target: format!("ratio >= {min_ratio}"),
            met: Some(r >= min_ratio),
        });
    }
    /// A throughput row from alternating rounds: medians of both sides, and the
    /// spread of the per-round ratios in the baseline's name.
    fn rounds(
        &mut self,
        name: &str,
        ours: &[f64],
        unit: &'static str,
        base_name: &str,
        bare: &[f64],
        min_ratio: f64,
    ) {
        let ratios: Vec<f64> = ours.iter().zip(bare).map(|(o, b)| o / b).collect();
        let (lo, hi) = spread(&ratios);
        self.ratio(
            name,
            percentile(&mut ours.to_vec(), 0.5),
            unit,
            &format!(
                "{base_name} (median of {} rounds; round ratios {lo:.2}-{hi:.2})",
                ratios.len()
            ),
            percentile(&mut bare.to_vec(), 0.5),
            min_ratio,
        );
    }

    fn plain(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        target: &str,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            target: target.into(),
            met,
        });
    }
    /// p50 (with an overhead target in ms) and p99 of two latency samples in ms.
    fn latency_pair(
        &mut self,
        name: &str,
        ours: Vec<f64>,
        base_name: &str,
        base: Vec<f64>,
        p50_target_ms: f64,
    ) {
        // The samples were taken in order: split them into rounds for the spread.
        let per = (ours.len() / ROUNDS).max(1);
        let round_overheads = |p: f64| -> (f64, f64) {
            let v: Vec<f64> = ours
                .chunks(per)
                .zip(base.chunks(per))
                .map(|(o, b)| percentile(&mut o.to_vec(), p) - percentile(&mut b.to_vec(), p))
                .collect();
            spread(&v)
        };
        for (p, target) in [(0.5, Some(p50_target_ms)), (0.99, None)] {
            let label = format!("p{}", (p * 100.0) as u32);
            let (lo, hi) = round_overheads(p);
            let (o, b) = (
                percentile(&mut ours.clone(), p),
                percentile(&mut base.clone(), p),
            );
            self.overhead(
                &format!("{name}, {label}"),
                o,
                &format!(
                    "{base_name}, {label} ({} samples; overhead per round of {per}: {lo:.2}-{hi:.2} ms)",
                    ours.len()
                ),
                b,
                target,
            );
        }
    }

    fn overhead(
        &mut self,
        name: &str,
        value: f64,
        base_name: &str,
        base: f64,
        max_overhead_ms: Option<f64>,
    ) {
        let o = value - base;
        self.rows.push(Row {
            name: name.into(),
            value,
            unit: "ms",
            baseline: Some((base_name.into(), base)),
            ratio: Some(value / base),
            target: max_overhead_ms
                .map_or("report".into(), |m| format!("overhead {o:.3} ms < {m} ms")),
            met: max_overhead_ms.map(|m| o < m),
        });
    }
}

/// Payments signed per second by the official x402 SDKs beside ours, in the same run.
/// A peer that is not installed (`cargo xtask tools` installs the Python one) is reported
/// as such, not failed.
fn bench_peers(r: &mut Report) {
    let payer = signer_payer();
    let (req, offer) = bench_offer();
    let n = 1_000;
    let t = Instant::now();
    for _ in 0..n {
        let _ = payer.sign(&offer);
    }
    let ours = n as f64 / t.elapsed().as_secs_f64();
    let py = std::path::Path::new("target/tools/py");
    let required = json!({
        "x402Version": 2,
        "resource": {"url": "http://x/v2/stream/s", "description": "d", "mimeType": "application/json"},
        "accepts": [req.to_v2()],
    });
    let script = format!(
        r#"
import json, time
from eth_account import Account
from x402 import x402ClientSync
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.schemas import PaymentRequired
req = PaymentRequired.model_validate({required})
c = x402ClientSync()
c.register("eip155:*", ExactEvmScheme(Account.from_key("{KEY}")))
c.create_payment_payload(req)
n = 300
t = time.perf_counter()
for _ in range(n):
    c.create_payment_payload(req)
print(n / (time.perf_counter() - t))
"#,
    );
    let python = py.join("x402").exists().then(|| {
        let mut c = std::process::Command::new("python3");
        c.arg("-c").arg(&script).env("PYTHONPATH", py);
        c
    });
    peer_row(
        r,
        "Python",
        "x402 (PyPI) ExactEvmScheme",
        ours,
        python,
        "cargo xtask tools",
    );
    // The TypeScript SDK: `cargo xtask bench --peers` installs it into target/tools/ts-peer.
    let ts = std::path::Path::new("target/tools/ts-peer");
    let node = ts.join("node_modules/@x402/evm").exists().then(|| {
        let _ = std::fs::write(ts.join("peer.mjs"), TS_PEER_SCRIPT);
        let mut c = std::process::Command::new("node");
        c.arg("peer.mjs")
            .arg(KEY)
            .arg(required.to_string())
            .current_dir(ts);
        c
    });
    peer_row(
        r,
        "TypeScript",
        "@x402/core + @x402/evm 2.27.0 ExactEvmScheme (viem account)",
        ours,
        node,
        "cargo xtask bench --peers installs it",
    );
}

/// Runs a peer's measuring script (`None`: not installed), which prints the
/// payments it signed per second, and reports it beside ours; a peer that is
/// missing or fails is reported as not installed, not as a failure.
fn peer_row(
    r: &mut Report,
    sdk: &str,
    base_name: &str,
    ours: f64,
    peer: Option<std::process::Command>,
    install: &str,
) {
    let rate = peer
        .and_then(|mut c| c.output().ok())
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        });
    match rate {
        Some(rate) => r.ratio(
            &format!("7. payments signed/s: ours vs official x402 {sdk} SDK"),
            ours,
            "ops/s",
            base_name,
            rate,
            1.0,
        ),
        None => r.plain(
            &format!("7. official x402 {sdk} SDK"),
            0.0,
            "ops/s",
            &format!("not installed ({install})"),
            None,
        ),
    }
}

/// Payments per second created by the official TypeScript client, the same
/// way as the Python one: a registered `ExactEvmScheme`, one payload per call.
const TS_PEER_SCRIPT: &str = r#"
import { x402Client } from '@x402/core/client';
import { ExactEvmScheme } from '@x402/evm/exact/client';
import { privateKeyToAccount } from 'viem/accounts';
const account = privateKeyToAccount(process.argv[2]);
const req = JSON.parse(process.argv[3]);
const c = new x402Client();
c.register('eip155:*', new ExactEvmScheme(account));
await c.createPaymentPayload(req);
const n = 300;
const t = performance.now();
for (let i = 0; i < n; i++) await c.createPaymentPayload(req);
console.log(n / ((performance.now() - t) / 1000));
"#;

/// The requirement and offer the signing benchmarks sign (0.01 USDC on base-sepolia).
fn bench_offer() -> (x402_types::Requirement, Offer) {
    let req = x402_types::Requirement {
        scheme: "exact".into(),
        network: x402_types::Network::BASE_SEPOLIA,
        amount: Amount::from(10_000),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": "USDC", "version": "2"})),
    };
    let offer = Offer::from_requirement(PathVersion::V2, &req, "http://x/v2/stream/s", "d");
    (req, offer)
}

fn signer_payer() -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap_or_else(|_| unreachable!("constant key")))
}

fn bench_signing(r: &mut Report) {
    use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
    let payer = signer_payer();
    let (req, offer) = bench_offer();
    let n = 2_000;
    let key = SigningKey::from_slice(&hex_key()).unwrap_or_else(|_| unreachable!("constant key"));
    let digest = [7u8; 32];
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut last = None;
    let mut sig = None;
    // Alternate rounds: noise hits both alike; medians and the spread are reported.
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..n {
            last = payer.sign(&offer).ok();
        }
        ours.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..n {
            let mut d = digest;
            d[0] = i as u8;
            sig = Some(key.sign_prehash_recoverable(&d));
        }
        bare.push(n as f64 / t.elapsed().as_secs_f64());
    }
    r.rounds(
        "1a. sign EIP-3009 payment via Payer",
        &ours,
        "ops/s",
        "bare k256 sign_prehash_recoverable",
        &bare,
        0.9,
    );

    let payload = last.unwrap_or_else(|| unreachable!("signing works"));
    let reqs = PaymentRequirements::V2(req.to_v2());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (s, rid): (Signature, RecoveryId) = sig.unwrap_or_else(|| unreachable!());
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(verify_exact(&payload, &reqs, now));
        }
        ours.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(VerifyingKey::recover_from_prehash(&digest, &s, rid));
        }
        bare.push(n as f64 / t.elapsed().as_secs_f64());
    }
    r.rounds(
        "1b. verify payment (all checks + recovery)",
        &ours,
        "ops/s",
        "bare k256 recover_from_prehash",
        &bare,
        0.9,
    );
}

/// The operations whose instructions `bench_counts` counts, `n` times each.
/// Run as `atomicstream-bench count <op> <n>` under callgrind.
fn count_op(op: &str, n: u64) {
    use k256::ecdsa::{SigningKey, VerifyingKey};
    let payer = signer_payer();
    let (req, offer) = bench_offer();
    let key = SigningKey::from_slice(&hex_key()).unwrap_or_else(|_| unreachable!("constant key"));
    let signed = payer.sign(&offer).unwrap_or_else(|e| panic!("{e}"));
    let reqs = PaymentRequirements::V2(req.to_v2());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let digest = [7u8; 32];
    let (sig, rid) = key.sign_prehash_recoverable(&digest);
    let large_data = payload(4096, 1);
    let (small, large) = (
        event_frame(123_456, &payload_small()),
        event_frame(123_456, &large_data),
    );
    let payload = signed;
    for i in 0..n {
        match op {
            "sign" => {
                let _ = std::hint::black_box(payer.sign(std::hint::black_box(&offer)));
            }
            "sign-bare" => {
                let mut d = digest;
                d[0] = i as u8;
                let _ = std::hint::black_box(key.sign_prehash_recoverable(&d));
            }
            "verify" => {
                let _ =
                    std::hint::black_box(verify_exact(std::hint::black_box(&payload), &reqs, now));
            }
            "verify-bare" => {
                let _ =
                    std::hint::black_box(VerifyingKey::recover_from_prehash(&digest, &sig, rid));
            }
            "parse-small" => {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&small)));
            }
            "parse-small-bare" => {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &small,
                )));
            }
            "parse-large" => {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&large)));
            }
            "parse-large-bare" => {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &large,
                )));
            }
            _ => {}
        }
    }
}

fn payload_small() -> Value {
    json!({"type":"trade","symbol":"BTC-USD","price":101.25,"size":0.5,"side":"buy"})
}

/// Instructions `op` takes, counted by callgrind: a run of `n` minus a run of
/// none, divided by `n`, so start-up and set-up cancel out. Deterministic for
/// a given binary and input, whatever else the machine is doing.
fn callgrind_per_op(op: &str, n: u64) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let run = |n: u64| -> Option<f64> {
        let out = std::process::Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .args(["count", op, &n.to_string()])
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, v)| v.trim().to_string())
            })?
            .parse()
            .ok()
    };
    let (zero, many) = (run(0)?, run(n)?);
    Some((many - zero) / n as f64)
}

fn bench_counts(r: &mut Report) {
    let ops = [
        (
            "sign",
            "sign EIP-3009 payment via Payer",
            "bare k256 sign_prehash_recoverable",
            200,
            0.9,
        ),
        (
            "verify",
            "verify payment (all checks + recovery)",
            "bare k256 recover_from_prehash",
            200,
            0.9,
        ),
        (
            "parse-small",
            "parse event frame (~130 B)",
            "serde_json::Value parse",
            5_000,
            0.9,
        ),
        (
            "parse-large",
            "parse event frame (~4 KiB)",
            "serde_json::Value parse",
            2_000,
            0.9,
        ),
    ];
    for (op, name, base, n, target) in ops {
        match (
            callgrind_per_op(op, n),
            callgrind_per_op(&format!("{op}-bare"), n),
        ) {
            (Some(ours), Some(bare)) => {
                // Fewer instructions is better: the ratio is bare / ours, as throughput would be.
                let ratio = bare / ours;
                r.rows.push(Row {
                    name: format!("8. instructions per op: {name}"),
                    value: ours,
                    unit: "instr",
                    baseline: Some((format!("{base} (callgrind)"), bare)),
                    ratio: Some(ratio),
                    target: format!("bare/ours >= {target}"),
                    met: Some(ratio >= target),
                });
            }
            _ => r.plain(
                &format!("8. instructions per op: {name}"),
                f64::NAN,
                "instr",
                "valgrind not installed (apt-get install valgrind)",
                None,
            ),
        }
    }
}

fn hex_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&KEY[2 + 2 * i..4 + 2 * i], 16).unwrap_or(0);
    }
    k
}

fn bench_decode(r: &mut Report) {
    let frame = |data: Value| {
        ServerMessage::Event(x402_types::Event {
            seq: 123_456,
            data: serde_json::value::to_raw_value(&data).unwrap_or_else(|_| unreachable!()),
            ts: Some(1_750_000_000_000),
        })
        .to_json()
    };
    let small =
        frame(json!({"type":"trade","symbol":"BTC-USD","price":101.25,"size":0.5,"side":"buy"}));
    let large = frame(payload(4096, 1));
    for (text, n) in [(small, 300_000), (large, 20_000)] {
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&text)));
            }
            ours.push(n as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..n {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &text,
                )));
            }
            bare.push(n as f64 / t.elapsed().as_secs_f64());
        }
        r.rounds(
            &format!("6. parse event frame ({} B)", text.len()),
            &ours,
            "msg/s",
            "serde_json::Value parse",
            &bare,
            0.9,
        );
    }
}

fn stream_cfg(id: &str, slice: u64) -> StreamConfig {
    StreamConfig {
        id: id.into(),
        title: id.into(),
        description: "bench".into(),
        price_per_minute: "0.06".into(),
        slice_seconds: slice,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 300,
        source: SourceConfig::Api,
    }
}

pub(crate) struct Local {
    pub base: String,
    pub server_state: Arc<x402_server::AppState>,
}

pub(crate) async fn local_server(streams: Vec<StreamConfig>, limits: Limits) -> Local {
    local_server_on(streams, limits, None).await
}

/// A local server whose state lives in Redis at `redis` (a URL), if given.
pub(crate) async fn local_server_on(
    streams: Vec<StreamConfig>,
    limits: Limits,
    redis: Option<&str>,
) -> Local {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()));
    if let Some(url) = redis {
        cfg.store = x402_server::StoreConfig::Redis {
            url: url.to_string(),
            prefix: format!("bench{}:", std::process::id()),
            timeout_ms: 1000,
        };
    }
    cfg.secret = Some("bench-secret-bench-secret-bench-secret".into());
    cfg.streams = streams;
    cfg.limits = limits;
    // Every bench client pays from 127.0.0.1.
    cfg.limits.payments_per_ip_per_minute = u32::MAX;
    let s = ServerBuilder::new(cfg)
        .bind()
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let base = s.http_base().to_string();
    let server_state = s.state().clone();
    s.spawn();
    Local { base, server_state }
}

/// A quote, signed payment and endpoint, as a bare client would do it.
pub(crate) async fn quote(http: &reqwest::Client, base: &str, id: &str) -> (Schema, Offer) {
    let r = http
        .get(format!("{base}/v2/schema/{id}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    let pr = r
        .headers()
        .get("PAYMENT-REQUIRED")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| PaymentRequiredV2::from_header(h).ok())
        .unwrap_or_else(|| panic!("no PAYMENT-REQUIRED"));
    let body = r.bytes().await.unwrap_or_default();
    let schema = Schema::from_json(&body).unwrap_or_else(|e| panic!("schema: {e}"));
    (
        schema,
        pr.into_offer().unwrap_or_else(|| panic!("no accepts")),
    )
}

pub(crate) async fn bare_connect(url: &str, payment: Option<&str>) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(p) = payment {
        req.headers_mut().insert(
            "PAYMENT-SIGNATURE",
            p.parse().map_err(|_| "header".to_string())?,
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// A bare tokio-tungstenite socket paid for one slice: schema, signature, paid upgrade.
async fn paid_socket(http: &reqwest::Client, payer: &EvmExactPayer, base: &str, id: &str) -> Ws {
    let (schema, offer) = quote(http, base, id).await;
    let pay = payer
        .sign(&offer)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_header();
    bare_connect(&schema.websocket_endpoint, Some(&pay))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn payload(size: usize, i: u64) -> Value {
    if size <= 100 {
        json!({"type":"trade","px":101.25,"i":i})
    } else {
        json!({"type":"blob","i":i,"pad":"x".repeat(size - 40)})
    }
}

/// The `n` event frames of `size` bytes the receive rows publish, encoded
/// beforehand: publishing them costs the server no encoding, so the rows
/// measure the clients rather than the publisher (which, encoding 64 KiB
/// payloads on the same two cores, was the bottleneck both clients waited on).
fn frames(size: usize, n: u64) -> Arc<Vec<x402_server::Utf8Bytes>> {
    Arc::new(
        (0..n)
            .map(|i| event_frame(i, &payload(size, i)).into())
            .collect(),
    )
}

/// Publishes the frames into stream `id` (a fresh one: sequence numbers from 0)
/// as fast as possible.
fn burst(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> tokio::task::JoinHandle<()> {
    let hub = local.server_state.streams.get(id).map(|e| e.hub.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(hub) = hub {
            for (seq, f) in frames.iter().enumerate() {
                hub.push(seq as u64, f.clone());
            }
        }
    })
}

async fn receive_bare(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> (f64, f64) {
    let n = frames.len() as u64;
    let http = reqwest::Client::new();
    let mut ws = paid_socket(&http, &signer_payer(), &local.base, id).await;
    let _hello = ws.next().await;
    let t = Instant::now();
    let pubt = burst(local, id, frames);
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                // What a bare client does with a frame: parse it into a Value.
                if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                    && v.get("type").and_then(Value::as_str) == Some("event")
                {
                    got += 1;
                    bytes += t.len() as u64;
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = pubt.await;
    (got as f64 / secs, bytes as f64 / secs)
}

/// The `atomicstream` client the benches measure, with a generous policy.
fn bench_client(local: &Local) -> Client {
    Client::builder()
        .base_url(&local.base)
        .payer(Arc::new(signer_payer()))
        .policy(SpendPolicy::new(
            Amount::from_display("10", 6).unwrap_or_default(),
        ))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn receive_ours(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> (f64, f64) {
    let n = frames.len() as u64;
    let client = bench_client(local);
    let mut s = client.open(id).await.unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let pubt = burst(local, id, frames);
    let (mut got, mut bytes) = (0u64, 0u64);
    let mut envelope = None;
    while got < n {
        match s.next().await {
            Some(ClientEvent::Data(e)) => {
                got += 1;
                // The frame's size on the wire: the data plus the event envelope
                // (measured once; serializing every event again would bill the
                // measurement to our client).
                let data = e.data.get().len() as u64;
                let env = *envelope
                    .get_or_insert_with(|| ServerMessage::Event(e).to_json().len() as u64 - data);
                bytes += data + env;
            }
            Some(ClientEvent::Ended(_)) | None => break,
            _ => {}
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = pubt.await;
    (got as f64 / secs, bytes as f64 / secs)
}

async fn bench_receive(r: &mut Report, size: usize, n: u64) {
    let limits = Limits {
        replay_buffer: n as usize + 10,
        send_queue: 4096,
        max_frame_bytes: 1 << 20,
        ..Limits::default()
    };
    let ids: Vec<String> = (0..2 * RECEIVE_ROUNDS).map(|i| format!("r{i}")).collect();
    let local = local_server(ids.iter().map(|i| stream_cfg(i, 3600)).collect(), limits).await;
    let frames = frames(size, n);
    // Alternate the two clients round by round; report medians and the
    // spread of the per-round ratios (machine noise moves single rounds).
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for round in 0..RECEIVE_ROUNDS {
        // Both readers run in the bench's main future (on the main thread, not a
        // runtime worker): a hand-off from our driver to the reader crosses threads.
        bare.push(receive_bare(&local, &ids[2 * round], frames.clone()).await);
        ours.push(receive_ours(&local, &ids[2 * round + 1], frames.clone()).await);
    }
    let label = match size {
        0..=100 => "~100 B",
        101..=8192 => "~4 KiB",
        _ => "~64 KiB",
    };
    let base_name = "bare tokio-tungstenite client parsing into serde_json::Value";
    let target = if size > 100 { 1.0 } else { 0.9 };
    let col = |v: &[(f64, f64)], i: usize| -> Vec<f64> {
        v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect()
    };
    r.rounds(
        &format!("2. client receive, events/s ({label})"),
        &col(&ours, 0),
        "events/s",
        base_name,
        &col(&bare, 0),
        target,
    );
    r.rounds(
        &format!("2. client receive, bytes/s ({label})"),
        &col(&ours, 1),
        "B/s",
        base_name,
        &col(&bare, 1),
        target,
    );
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn bench_handshake(r: &mut Report, redis: Option<&str>) {
    let local = local_server_on(vec![stream_cfg("h", 3600)], Limits::default(), redis).await;
    let tag = if redis.is_some() { " (Redis)" } else { "" };
    let http = reqwest::Client::new();
    let client = bench_client(&local);
    let rounds = 200;
    let (mut full, mut base_http, mut base_ws, mut renew, mut base_post) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut paid_ws = vec![];
    let payer = signer_payer();
    for _ in 0..rounds {
        // Full: schema -> policy -> sign -> upgrade with payment (verify + settle) -> hello.
        let t = Instant::now();
        let s = client.open("h").await.unwrap_or_else(|e| panic!("{e}"));
        full.push(t.elapsed().as_secs_f64() * 1e3);
        drop(s);
        // Baseline: the bare HTTP round trip and the bare upgrade it contains.
        let t = Instant::now();
        let (schema, offer) = quote(&http, &local.base, "h").await;
        base_http.push(t.elapsed().as_secs_f64() * 1e3);
        let pay = payer
            .sign(&offer)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let renew_url = schema
            .websocket_endpoint
            .replace("ws://", "http://")
            .replace("/stream/", "/renew/");
        let rr = http
            .post(&renew_url)
            .header("PAYMENT-SIGNATURE", &pay)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rr.status(), 200);
        // Bare upgrade (token with paid time, no payment) up to the first frame.
        let t = Instant::now();
        let mut ws = bare_connect(&schema.websocket_endpoint, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ws.next().await;
        base_ws.push(t.elapsed().as_secs_f64() * 1e3);
        drop(ws);
        // The same upgrade done by a bare client that pays: sign, upgrade with the
        // payment (the server verifies and settles), first frame. What is left of the
        // full handshake's overhead beyond this is the client's own structure.
        let (schema2, offer2) = quote(&http, &local.base, "h").await;
        let t = Instant::now();
        let pay2 = payer
            .sign(&offer2)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let mut ws = bare_connect(&schema2.websocket_endpoint, Some(&pay2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ws.next().await;
        paid_ws.push(t.elapsed().as_secs_f64() * 1e3);
        drop(ws);
        // One renewal (sign + POST + verify + settle) against a bare POST round trip.
        let t = Instant::now();
        let pay = payer
            .sign(&offer)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let rr = http
            .post(&renew_url)
            .header("PAYMENT-SIGNATURE", &pay)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = rr.bytes().await;
        renew.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let rr = http
            .post(format!("{}/facilitator/supported", local.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = rr.bytes().await;
        base_post.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let base: Vec<f64> = base_http.iter().zip(&base_ws).map(|(a, b)| a + b).collect();
    let paid: Vec<f64> = base_http.iter().zip(&paid_ws).map(|(a, b)| a + b).collect();
    r.plain(
        &format!("3. bare schema + paid upgrade{tag}, p50 (server's payment work included)"),
        percentile(&mut paid.clone(), 0.5),
        "ms",
        "report",
        None,
    );
    r.latency_pair(
        &format!("3. schema -> hello{tag}"),
        full,
        "bare HTTP round trip + bare upgrade",
        base,
        0.5,
    );
    r.latency_pair(
        &format!("3. one renewal{tag}"),
        renew,
        "bare HTTP POST round trip",
        base_post,
        1.0,
    );
}

async fn bench_fanout(r: &mut Report, sessions: usize, redis: Option<&str>) {
    let limits = Limits {
        max_connections_per_ip: 100_000,
        payments_per_ip_per_minute: 1_000_000,
        ..Limits::default()
    };
    let local = local_server_on(vec![stream_cfg("f", 3600)], limits, redis).await;
    let tag = if redis.is_some() { " (Redis)" } else { "" };
    // Through Redis the events go into the shared log, as another process would publish them.
    let shared = match redis {
        Some(url) => Some(
            x402_server::RedisStore::connect(
                url,
                &format!("bench{}:", std::process::id()),
                Duration::from_secs(1),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        ),
        None => None,
    };
    let http = reqwest::Client::new();
    let payer = signer_payer();
    let mut readers = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, f64)>();
    for _ in 0..sessions {
        let mut ws = paid_socket(&http, &payer, &local.base, "f").await;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m
                    && let Ok(ServerMessage::Event(e)) = ServerMessage::parse(t.as_str())
                {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64() * 1e3)
                        .unwrap_or(0.0);
                    let lat = now_ms - e.ts.unwrap_or(0) as f64;
                    let _ = tx.send((e.seq, lat));
                }
            }
        }));
    }
    drop(tx);
    let publisher = local
        .server_state
        .streams
        .get("f")
        .map(|e| x402_server::Publisher::new(e.hub.clone()))
        .unwrap_or_else(|| unreachable!());
    let rate = 10.0;
    let n = 50u64;
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        let data = json!({"i": i, "px": 100.0});
        match &shared {
            Some(st) => {
                let _ = st.publish("f", 1024, &data).await;
            }
            None => {
                publisher.publish(&data);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = t.elapsed().as_secs_f64();
    for h in &readers {
        h.abort();
    }
    let mut lats = Vec::new();
    let mut count = 0u64;
    while let Ok((_, l)) = rx.try_recv() {
        count += 1;
        lats.push(l);
    }
    let expected = n * sessions as u64;
    let mut l2 = lats.clone();
    let p99 = percentile(&mut l2, 0.99);
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: events delivered/s"),
        count as f64 / secs,
        "events/s",
        &format!("no loss ({count}/{expected})"),
        Some(count == expected),
    );
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: latency p50"),
        percentile(&mut lats, 0.5),
        "ms",
        "report",
        None,
    );
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: latency p99"),
        p99,
        "ms",
        "p99 < 50 ms",
        Some(p99 < 50.0),
    );
}

/// The frame our server sends for `data` as event `seq` (what the bare server sends too).
fn event_frame(seq: u64, data: &Value) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ServerMessage::Event(x402_types::Event {
        seq,
        data: serde_json::value::to_raw_value(data).unwrap_or_else(|_| unreachable!()),
        ts: Some(ts),
    })
    .to_json()
}

/// A bare tokio-tungstenite broadcast server: accept, send a first frame once
/// subscribed, then every broadcast frame to every socket. No payment, no rules.
async fn bare_broadcast_server(
    frames: tokio::sync::broadcast::Sender<tokio_tungstenite::tungstenite::Utf8Bytes>,
) -> String {
    use futures::SinkExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let mut rx = frames.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if ws
                    .send(Message::Text("{\"type\":\"hello\"}".into()))
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    match rx.recv().await {
                        Ok(f) => {
                            if ws.send(Message::Text(f)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

/// Reads `n` events on each socket (after its first frame) and returns when
/// every socket has them all, or has stopped.
async fn drain_all(sockets: Vec<Ws>, n: u64) -> tokio::sync::oneshot::Receiver<u64> {
    let (ready_tx, ready) = tokio::sync::mpsc::channel::<()>(sockets.len().max(1));
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let _first = ws.next().await;
            let _ = ready_tx.send(()).await;
            let mut got = 0u64;
            while got < n {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"event\"") => {
                        got += 1
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            got
        }));
    }
    drop(ready_tx);
    let count = tasks.len() as u64;
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let mut ready = ready;
    for _ in 0..count {
        let _ = ready.recv().await;
    }
    tokio::spawn(async move {
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        let _ = done_tx.send(total);
    });
    done
}

/// Server broadcast throughput: `sockets` subscribers, `n` events of `size`
/// bytes published in a burst, ours (paid sockets on the reference server)
/// against a bare tokio-tungstenite broadcast server, same frames, same
/// client code; rounds alternate, medians with the spread of round ratios.
async fn bench_broadcast(r: &mut Report, sockets: usize, size: usize, n: u64, rounds: usize) {
    let limits = Limits {
        replay_buffer: n as usize + 10,
        send_queue: n as usize + 10,
        max_connections_per_ip: 100_000,
        payments_per_ip_per_minute: 1_000_000,
        ..Limits::default()
    };
    let ids: Vec<String> = (0..rounds).map(|i| format!("b{i}")).collect();
    let local = local_server(ids.iter().map(|i| stream_cfg(i, 3600)).collect(), limits).await;
    let http = reqwest::Client::new();
    let payer = signer_payer();
    let payloads: Vec<Value> = (0..n).map(|i| payload(size, i)).collect();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut delivered = (0u64, 0u64);
    for id in &ids {
        // Bare server.
        let (tx, _) = tokio::sync::broadcast::channel(n as usize + 10);
        let url = bare_broadcast_server(tx.clone()).await;
        let mut socks = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            socks.push(
                bare_connect(&url, None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let done = drain_all(socks, n).await;
        let t = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            let _ = tx.send(event_frame(i as u64, p).into());
        }
        delivered.0 += done.await.unwrap_or(0);
        bare.push((sockets as u64 * n) as f64 / t.elapsed().as_secs_f64());
        drop(tx);
        // Ours.
        let mut socks = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            socks.push(paid_socket(&http, &payer, &local.base, id).await);
        }
        let done = drain_all(socks, n).await;
        let publisher = local
            .server_state
            .streams
            .get(id.as_str())
            .map(|e| x402_server::Publisher::new(e.hub.clone()))
            .unwrap_or_else(|| unreachable!());
        let t = Instant::now();
        for p in &payloads {
            publisher.publish(p);
        }
        delivered.1 += done.await.unwrap_or(0);
        ours.push((sockets as u64 * n) as f64 / t.elapsed().as_secs_f64());
    }
    let label = if size <= 100 { "~100 B" } else { "~4 KiB" };
    let expected = (sockets * rounds) as u64 * n;
    r.plain(
        &format!("4b. server broadcast ({label}): frames delivered, ours / bare"),
        delivered.1 as f64,
        "frames",
        &format!("no loss: {} and {} of {expected}", delivered.1, delivered.0),
        Some(delivered == (expected, expected)),
    );
    r.rounds(
        &format!("4b. server broadcast to {sockets} sockets ({label}), frames/s"),
        &ours,
        "frames/s",
        "bare tokio-tungstenite broadcast server",
        &bare,
        0.9,
    );
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    )
}

/// CPU seconds (user, system) a process has used so far, from /proc.
fn cpu_secs(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    let tick = 100.0; // USER_HZ on Linux
    (
        f.get(11).copied().unwrap_or(0.0) / tick,
        f.get(12).copied().unwrap_or(0.0) / tick,
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `atomicstream serve` in its own process (so its resident set and its cores'
/// work are its own) with one stream `id` and the given source (TOML inline table).
struct ServerProcess {
    child: std::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    async fn start(id: &str, source: &str) -> Result<ServerProcess, String> {
        let exe = std::env::var("ATOMICSTREAM_BIN")
            .unwrap_or_else(|_| "target/release/atomicstream".into());
        // A port the OS says is free now (a fixed one collided with a socket in TIME_WAIT).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let dir =
            std::env::temp_dir().join(format!("atomicstream-bench-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let cfg = dir.join("server.toml");
        let _ = std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nsecret = \"bench-secret-bench-secret-bench-secret\"\n[facilitator]\nkind = \"embedded\"\n[limits]\nmax_connections_per_ip = 1000000\npayments_per_ip_per_minute = 1000000\nmax_sessions = 1000000\n[[streams]]\nid = \"{id}\"\nprice_per_minute = \"0.06\"\nslice_seconds = 3600\npay_to = \"{DEV_PAY_TO}\"\nmax_timeout_seconds = 3600\nsource = {source}\n"
            ),
        );
        let child = std::process::Command::new(&exe)
            .args(["serve", "--config", cfg.to_str().unwrap_or_default()])
            .env("RUST_LOG", "error")
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{exe}: {e} (run `cargo build --release` first)"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let server = ServerProcess { child, base, dir };
        for _ in 0..100 {
            if http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{exe}: the server did not answer on {}",
            server.base
        ))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `n` paid sockets on stream `id` (schema, signature, paid upgrade
/// each), `parallel` at a time; sockets use a small read buffer, as a
/// client holding thousands of them would.
async fn open_paid(base: &str, id: &str, n: usize, parallel: usize) -> (Vec<Ws>, usize) {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let http = reqwest::Client::new();
    let payer = Arc::new(signer_payer());
    let opened: Vec<Option<Ws>> = futures::stream::iter(0..n)
        .map(|_| {
            let (http, payer) = (http.clone(), payer.clone());
            async move {
                let (schema, offer) = quote(&http, base, id).await;
                let pay = payer.sign(&offer).ok()?.to_header();
                let mut req = schema
                    .websocket_endpoint
                    .as_str()
                    .into_client_request()
                    .ok()?;
                req.headers_mut()
                    .insert("PAYMENT-SIGNATURE", pay.parse().ok()?);
                // tungstenite zero-fills the read buffer before every read: keep it near the
                // frame size (~170 B) so the load generator leaves the cores to the server.
                let cfg = WebSocketConfig::default().read_buffer_size(512);
                tokio_tungstenite::connect_async_with_config(req, Some(cfg), true)
                    .await
                    .ok()
                    .map(|(ws, _)| ws)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let failed = opened.iter().filter(|o| o.is_none()).count();
    (opened.into_iter().flatten().collect(), failed)
}

/// 10,000 paid sessions at 10 events/s each (100,000 events/s out of the
/// server), the server in its own process: every session must receive every
/// event of a 100-event window, in order; latency is the event's publication
/// stamp to its receipt.
/// One round of the fan-out with the server in its own process.
struct FanoutRound {
    open_secs: f64,
    failed: usize,
    count: u64,
    out_of_order: usize,
    unfinished: usize,
    p50: f64,
    p99: f64,
    /// Server (user, system) and clients (user, system) in cores.
    cpu: (f64, f64, f64, f64),
    rss_mib: f64,
}

async fn fanout_round(sessions: usize, window: u64) -> Result<FanoutRound, String> {
    let server = ServerProcess::start("f", "{ kind = \"synthetic\", rate = 10.0 }").await?;
    let t = Instant::now();
    let (sockets, failed) = open_paid(&server.base, "f", sessions, 8).await;
    let open_secs = t.elapsed().as_secs_f64();
    // The window starts a second after every socket is open.
    let latest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut readers = Vec::with_capacity(sockets.len());
    for mut ws in sockets {
        let (latest, start) = (latest.clone(), start.clone());
        readers.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut lats: Vec<f32> = Vec::with_capacity(window as usize);
            let mut next_expected: Option<u64> = None;
            let mut in_order = true;
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(ServerMessage::Event(e)) = ServerMessage::parse(t.as_str()) else {
                    continue;
                };
                let a = start.load(Relaxed);
                if e.seq < a {
                    // Only before the window: one shared atomic for 10,000 tasks.
                    latest.fetch_max(e.seq, Relaxed);
                    continue;
                }
                if e.seq >= a + window {
                    break;
                }
                if next_expected.is_some_and(|x| x != e.seq)
                    || (next_expected.is_none() && e.seq != a)
                {
                    in_order = false;
                }
                next_expected = Some(e.seq + 1);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64() * 1e3)
                    .unwrap_or(0.0);
                lats.push((now_ms - e.ts.unwrap_or(0) as f64) as f32);
            }
            (lats, in_order)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(server.pid()).unwrap_or(0);
    start.store(
        latest.load(std::sync::atomic::Ordering::Relaxed) + 3,
        std::sync::atomic::Ordering::Relaxed,
    );
    let t = Instant::now();
    let (server_cpu0, me_cpu0) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    let deadline = Duration::from_secs(window / 10 + 15);
    let mut lats: Vec<f64> = Vec::with_capacity(sessions * window as usize);
    let (mut count, mut out_of_order, mut unfinished) = (0u64, 0usize, 0usize);
    for h in readers {
        let left = deadline.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, h).await {
            Ok(Ok((l, ok))) => {
                count += l.len() as u64;
                out_of_order += usize::from(!ok);
                lats.extend(l.into_iter().map(f64::from));
            }
            _ => unfinished += 1,
        }
    }
    let rss = rss_kib(server.pid()).unwrap_or(0).max(before);
    let secs = t.elapsed().as_secs_f64();
    let (server_cpu1, me_cpu1) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    drop(server);
    let cores = |a: (f64, f64), b: (f64, f64)| ((b.0 - a.0) / secs, (b.1 - a.1) / secs);
    let (su, ss) = cores(server_cpu0, server_cpu1);
    let (cu, cs) = cores(me_cpu0, me_cpu1);
    Ok(FanoutRound {
        open_secs,
        failed,
        count,
        out_of_order,
        unfinished,
        p50: percentile(&mut lats, 0.5),
        p99: percentile(&mut lats, 0.99),
        cpu: (su, ss, cu, cs),
        rss_mib: rss as f64 / 1024.0,
    })
}

/// 10,000 paid sessions at 10 events/s each (100,000 events/s out of the
/// server), the server in its own process: every session must receive every
/// event of a 100-event window, in order; latency is the event's publication
/// stamp to its receipt. Several rounds, each with a fresh server and fresh
/// sessions; the median round is reported with the spread.
async fn bench_fanout_process(r: &mut Report, sessions: usize, window: u64, rounds: usize) {
    let mut done = Vec::new();
    for _ in 0..rounds {
        match fanout_round(sessions, window).await {
            Ok(x) => done.push(x),
            Err(e) => {
                r.plain(
                    &format!("4c. fan-out to {sessions}: {e}"),
                    f64::NAN,
                    "",
                    "server",
                    Some(false),
                );
                return;
            }
        }
    }
    let expected = sessions as u64 * window * rounds as u64;
    let count: u64 = done.iter().map(|x| x.count).sum();
    let bad: usize = done
        .iter()
        .map(|x| x.out_of_order + x.unfinished + x.failed)
        .sum();
    let col = |f: &dyn Fn(&FanoutRound) -> f64| -> Vec<f64> { done.iter().map(f).collect() };
    let med = |v: Vec<f64>| percentile(&mut v.clone(), 0.5);
    let p99s = col(&|x| x.p99);
    let p99 = med(p99s.clone());
    let (su, ss, cu, cs) = (
        med(col(&|x| x.cpu.0)),
        med(col(&|x| x.cpu.1)),
        med(col(&|x| x.cpu.2)),
        med(col(&|x| x.cpu.3)),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s (server process): opened in"),
        med(col(&|x| x.open_secs)),
        "s",
        "report (median)",
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: events delivered"),
        count as f64,
        "events",
        &format!(
            "no loss ({count}/{expected} over {rounds} rounds; {bad} sessions failed, out of order or unfinished)"
        ),
        Some(count == expected && bad == 0),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: latency p50"),
        med(col(&|x| x.p50)),
        "ms",
        "report (median of rounds)",
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: latency p99"),
        p99,
        "ms",
        &format!(
            "p99 < 100 ms (median of {rounds} rounds; round p99s {})",
            p99s.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(p99 < 100.0),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server CPU (cores busy)"),
        su + ss,
        "cores",
        &format!(
            "report, median (user {su:.2}, system {ss:.2}; the clients: user {cu:.2}, system {cs:.2})"
        ),
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server resident set"),
        done.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
        "MiB",
        "report (largest round)",
        None,
    );
}

async fn bench_scale(r: &mut Report, counts: &[usize]) {
    for &n in counts {
        let server = match ServerProcess::start("idle", "{ kind = \"api\" }").await {
            Ok(s) => s,
            Err(e) => {
                r.plain(
                    &format!("5. scale {n}: server did not start ({e})"),
                    f64::NAN,
                    "",
                    "run `cargo build --release` first",
                    Some(false),
                );
                return;
            }
        };
        let before = rss_kib(server.pid()).unwrap_or(0);
        let t = Instant::now();
        let (sockets, failed) = open_paid(&server.base, "idle", n, 1).await;
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(server.pid()).unwrap_or(0);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        r.plain(
            &format!("5. {n} idle paid sessions: memory per session"),
            per / 1024.0,
            "KiB",
            "< 64 KiB",
            Some(per < 64.0 * 1024.0 && failed == 0),
        );
        r.plain(
            &format!("5. {n} idle paid sessions: time to open all ({failed} failed)"),
            open_secs,
            "s",
            "report",
            None,
        );
        drop(sockets);
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "memory": mem})
}

fn print(report: &Report) -> Value {
    println!(
        "{:<52} {:>14} {:<9} {:>14}  {:>7}  target",
        "benchmark", "value", "unit", "baseline", "ratio"
    );
    let mut rows = Vec::new();
    for r in &report.rows {
        let base = r
            .baseline
            .as_ref()
            .map_or(String::from("-"), |(_, b)| format!("{b:.1}"));
        let ratio = r.ratio.map_or(String::from("-"), |x| format!("{x:.3}"));
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<52} {:>14.1} {:<9} {:>14}  {:>7}  {} {met}",
            r.name, r.value, r.unit, base, ratio, r.target
        );
        let mut m = BTreeMap::new();
        m.insert("name", json!(r.name));
        m.insert("value", json!(r.value));
        m.insert("unit", json!(r.unit));
        m.insert(
            "baseline_name",
            json!(r.baseline.as_ref().map(|b| b.0.clone())),
        );
        m.insert("baseline", json!(r.baseline.as_ref().map(|b| b.1)));
        m.insert("ratio", json!(r.ratio));
        m.insert("target", json!(r.target));
        m.insert("met", json!(r.met));
        rows.push(json!(m));
    }
    json!({"machine": machine(), "rows": rows})
}

/// mimalloc returns freed pages to the OS, so the soak's resident set measures live memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("soak") {
        let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120);
        let instances = args
            .iter()
            .position(|a| a == "--instances")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let redis = args.iter().any(|a| a == "--redis");
        std::process::exit(soak::run(secs, instances, redis).await);
    }
    if args.first().map(String::as_str) == Some("count") {
        let op = args.get(1).map_or("", String::as_str);
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        count_op(op, n);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--only a,b`: run only the named sections (sign, parse, counts, receive,
    // handshake, fanout, fanout10k, broadcast, scale, peers); all but peers by default.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    let run = |name: &str| match &only {
        Some(list) => list.iter().any(|n| n == name),
        None => true,
    };
    let mut r = Report::default();
    if run("sign") {
        eprintln!("bench: signing and verification");
        bench_signing(&mut r);
    }
    if run("parse") {
        eprintln!("bench: decoding");
        bench_decode(&mut r);
    }
    if run("counts") {
        eprintln!("bench: instruction counts (callgrind)");
        bench_counts(&mut r);
    }
    if run("receive") {
        eprintln!("bench: client receive path");
        // Each full round moves about half a second of frames per client.
        bench_receive(&mut r, 100, if quick { 20_000 } else { 500_000 }).await;
        bench_receive(&mut r, 4096, if quick { 5_000 } else { 100_000 }).await;
    }
    if run("receive") || run("receive-large") {
        bench_receive(&mut r, 65_536, if quick { 300 } else { 10_000 }).await;
    }
    if run("handshake") {
        eprintln!("bench: handshake");
        bench_handshake(&mut r, None).await;
    }
    if run("fanout") {
        eprintln!("bench: fan-out");
        for n in [1, 100, 1000] {
            bench_fanout(&mut r, n, None).await;
        }
    }
    if run("fanout") || run("fanout10k") {
        let (n, rounds) = if quick { (2_000, 1) } else { (10_000, 3) };
        bench_fanout_process(&mut r, n, 100, rounds).await;
    }
    // --redis: the same rows with the server's state in a local redis-server.
    let redis = if args.iter().any(|a| a == "--redis") {
        match atomicstream_testkit::Redis::try_start() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("bench: --redis: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if let Some(redis) = &redis {
        let url = redis.url();
        eprintln!("bench: handshake and fan-out through Redis");
        bench_handshake(&mut r, Some(&url)).await;
        for n in [1, 100, 1000] {
            bench_fanout(&mut r, n, Some(&url)).await;
        }
    }
    if run("broadcast") {
        eprintln!("bench: server broadcast against a bare tokio-tungstenite server");
        let (n_small, n_large) = if quick { (2_000, 500) } else { (10_000, 2_000) };
        bench_broadcast(&mut r, 100, 100, n_small, 5).await;
        bench_broadcast(&mut r, 100, 4096, n_large, 5).await;
    }
    if run("scale") {
        eprintln!("bench: scale (server in its own process)");
        bench_scale(&mut r, if quick { &[1_000] } else { &[1_000, 10_000] }).await;
    }
    if args.iter().any(|a| a == "--peers") || only.as_ref().is_some_and(|_| run("peers")) {
        eprintln!("bench: peers (official x402 SDKs, where installed)");
        bench_peers(&mut r);
    }
    let json = print(&r);
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        "target/bench/report.json",
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    eprintln!("wrote target/bench/report.json");
}
