//! `atomicstream channel withdraw` on anvil: a channel deposited by our payer
//! (`EvmChannelPayer`, which writes the channel file) through our EVM facilitator, then
//! the payer's timed withdrawal by the built binary: refused without ETH for gas, an
//! unknown id and an unreachable node said so with their exit codes, initiated, waiting
//! while early, finalized after the delay with the channel file updated, then nothing left.

use std::path::Path;

use atomicstream::{Amount, EvmChannelPayer, LocalSigner, Payer};
use x402_chain::anvil::{Anvil, BASE_SEPOLIA_USDC, DEV_KEYS};
use x402_chain::{EvmAddress, EvmConfig, EvmFacilitator, EvmU256};
use x402_facilitator::Facilitator;
use x402_payer::DigestSigner;
use x402_types::{
    FacilitatorRequest, Network, Offer, PathVersion, PaymentRequirements, Requirement,
};

use super::{bin, run};

const PRICE: u64 = 2_000;
/// The first deposit: [`x402_payer::DEFAULT_DEPOSIT_SLICES`] slices.
const DEPOSIT: u64 = 12 * PRICE;
const FUND: u64 = 1_000_000;
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"; // anvil account 2

struct Out {
    code: Option<i32>,
    json: serde_json::Value,
    said: String,
}

async fn withdraw(id: &str, rpc: &str, key: &Path, file: &Path) -> Out {
    let mut c = bin();
    c.args(["channel", "withdraw", id, "--rpc-url", rpc, "--key-file"])
        .arg(key)
        .arg("--channel-file")
        .arg(file);
    let out = run(c).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    Out {
        code: out.status.code(),
        json,
        said,
    }
}

async fn mine_after(anvil: &Anvil, secs: u64) {
    let http = reqwest::Client::new();
    for (method, params) in [
        ("evm_increaseTime", serde_json::json!([secs])),
        ("evm_mine", serde_json::json!([])),
    ] {
        let r = http
            .post(anvil.url())
            .json(
                &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_withdraw_takes_the_deposit_back_after_the_delay() {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
    anvil.install_batch_settlement().await.unwrap();
    let rpc = anvil.url();
    let facilitator =
        EvmFacilitator::connect(EvmConfig::new(&rpc, Network::BASE_SEPOLIA, DEV_KEYS[1]))
            .await
            .unwrap();

    // The payer deposits into a channel as `stream --scheme batch-settlement` would.
    let dir = atomicstream_testkit::scratch("withdraw");
    let (file, key_file) = (dir.join("channels.json"), dir.join("payer.key"));
    let key = LocalSigner::random().unwrap();
    let me = EvmAddress::from(key.address().0);
    std::fs::write(&key_file, key.to_hex_secret().as_bytes()).unwrap();
    anvil.mint(token, me, FUND).await.unwrap();
    let payer = EvmChannelPayer::new(key, Amount::from(100_000u64))
        .with_file(&file)
        .unwrap();
    let req = Requirement {
        scheme: "batch-settlement".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(PRICE),
        asset: BASE_SEPOLIA_USDC.into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 300,
        extra: Some(serde_json::json!({
            "name": "USDC", "version": "2", "withdrawDelay": 900,
            "receiverAuthorizer": facilitator.receiver_authorizer().to_string(),
        })),
    };
    let offer = Offer::from_requirement(PathVersion::V2, &req, "http://127.0.0.1/s", "test");
    let receipt = facilitator
        .settle(&FacilitatorRequest {
            payment_payload: payer.pay(&offer).await.unwrap(),
            payment_requirements: PaymentRequirements::V2(req.to_v2()),
        })
        .await
        .unwrap();
    assert!(receipt.success, "{receipt:?}");
    payer.accepted(Some(&receipt));
    let ch = payer.channels().pop().unwrap();
    assert_eq!(ch.balance, u128::from(DEPOSIT));
    let id = ch.channel_id.to_string();
    let prefix = &id[..12];
    let usdc = || async { anvil.usdc_balance(token, me).await.unwrap() };
    assert_eq!(usdc().await, EvmU256::from(FUND - DEPOSIT));

    // No ETH for gas: said plainly, nothing sent.
    let o = withdraw(prefix, &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(4), "{}", o.said);
    assert!(
        o.said.contains("ETH") && o.said.contains("gas") && o.said.contains("(exit 4)"),
        "{}",
        o.said
    );
    anvil
        .set_balance(me, EvmU256::from(10u64).pow(EvmU256::from(18u64)))
        .await
        .unwrap();

    // An id the file does not hold: a usage error listing those it does.
    let o = withdraw("0xdeadbeef", &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(2), "{}", o.said);
    assert!(o.said.contains(&id), "{}", o.said);
    // No node behind the URL: a failure naming it.
    let closed = atomicstream_testkit::free_port();
    let dead = format!("http://127.0.0.1:{closed}");
    let o = withdraw(prefix, &dead, &key_file, &file).await;
    assert_eq!(o.code, Some(5), "{}", o.said);
    assert!(o.said.contains(&dead), "{}", o.said);

    // First run: the withdrawal of everything unclaimed starts.
    let o = withdraw(prefix, &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(0), "{}", o.said);
    assert_eq!(o.json["action"], "initiated", "{}", o.said);
    assert_eq!(o.json["channelId"], id);
    assert_eq!(o.json["amount"], "0.024");
    assert_eq!(o.json["waitSeconds"], 900);
    assert!(o.json["transaction"].as_str().unwrap().starts_with("0x"));
    assert!(
        o.said.contains("0.024 USDC")
            && o.said.contains("(in 15 min)")
            && o.said.contains("atomicstream channel withdraw"),
        "{}",
        o.said
    );

    // Early: it says when, and sends nothing.
    mine_after(&anvil, 60).await;
    let o = withdraw(prefix, &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(0), "{}", o.said);
    assert_eq!(o.json["action"], "pending", "{}", o.said);
    // 840 s, or a second less when the wall clock ticked between the blocks.
    let wait = o.json["waitSeconds"].as_u64().unwrap();
    assert!((835..=840).contains(&wait), "{}", o.said);
    assert!(
        o.said.contains("(in 1") && o.said.contains(" min"),
        "{}",
        o.said
    );
    assert_eq!(usdc().await, EvmU256::from(FUND - DEPOSIT));

    // After the delay: paid out, and the channel file knows.
    mine_after(&anvil, 900).await;
    let o = withdraw(prefix, &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(0), "{}", o.said);
    assert_eq!(o.json["action"], "finalized", "{}", o.said);
    assert_eq!(o.json["withdrawn"], "0.024");
    assert_eq!(o.json["balance"], "0");
    assert_eq!(usdc().await, EvmU256::from(FUND));
    let kept = EvmChannelPayer::new(LocalSigner::random().unwrap(), Amount::ZERO)
        .with_file(&file)
        .unwrap()
        .channels();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].balance, 0);

    // Nothing is left.
    let o = withdraw(prefix, &rpc, &key_file, &file).await;
    assert_eq!(o.code, Some(0), "{}", o.said);
    assert_eq!(o.json["action"], "nothing", "{}", o.said);
}
