//! `[facilitator] kind = "evm"`: the server settles on chain itself, from a
//! relayer key, with [`x402_chain::EvmFacilitator`] (cargo feature `evm`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::FacilitatorConfig;
use crate::error::ConfigError;

/// The relayer's key: from `file` (trimmed), else the environment variable `env`.
pub fn relayer_key(file: Option<&std::path::Path>, env: &str) -> Result<String, ConfigError> {
    match file {
        Some(f) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| ConfigError::Invalid(format!("relayer key file {}: {e}", f.display()))),
        None => std::env::var(env).map_err(|_| {
            ConfigError::Invalid(format!(
                "no relayer key: set relayer_key_file or the environment variable {env}"
            ))
        }),
    }
}

/// Connects the settling EVM facilitator a `kind = "evm"` configuration names.
pub async fn facilitator(
    cfg: &FacilitatorConfig,
) -> Result<Arc<x402_chain::EvmFacilitator>, ConfigError> {
    let FacilitatorConfig::Evm {
        rpc_url,
        network,
        relayer_key_file,
        relayer_key_env,
        confirmations,
        receipt_timeout_secs,
    } = cfg
    else {
        return Err(ConfigError::Invalid("not an evm facilitator".into()));
    };
    let key = relayer_key(relayer_key_file.as_deref(), relayer_key_env)?;
    connect(
        rpc_url,
        network,
        key,
        *confirmations,
        Duration::from_secs(*receipt_timeout_secs),
    )
    .await
}

/// Connects an EVM facilitator (checks the chain id and the relayer's balance).
pub async fn connect(
    rpc_url: &str,
    network: &str,
    key: String,
    confirmations: u64,
    receipt_timeout: Duration,
) -> Result<Arc<x402_chain::EvmFacilitator>, ConfigError> {
    let network: x402_types::Network = network
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("network: {e}")))?;
    let mut cfg = x402_chain::EvmConfig::new(rpc_url, network, key);
    cfg.confirmations = confirmations;
    cfg.receipt_timeout = receipt_timeout;
    let f = x402_chain::EvmFacilitator::connect(cfg)
        .await
        .map_err(|e| ConfigError::Invalid(format!("evm facilitator: {e}")))?;
    Ok(Arc::new(f))
}
