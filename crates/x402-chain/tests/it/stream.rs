//! The whole path with money that moves: the facade client buys slices from
//! the reference server, which settles every payment on a local anvil chain
//! through the EVM facilitator. v1 and v2. The payee's balance rises by exactly
//! the slices bought times the price, and the payer's falls by the same.

use std::sync::Arc;
use std::time::Duration;

use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, PathVersion, SpendPolicy,
};
use futures::StreamExt;
use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_chain::{EvmAddress, EvmConfig, EvmFacilitator, EvmU256};
use x402_server::{Config, ServerBuilder, SourceConfig, StreamConfig};
use x402_types::Network;

const PAYEE: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"; // anvil account 3

#[tokio::test]
async fn slices_bought_from_the_server_are_settled_on_chain_exactly() {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask ci` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
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
    cfg.streams = vec![StreamConfig {
        id: "s".into(),
        title: "S".into(),
        description: "test".into(),
        price_per_minute: "0.06".into(), // 0.002 USDC per 2-second slice
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
        channel: None,
    }];
    let server = ServerBuilder::new(cfg)
        .facilitator(Arc::new(f))
        .bind()
        .await
        .unwrap();
    let base = server.http_base().to_string();
    let http = reqwest::Client::new();
    server.spawn();
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        health.contains("evm") && health.contains("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        "{health}"
    );

    let payer_before = anvil.usdc_balance(token, payer).await.unwrap();
    let payee_before = anvil.usdc_balance(token, payee).await.unwrap();
    let payer_key = Arc::new(EvmExactPayer::new(wallet));
    let mut bought = 0u64;
    for (v, slices) in [(PathVersion::V1, 2u64), (PathVersion::V2, 3u64)] {
        let client = Client::builder()
            .base_url(&base)
            .version(v)
            .payer(payer_key.clone())
            .policy(
                SpendPolicy::new(Amount::from(2_000)).with_lifetime_budget(Amount::from(20_000)),
            )
            .max_slices(slices)
            .build()
            .unwrap();
        let mut session = client.open("s").await.unwrap();
        let mut events = 0;
        let reason = loop {
            match tokio::time::timeout(Duration::from_secs(30), session.next())
                .await
                .unwrap()
            {
                Some(ClientEvent::Data(_)) => events += 1,
                Some(ClientEvent::Ended(r)) => break r,
                Some(_) => {}
                None => break EndReason::Stopped,
            }
        };
        assert_eq!(reason, EndReason::SliceLimit, "{v:?}");
        assert_eq!(session.progress().slices, slices);
        assert!(events > 0);
        bought += slices;
    }
    let moved = EvmU256::from(bought * 2_000);
    assert_eq!(
        anvil.usdc_balance(token, payee).await.unwrap(),
        payee_before + moved
    );
    assert_eq!(
        anvil.usdc_balance(token, payer).await.unwrap(),
        payer_before - moved
    );
    assert_eq!(
        anvil.settlements_of(token, payer).await.unwrap().len() as u64,
        bought
    );
}
