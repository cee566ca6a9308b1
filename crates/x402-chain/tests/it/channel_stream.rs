//! `batch-settlement` end to end on anvil: the official x402 Python SDK's client
//! buys slices of a stream from our server by channel (one gasless deposit, then a
//! voucher per slice), our server's channel manager claims and sweeps on chain
//! through our EVM facilitator, and the SDK closes the channel with a cooperative
//! refund. The payer loses exactly what was charged; the receiver gains the same.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_chain::{EvmAddress, EvmConfig, EvmFacilitator, EvmU256};
use x402_payer::LocalSigner;
use x402_server::{ChannelOffer, Config, ServerBuilder, SourceConfig, StreamConfig};
use x402_types::Network;

const PAYEE: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"; // anvil account 3
const PRICE: u64 = 2_000; // 0.06 USDC a minute, 2-second slices

fn decode_b64_json(h: &str) -> Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(h)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("JSON")
}

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
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
    anvil.install_batch_settlement().await.unwrap();
    let wallet = LocalSigner::random().unwrap();
    let payer: EvmAddress = wallet.to_string().parse().unwrap();
    let payee: EvmAddress = PAYEE.parse().unwrap();
    anvil.mint(token, payer, 1_000_000).await.unwrap();
    let f = EvmFacilitator::connect(EvmConfig::new(
        anvil.url(),
        Network::BASE_SEPOLIA,
        DEV_KEYS[1],
    ))
    .await
    .unwrap();
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("chain-test-secret-chain-test-secret-x".into());
    cfg.limits.horizon_slices = 10;
    cfg.channel_manager.interval_secs = 1;
    cfg.channel_manager.claim_threshold_slices = 2;
    cfg.streams = vec![StreamConfig {
        id: "s".into(),
        title: "S".into(),
        description: "test".into(),
        price_per_minute: "0.06".into(),
        slice_seconds: 2,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: PAYEE.into(),
        max_timeout_seconds: 60,
        source: SourceConfig::Synthetic {
            rate: 20.0,
            symbol: "T".into(),
            pad: 0,
        },
        channel: Some(ChannelOffer::default()),
    }];
    let server = ServerBuilder::new(cfg)
        .facilitator(Arc::new(f))
        .bind()
        .await
        .unwrap();
    let base = server.http_base().to_string();
    server.spawn();

    // The 402 offers exact first, then batch-settlement with the facilitator's authorizer.
    let http = reqwest::Client::new();
    let quote = http
        .get(format!("{base}/v2/schema/s"))
        .send()
        .await
        .unwrap();
    assert_eq!(quote.status().as_u16(), 402);
    let required = decode_b64_json(quote.headers()["payment-required"].to_str().unwrap());
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
    let schema: Value = quote.json().await.unwrap();
    let ws = schema["websocketEndpoint"].as_str().unwrap();
    let token_param = ws.split("t=").nth(1).unwrap();
    let renew = format!("{base}/v2/renew/s?t={token_param}");

    let storage = atomicstream_testkit::scratch("official-channel");
    let storage = storage.to_str().unwrap();
    let payer_before = anvil.usdc_balance(token, payer).await.unwrap();
    let payee_before = anvil.usdc_balance(token, payee).await.unwrap();
    let out = official_client(
        &wallet.to_hex_secret(),
        serde_json::json!({
            "renew": renew, "rpc": anvil.url(), "network": "eip155:84532",
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
        anvil.usdc_balance(token, payer).await.unwrap(),
        payer_before - EvmU256::from(deposit)
    );

    // The channel manager claims (3 slices unclaimed >= 2) and sweeps to the payee.
    let charged = EvmU256::from(3 * PRICE);
    let mut swept = false;
    for _ in 0..60 {
        if anvil.usdc_balance(token, payee).await.unwrap() == payee_before + charged {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(swept, "the charged total reached the payee");

    // The official client closes the channel: the unused deposit comes back.
    let out = official_client(
        &wallet.to_hex_secret(),
        serde_json::json!({
            "renew": renew, "rpc": anvil.url(), "network": "eip155:84532",
            "requests": 0, "refund": true, "storage": storage,
        }),
    );
    assert_eq!(out["refund"]["success"], true, "{out}");
    assert_eq!(
        anvil.usdc_balance(token, payer).await.unwrap(),
        payer_before - charged,
        "the payer lost exactly what was charged"
    );
    assert_eq!(
        anvil.usdc_balance(token, payee).await.unwrap(),
        payee_before + charged
    );
}
