//! A local chain for tests and the demo: anvil (from the npm package
//! `@foundry-rs/anvil`, pinned in `cargo xtask`), started on a port it binds itself (port 0) with
//! base-sepolia's chain id, with the test USDC token placed at the canonical
//! base-sepolia USDC address and, on request, the x402 `batch-settlement` contracts at theirs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;

use crate::token::{IEip3009Token, TEST_USDC_RUNTIME};
use crate::{ChainError, rpc};

/// The pinned anvil version (npm `@foundry-rs/anvil`).
pub const ANVIL_VERSION: &str = "1.7.1";

/// anvil's well-known development keys (funded with 10,000 ETH each on start).
pub const DEV_KEYS: [&str; 4] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];

/// The canonical USDC address on base-sepolia, where the test token is placed.
pub const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// A running anvil, killed on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
}

/// Where anvil is: `ANVIL_BIN`, then the workspace's `target/tools` (where
/// `cargo xtask` installs the pinned npm package), then `PATH`.
pub fn find_anvil() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ANVIL_BIN")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/node_modules");
    for rel in [
        "@foundry-rs/anvil-linux-amd64/bin/anvil",
        "@foundry-rs/anvil-linux-arm64/bin/anvil",
        "@foundry-rs/anvil-darwin-arm64/bin/anvil",
        "@foundry-rs/anvil-darwin-amd64/bin/anvil",
        ".bin/anvil",
    ] {
        let p = tools.join(rel);
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.exists())
    })
}

