//! `batch-settlement` end to end on anvil: the official x402 Python SDK's client
//! buys slices of a stream from our server by channel (one gasless deposit, then a
//! voucher per slice), our server's channel manager claims and sweeps on chain
//! through our EVM facilitator, and the SDK closes the channel with a cooperative
//! refund. The payer loses exactly what was charged; the receiver gains the same.

use std::process::{Command, Stdio};

use serde_json::Value;
use x402_chain::EvmU256;

use crate::channel_rig::{PRICE, Rig};

/// Runs the official client (tests/interop/official_channel.py).
fn official_client(key: &str, input: Value) -> Value {
    let py = atomicstream_testkit::x402_python();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/official_channel.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", py)
        .env("X402_SDK_KEY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the official client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_client_deposits_pays_by_voucher_and_refunds() {
    // The manager claims once 2 slices are unclaimed.
    let rig = Rig::start(2).await;
    let buyer = rig.buyer(1_000_000).await;
    let wallet = &buyer.key;

    // The 402 offers exact first, then batch-settlement with the facilitator's authorizer.
    let quote = rig.quote().await;
    let required = &quote.required;
    let accepts = required["accepts"].as_array().unwrap();
    assert_eq!(accepts.len(), 2, "{required}");
    assert_eq!(accepts[0]["scheme"], "exact");
    assert_eq!(accepts[1]["scheme"], "batch-settlement");
    assert_eq!(accepts[1]["amount"], PRICE.to_string());
    assert_eq!(
        accepts[1]["extra"]["receiverAuthorizer"],
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    );
    assert_eq!(accepts[1]["extra"]["withdrawDelay"], 900);
    let renew = quote.renew.clone();

    let storage = atomicstream_testkit::scratch("official-channel");
    let storage = storage.to_str().unwrap();
    let payer_before = rig.usdc(buyer.addr()).await;
    let payee_before = rig.payee_usdc().await;
    let out = official_client(
        &wallet.to_hex_secret(),
        serde_json::json!({
            "renew": renew, "rpc": rig.anvil.url(), "network": "eip155:84532",
            "requests": 3, "refund": false, "storage": storage,
        }),
    );
    let requests = out["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 3);
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r["status"], 200, "request {i}: {r}");
        assert_eq!(r["receipt"]["success"], true, "{r}");
        assert_eq!(
            r["receipt"]["extra"]["chargedAmount"],
            PRICE.to_string(),
            "{r}"
        );
        assert_eq!(
            r["receipt"]["extra"]["channelState"]["chargedCumulativeAmount"],
            (PRICE * (i as u64 + 1)).to_string(),
            "{r}"
        );
        assert_eq!(r["body"]["slices"], i as u64 + 1, "{r}");
    }
    // The first payment deposited (a transaction); the others were vouchers only.
    assert!(
        requests[0]["receipt"]["transaction"]
            .as_str()
            .unwrap()
            .starts_with("0x")
    );
    assert_eq!(requests[1]["receipt"]["transaction"], "");
    let deposit = 12 * PRICE; // minDeposit: 12 slices
    assert_eq!(
        rig.usdc(buyer.addr()).await,
        payer_before - EvmU256::from(deposit)
    );

    // The channel manager claims (3 slices unclaimed >= 2) and sweeps to the payee.
    let charged = EvmU256::from(3 * PRICE);
    rig.until("the charged total reached the payee", || async {
        rig.payee_usdc().await == payee_before + charged
    })
    .await;

    // The official client closes the channel: the unused deposit comes back.
    let out = official_client(
        &wallet.to_hex_secret(),
        serde_json::json!({
            "renew": renew, "rpc": rig.anvil.url(), "network": "eip155:84532",
            "requests": 0, "refund": true, "storage": storage,
        }),
    );
    assert_eq!(out["refund"]["success"], true, "{out}");
    assert_eq!(
        rig.usdc(buyer.addr()).await,
        payer_before - charged,
        "the payer lost exactly what was charged"
    );
    assert_eq!(rig.payee_usdc().await, payee_before + charged);
}
