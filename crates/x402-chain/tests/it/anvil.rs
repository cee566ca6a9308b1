//! Real settlement on a local chain: anvil (started per test on a free port,
//! chain id 84532), the test USDC at the canonical base-sepolia address, real
//! EIP-3009 signatures from the project's payer, real transactions. No mocks.
//! A test that cannot find anvil fails (run `cargo xtask ci`, which installs it).

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_chain::{EvmConfig, EvmFacilitator};
use x402_facilitator::{Facilitator, FacilitatorReason};
use x402_payer::{EvmExactPayer, LocalSigner, SeededRandom};
use x402_types::{
    Amount, FacilitatorRequest, Network, Offer, PathVersion, PaymentPayload, PaymentRequirements,
    Requirement,
};

const PRICE: u64 = 10_000; // 0.01 USDC
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"; // anvil account 2

struct Chain {
    anvil: Anvil,
    token: Address,
    facilitator: EvmFacilitator,
    payer: EvmExactPayer,
    payer_addr: Address,
}

fn requirement() -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(PRICE),
        asset: x402_chain::anvil::BASE_SEPOLIA_USDC.into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 120,
        extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
    }
}

async fn chain(fund: u64, seed: u64) -> Chain {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask ci` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
    let key = LocalSigner::random().unwrap();
    let payer_addr: Address = key.to_string().parse().unwrap();
    if fund > 0 {
        anvil.mint(token, payer_addr, fund).await.unwrap();
    }
    let facilitator = EvmFacilitator::connect(EvmConfig::new(
        anvil.url(),
        Network::BASE_SEPOLIA,
        DEV_KEYS[1],
    ))
    .await
    .unwrap();
    Chain {
        anvil,
        token,
        facilitator,
        payer: EvmExactPayer::new(key).with_random(Arc::new(SeededRandom::new(seed))),
        payer_addr,
    }
}

impl Chain {
    fn request(&self, v: PathVersion) -> FacilitatorRequest {
        let r = requirement();
        let offer = Offer::from_requirement(v, &r, "ws://h/v2/stream/s", "test");
        let payload = self.payer.sign(&offer).unwrap();
        FacilitatorRequest {
            payment_payload: payload,
            payment_requirements: match v {
                PathVersion::V1 => PaymentRequirements::V1(r.to_v1("ws://h/v1/stream/s", "test")),
                PathVersion::V2 => PaymentRequirements::V2(r.to_v2()),
            },
        }
    }

    async fn usdc(&self, who: Address) -> U256 {
        self.anvil.usdc_balance(self.token, who).await.unwrap()
    }

    async fn relayer_eth(&self) -> U256 {
        let p = self.anvil.provider(DEV_KEYS[0]).unwrap();
        let relayer: Address = self.facilitator.relayer().to_string().parse().unwrap();
        p.get_balance(relayer).await.unwrap()
    }
}

#[tokio::test]
async fn n_slices_move_exactly_n_times_the_price_v1_and_v2() {
    let c = chain(1_000_000, 1).await;
    let pay_to: Address = PAY_TO.parse().unwrap();
    let (payer0, payee0) = (c.usdc(c.payer_addr).await, c.usdc(pay_to).await);
    let mut txs = Vec::new();
    for v in [PathVersion::V1, PathVersion::V2, PathVersion::V2] {
        let req = c.request(v);
        let verdict = c.facilitator.verify(&req).await.unwrap();
        assert!(verdict.is_valid, "{verdict:?}");
        let s = c.facilitator.settle(&req).await.unwrap();
        assert!(s.success, "{s:?}");
        assert_eq!(s.transaction.len(), 66, "a real transaction hash");
        // Each version's own network notation.
        let network = if v == PathVersion::V1 {
            "base-sepolia"
        } else {
            "eip155:84532"
        };
        assert_eq!(s.network, network);
        txs.push(s.transaction.clone());
        // The same payload again: refused as the official facilitator refuses a replay,
        // naming the transaction that settled it; no second transfer.
        let again = c.facilitator.settle(&req).await.unwrap();
        assert!(!again.success, "{again:?}");
        assert_eq!(again.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
        assert_eq!(again.transaction, s.transaction);
        assert_eq!(again.network, network);
    }
    let n = U256::from(3 * PRICE);
    assert_eq!(
        c.usdc(pay_to).await,
        payee0 + n,
        "the payee gained exactly N x price"
    );
    assert_eq!(
        c.usdc(c.payer_addr).await,
        payer0 - n,
        "the payer lost the same"
    );
    txs.dedup();
    assert_eq!(txs.len(), 3);
}

#[tokio::test]
async fn a_payer_without_funds_is_refused_before_any_gas_is_spent() {
    let c = chain(PRICE - 1, 2).await;
    let gas0 = c.relayer_eth().await;
    let req = c.request(PathVersion::V2);
    let v = c.facilitator.verify(&req).await.unwrap();
    assert_eq!(v.invalid_reason.as_deref(), Some("insufficient_funds"));
    let s = c.facilitator.settle(&req).await.unwrap();
    assert!(!s.success);
    assert_eq!(s.error_reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(c.relayer_eth().await, gas0, "the relayer spent nothing");
}

#[tokio::test]
async fn a_replayed_payment_is_refused_by_our_checks_and_by_the_chain() {
    let c = chain(1_000_000, 3).await;
    let req = c.request(PathVersion::V2);
    assert!(c.facilitator.settle(&req).await.unwrap().success);
    // The same authorization with other signature bytes (v = 0): our checks see the used nonce.
    let mut twin = req.clone();
    if let PaymentPayload::V2(p) = &mut twin.payment_payload
        && let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload
    {
        e.signature.0[64] -= 27;
    }
    let v = c.facilitator.verify(&twin).await.unwrap();
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_nonce_already_used")
    );
    // Forced on chain anyway, the token itself refuses it: the transaction reverts.
    let p = c.anvil.provider(DEV_KEYS[0]).unwrap();
    let t = x402_chain::token::IEip3009Token::new(c.token, p);
    let evm = req.payment_payload.exact_evm().unwrap();
    let a = &evm.authorization;
    let call = t.transferWithAuthorization_1(
        c.payer_addr,
        PAY_TO.parse().unwrap(),
        U256::from(PRICE),
        U256::from_be_bytes(a.valid_after.to_be_bytes()),
        U256::from_be_bytes(a.valid_before.to_be_bytes()),
        a.nonce.0.into(),
        evm.signature.0.to_vec().into(),
    );
    let err = match call.call().await {
        Ok(_) => panic!("the chain accepted a replayed authorization"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("authorization is used"), "{err}");
}

#[tokio::test]
async fn a_relayer_without_gas_is_a_clear_error_and_nothing_moves() {
    let c = chain(1_000_000, 4).await;
    let relayer: Address = c.facilitator.relayer().to_string().parse().unwrap();
    c.anvil.set_balance(relayer, U256::ZERO).await.unwrap();
    let before = c.usdc(c.payer_addr).await;
    let req = c.request(PathVersion::V2);
    let e = c.facilitator.settle(&req).await.unwrap_err();
    assert!(
        matches!(&e, x402_facilitator::FacilitatorError::Unavailable(m) if m.contains("fund it")),
        "{e:?}"
    );
    assert_eq!(c.usdc(c.payer_addr).await, before);
}

#[tokio::test]
async fn fifty_settlements_in_flight_from_one_relayer_all_land() {
    let c = Arc::new(chain(10_000_000, 5).await);
    let pay_to: Address = PAY_TO.parse().unwrap();
    let payee0 = c.usdc(pay_to).await;
    let reqs: Vec<FacilitatorRequest> = (0..50).map(|_| c.request(PathVersion::V2)).collect();
    let mut tasks = Vec::new();
    for req in reqs {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.facilitator.settle(&req).await.unwrap()
        }));
    }
    let mut hashes = std::collections::HashSet::new();
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s.success, "{s:?}");
        hashes.insert(s.transaction);
    }
    assert_eq!(
        hashes.len(),
        50,
        "fifty distinct transactions, no nonce collision"
    );
    assert_eq!(c.usdc(pay_to).await, payee0 + U256::from(50 * PRICE));
}

#[tokio::test]
async fn a_reverting_settlement_is_refused_and_costs_no_gas() {
    let c = chain(1_000_000, 6).await;
    let gas0 = c.relayer_eth().await;
    // Signed for another token contract's domain: the signature does not verify on chain.
    let mut r = requirement();
    r.extra = Some(serde_json::json!({"name": "USD Coin", "version": "2"}));
    let offer = Offer::from_requirement(PathVersion::V2, &r, "ws://h/v2/stream/s", "t");
    let payload = c.payer.sign(&offer).unwrap();
    let req = FacilitatorRequest {
        payment_payload: payload,
        payment_requirements: PaymentRequirements::V2(r.to_v2()),
    };
    let s = c.facilitator.settle(&req).await.unwrap();
    assert!(!s.success);
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_exact_evm_transaction_simulation_failed")
    );
    assert_eq!(c.relayer_eth().await, gas0);
}

/// A TCP proxy to the node that drops the connection carrying the first
/// `eth_sendRawTransaction` after forwarding it: the send's answer is lost.
async fn lossy_proxy(target: u16) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = l.accept().await.unwrap();
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", target))
                    .await
                    .unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match inbound.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let sending = text.contains("eth_sendRawTransaction");
                    if outbound.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    if sending && !cut.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        // Forwarded; now lose the answer.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    }
                    let mut rbuf = vec![0u8; 1 << 16];
                    let m = match outbound.read(&mut rbuf).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => m,
                    };
                    if inbound.write_all(&rbuf[..m]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_send_whose_answer_is_lost_is_reconciled_and_credited_once() {
    let c = chain(1_000_000, 7).await;
    let proxy = lossy_proxy(c.anvil.port()).await;
    let f = EvmFacilitator::connect(EvmConfig::new(
        format!("http://127.0.0.1:{proxy}"),
        Network::BASE_SEPOLIA,
        DEV_KEYS[2],
    ))
    .await
    .unwrap();
    let pay_to: Address = PAY_TO.parse().unwrap();
    let payee0 = c.usdc(pay_to).await;
    let req = c.request(PathVersion::V2);
    // The send's answer is lost, but the hash was computed first: the node knows it, the
    // receipt is read, the settlement is reported as it happened.
    let s = match f.settle(&req).await {
        Ok(s) => s,
        // Or the loss surfaced as an error: the retry reconciles from the chain.
        Err(_) => f.settle(&req).await.unwrap(),
    };
    assert!(s.success, "{s:?}");
    // Reported once; after that the same payload is a replay naming the transaction.
    let again = f.settle(&req).await.unwrap();
    assert_eq!(again.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
    assert_eq!(again.transaction, s.transaction);
    assert_eq!(
        c.usdc(pay_to).await,
        payee0 + U256::from(PRICE),
        "settled once"
    );
    // A fresh facilitator (another process, say) finds the transaction from the logs alone.
    let fresh = EvmFacilitator::connect(EvmConfig::new(
        c.anvil.url(),
        Network::BASE_SEPOLIA,
        DEV_KEYS[1],
    ))
    .await
    .unwrap();
    let s3 = fresh.settle(&req).await.unwrap();
    assert_eq!((s3.success, &s3.transaction), (false, &s.transaction));
    assert_eq!(s3.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
    assert_eq!(s3.amount, Some(Amount::from(PRICE)), "the amount it paid");
}

#[tokio::test]
async fn a_pending_settlement_is_reported_once_to_its_retry_then_refused_as_a_replay() {
    let c = chain(1_000_000, 9).await;
    let mut cfg = EvmConfig::new(c.anvil.url(), Network::BASE_SEPOLIA, DEV_KEYS[2]);
    cfg.receipt_timeout = Duration::from_millis(300);
    let f = EvmFacilitator::connect(cfg).await.unwrap();
    let node = c.anvil.provider(DEV_KEYS[0]).unwrap();
    let _: serde_json::Value = node
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let pay_to: Address = PAY_TO.parse().unwrap();
    let payee0 = c.usdc(pay_to).await;
    let req = c.request(PathVersion::V2);
    let first = f.settle(&req).await.unwrap();
    assert!(first.is_pending(), "{first:?}");
    assert_eq!(first.transaction.len(), 66);
    // Still not mined: still pending, nothing sent twice.
    assert!(f.settle(&req).await.unwrap().is_pending());
    let _: serde_json::Value = node.raw_request("evm_mine".into(), ()).await.unwrap();
    // The retry owed the outcome gets the success, with the same transaction.
    let retry = f.settle(&req).await.unwrap();
    assert!(retry.success, "{retry:?}");
    assert_eq!(retry.transaction, first.transaction);
    // Once: after that it is a replay.
    let replay = f.settle(&req).await.unwrap();
    assert!(!replay.success);
    assert_eq!(replay.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
    assert_eq!(replay.transaction, first.transaction);
    assert_eq!(
        c.anvil
            .settlements_of(c.token, c.payer_addr)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(c.usdc(pay_to).await, payee0 + U256::from(PRICE));
}

/// Every committed runtime bytecode (`contracts/*.runtime.hex`) is what its source compiles to.
#[test]
fn the_committed_bytecode_is_what_the_source_compiles_to() {
    use x402_chain::channel_contract::{BATCH_SETTLEMENT_RUNTIME, DEPOSIT_COLLECTOR_RUNTIME};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = dir.join("../../target/tools/node_modules");
    assert!(
        tools.join("solc").exists(),
        "solc-js not installed: run `cargo xtask tools` (installs solc@0.8.37 into target/tools)"
    );
    let committed = [
        (
            "TestUSDC.sol",
            "TestUSDC",
            "TestUSDC.runtime.hex",
            x402_chain::token::TEST_USDC_RUNTIME,
        ),
        (
            "BatchSettlement.sol",
            "X402BatchSettlement",
            "BatchSettlement.runtime.hex",
            BATCH_SETTLEMENT_RUNTIME,
        ),
        (
            "BatchSettlement.sol",
            "ERC3009DepositCollector",
            "DepositCollector.runtime.hex",
            DEPOSIT_COLLECTOR_RUNTIME,
        ),
    ];
    let hex_files = std::fs::read_dir(dir.join("contracts"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".runtime.hex")
        })
        .count();
    assert_eq!(
        hex_files,
        committed.len(),
        "a .runtime.hex file this test does not check"
    );
    for (source, contract, hex, runtime) in committed {
        let out = std::process::Command::new("node")
            .arg(dir.join("contracts/compile.js"))
            .arg(dir.join("contracts").join(source))
            .arg(contract)
            .env("NODE_PATH", &tools)
            .output()
            .expect("node");
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let compiled = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            compiled.trim(),
            runtime.trim(),
            "contracts/{hex} is stale: regenerate it with \
             `node contracts/compile.js contracts/{source} {contract} > contracts/{hex}`"
        );
    }
}

/// A stock x402 resource server written with the official x402 Python SDK (pinned, installed by
/// `cargo xtask tools` into target/tools/py): the SDK signs a v1 and a v2 payment, and its own
/// HTTP facilitator client verifies and settles them through our facilitator API as
/// `atomicstream facilitator --evm` serves it (the EVM facilitator behind a bearer key), then
/// settles each once more. The SDK parses every answer; v1 answers name the v1 network; the
/// replays are refused with the official reason and move nothing.
#[tokio::test]
async fn payments_made_by_the_official_python_sdk_settle_through_our_facilitator_api() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = dir.join("../../target/tools/py");
    assert!(
        py.join("x402").exists(),
        "the official x402 SDK is not installed: run `cargo xtask tools`"
    );
    let c = chain(0, 8).await;
    let sdk_key = DEV_KEYS[3];
    let sdk_addr: Address = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
        .parse()
        .unwrap();
    c.anvil.mint(c.token, sdk_addr, 1_000_000).await.unwrap();
    // Our facilitator API, behind its bearer key, settling with the EVM facilitator.
    let key = "interop-api-key-interop-api-key-interop";
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", l.local_addr().unwrap());
    let f: Arc<dyn Facilitator> = Arc::new(
        EvmFacilitator::connect(EvmConfig::new(
            c.anvil.url(),
            Network::BASE_SEPOLIA,
            DEV_KEYS[1],
        ))
        .await
        .unwrap(),
    );
    tokio::spawn(x402_facilitator::serve_facilitator_guarded(l, f, key, 100));
    let http = reqwest::Client::new();
    let supported: serde_json::Value = http
        .get(format!("{api}/supported"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        supported.to_string().contains("eip155:84532"),
        "{supported}"
    );
    let pay_to: Address = PAY_TO.parse().unwrap();
    let payee0 = c.usdc(pay_to).await;
    let mut txs = Vec::new();
    for v in [PathVersion::V1, PathVersion::V2] {
        let required = match v {
            PathVersion::V1 => serde_json::json!({
                "x402Version": 1,
                "error": "payment required",
                "accepts": [requirement().to_v1("ws://h/v1/stream/s", "t")],
            }),
            PathVersion::V2 => serde_json::json!({
                "x402Version": 2,
                "resource": {"url": "ws://h/v2/stream/s", "description": "t", "mimeType": "application/json"},
                "accepts": [requirement().to_v2()],
            }),
        };
        let input = serde_json::json!({"required": required, "facilitator": api});
        let out = tokio::task::spawn_blocking({
            let (py, script) = (py.clone(), dir.join("tests/interop/official_pay.py"));
            move || {
                let mut child = std::process::Command::new("python3")
                    .arg(script)
                    .env("PYTHONPATH", &py)
                    .env("X402_SDK_KEY", sdk_key)
                    .env("X402_FACILITATOR_KEY", key)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("python3");
                {
                    use std::io::Write;
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(input.to_string().as_bytes())
                        .unwrap();
                }
                child.wait_with_output().unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{v:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["payload"]["x402Version"], v.x402_version(), "{r}");
        assert_eq!(r["verify"]["isValid"], true, "{v:?} verify: {r}");
        let settle = &r["settle"];
        assert_eq!(settle["success"], true, "{v:?} settle: {r}");
        let network = match v {
            PathVersion::V1 => "base-sepolia",
            PathVersion::V2 => "eip155:84532",
        };
        assert_eq!(settle["network"], network, "{v:?} settle: {r}");
        let tx = settle["transaction"].as_str().unwrap().to_string();
        assert_eq!(tx.len(), 66, "{r}");
        let replay = &r["replay"];
        assert_eq!(replay["success"], false, "{v:?} replay: {r}");
        assert_eq!(
            replay["errorReason"], "invalid_exact_evm_nonce_already_used",
            "{v:?} replay: {r}"
        );
        assert_eq!(
            replay["transaction"],
            tx.as_str(),
            "the replay names the settlement"
        );
        assert_eq!(replay["network"], network);
        txs.push(tx);
    }
    txs.dedup();
    assert_eq!(txs.len(), 2);
    assert_eq!(
        c.usdc(pay_to).await,
        payee0 + U256::from(2 * PRICE),
        "two payments, two transfers: the replays moved nothing"
    );
}
