//! Row family 7: payments signed per second beside the official x402 SDKs.

use std::time::Instant;

use serde_json::json;

use crate::fixture::{KEY, bench_offer, signer_payer};
use crate::report::Report;

/// Payments signed per second by the official x402 SDKs beside ours, in the same run.
/// A peer that is not installed (`cargo xtask tools` installs the Python one) is reported
/// as such, not failed.
pub(crate) fn bench_peers(r: &mut Report) {
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
