//! `[facilitator] kind = "evm"` built by the server itself (cargo feature
//! `evm`, which the workspace's test run has through the CLI), against a
//! real anvil chain: the configured relayer key settles, a missing key is a
//! clear configuration error.

use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_server::{Config, FacilitatorConfig, ServerBuilder};

fn evm_config(rpc_url: String, key_file: std::path::PathBuf) -> Config {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("evm-config-test-secret-evm-config-test".into());
    cfg.facilitator = Some(FacilitatorConfig::Evm {
        rpc_url,
        network: "base-sepolia".into(),
        relayer_key_file: Some(key_file),
        relayer_key_env: "X402_RELAYER_KEY_UNSET_IN_THIS_TEST".into(),
        confirmations: 1,
        receipt_timeout_secs: 20,
    });
    cfg
}

#[tokio::test]
async fn the_server_builds_its_evm_facilitator_from_the_config() {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools`)");
    let dir = atomicstream_testkit::scratch("evm-config");
    let key = dir.join("relayer.key");
    std::fs::write(&key, format!("{}\n", DEV_KEYS[1])).unwrap();
    let server = ServerBuilder::new(evm_config(anvil.url(), key))
        .bind()
        .await
        .unwrap();
    let described = server.state().facilitator.describe();
    assert!(described.starts_with("evm: settles on"), "{described}");
    assert!(described.contains("chain 84532"), "{described}");

    let missing = ServerBuilder::new(evm_config(anvil.url(), dir.join("absent.key")))
        .bind()
        .await;
    let err = missing
        .err()
        .expect("a missing relayer key must refuse to start");
    assert!(err.to_string().contains("relayer key file"), "{err}");
}
