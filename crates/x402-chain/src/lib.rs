#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod anvil;
mod facilitator;
pub mod token;

pub use alloy::primitives::{Address as EvmAddress, U256 as EvmU256};
pub use facilitator::{EvmConfig, EvmFacilitator, reasons};

/// Errors of connecting to a chain or running the local node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A configuration value is invalid (RPC URL, key, network).
    #[error("invalid chain configuration: {0}")]
    Config(String),
    /// The RPC endpoint failed or answered something unusable.
    #[error("RPC: {0}")]
    Rpc(String),
    /// The node serves another chain than the configured network.
    #[error("the RPC endpoint serves chain {found}, the configuration says {expected}")]
    WrongChain {
        /// Configured chain id.
        expected: u64,
        /// The node's chain id.
        found: u64,
    },
    /// The local node could not be started.
    #[error("anvil: {0}")]
    Anvil(String),
}

pub(crate) fn rpc<E: std::fmt::Display>(e: E) -> ChainError {
    ChainError::Rpc(e.to_string())
}