impl Anvil {
    /// Starts anvil on a loopback port it chooses itself, with `chain_id`, and
    /// returns once it listens there.
    pub fn start(chain_id: u64) -> Result<Anvil, ChainError> {
        let bin = find_anvil().ok_or_else(|| {
            ChainError::Anvil(format!(
                "anvil not found: run `cargo xtask ci` (installs @foundry-rs/anvil@{ANVIL_VERSION} \
                 into target/tools) or set ANVIL_BIN"
            ))
        })?;
        // anvil binds port 0 itself and prints the address it got: choosing a
        // free port here and passing it on would leave a window in which
        // another process (a parallel test's node) can take it.
        let mut child = Command::new(&bin)
            .args([
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--chain-id",
                &chain_id.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ChainError::Anvil(format!("{}: {e}", bin.display())))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChainError::Anvil("no stdout".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address, then drains the request log until anvil exits.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = listening_port(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        // Dropped on an error: killed.
        let mut a = Anvil { child, port: 0 };
        a.port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(RecvTimeoutError::Timeout) => {
                return Err(ChainError::Anvil("did not start within 20 s".into()));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ChainError::Anvil(match a.child.try_wait() {
                    Ok(Some(status)) => format!("exited: {status}"),
                    _ => "closed its output without saying where it listens".into(),
                }));
            }
        };
        Ok(a)
    }

    /// Its JSON-RPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A provider signing with `key`.
    pub fn provider(&self, key: &str) -> Result<DynProvider, ChainError> {
        let signer: PrivateKeySigner = key
            .parse()
            .map_err(|e| ChainError::Config(format!("key: {e}")))?;
        let url = self
            .url()
            .parse()
            .map_err(|e| ChainError::Config(format!("{e}")))?;
        Ok(ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased())
    }

    /// Places the test USDC at the canonical base-sepolia address (`anvil_setCode`).
    pub async fn install_test_usdc(&self) -> Result<Address, ChainError> {
        let p = self.provider(DEV_KEYS[0])?;
        let addr: Address = BASE_SEPOLIA_USDC.parse().map_err(rpc)?;
        let code = TEST_USDC_RUNTIME.trim();
        let _: () = p
            .raw_request("anvil_setCode".into(), (addr, code))
            .await
            .map_err(rpc)?;
        Ok(addr)
    }

    /// Places our x402 `batch-settlement` contracts (`contracts/BatchSettlement.sol`) at their
    /// canonical addresses (`anvil_setCode`): `X402BatchSettlement` at
    /// [`BATCH_SETTLEMENT`](crate::channel_contract::BATCH_SETTLEMENT) and
    /// `ERC3009DepositCollector` at
    /// [`ERC3009_DEPOSIT_COLLECTOR`](crate::channel_contract::ERC3009_DEPOSIT_COLLECTOR).
    /// Neither has constructor state, so no deployment is needed. Returns the settlement
    /// contract's address.
    pub async fn install_batch_settlement(&self) -> Result<Address, ChainError> {
        use crate::channel_contract::{
            BATCH_SETTLEMENT, BATCH_SETTLEMENT_RUNTIME, DEPOSIT_COLLECTOR_RUNTIME,
            ERC3009_DEPOSIT_COLLECTOR,
        };
        let p = self.provider(DEV_KEYS[0])?;
        for (addr, code) in [
            (BATCH_SETTLEMENT, BATCH_SETTLEMENT_RUNTIME),
            (ERC3009_DEPOSIT_COLLECTOR, DEPOSIT_COLLECTOR_RUNTIME),
        ] {
            let _: () = p
                .raw_request("anvil_setCode".into(), (addr, code.trim()))
                .await
                .map_err(rpc)?;
        }
        Ok(BATCH_SETTLEMENT)
    }

    /// Mints test USDC (atomic units) to `to`, waiting for the receipt.
    pub async fn mint(&self, token: Address, to: Address, amount: u64) -> Result<(), ChainError> {
        let p = self.provider(DEV_KEYS[3])?;
        let t = IEip3009Token::new(token, p);
        t.mint(to, U256::from(amount))
            .send()
            .await
            .map_err(rpc)?
            .get_receipt()
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Test USDC balance of `who` (atomic units).
    pub async fn usdc_balance(&self, token: Address, who: Address) -> Result<U256, ChainError> {
        let p = self.provider(DEV_KEYS[3])?;
        IEip3009Token::new(token, p)
            .balanceOf(who)
            .call()
            .await
            .map_err(rpc)
    }

    /// Hashes of the transactions that used an authorization of `payer`
    /// (`AuthorizationUsed` logs of `token`), oldest first.
    pub async fn settlements_of(
        &self,
        token: Address,
        payer: Address,
    ) -> Result<Vec<alloy::primitives::B256>, ChainError> {
        use alloy::sol_types::SolEvent;
        let p = self.provider(DEV_KEYS[3])?;
        let filter = alloy::rpc::types::Filter::new()
            .address(token)
            .event_signature(IEip3009Token::AuthorizationUsed::SIGNATURE_HASH)
            .topic1(payer.into_word())
            .from_block(alloy::eips::BlockNumberOrTag::Earliest);
        Ok(p.get_logs(&filter)
            .await
            .map_err(rpc)?
            .into_iter()
            .filter_map(|l| l.transaction_hash)
            .collect())
    }

    /// Sets an account's ether balance (wei).
    pub async fn set_balance(&self, who: Address, wei: U256) -> Result<(), ChainError> {
        let p = self.provider(DEV_KEYS[0])?;
        let _: () = p
            .raw_request("anvil_setBalance".into(), (who, wei))
            .await
            .map_err(rpc)?;
        Ok(())
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in anvil's `Listening on 127.0.0.1:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    let addr = line.split("Listening on ").nth(1)?.trim();
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

#[cfg(test)]
mod tests {
    use super::listening_port;

    #[test]
    fn the_port_is_read_from_the_listening_line_only() {
        assert_eq!(listening_port("Listening on 127.0.0.1:37735"), Some(37735));
        assert_eq!(listening_port("Listening on 127.0.0.1:8545\r"), Some(8545));
        assert_eq!(listening_port("Chain ID:       84532"), None);
        assert_eq!(listening_port("Listening on somewhere"), None);
        assert_eq!(listening_port("eth_chainId"), None);
    }
}
