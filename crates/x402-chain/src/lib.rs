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
    ChainError::Rpc(scrub_urls(&e.to_string()))
}

/// Error text without URLs: RPC URLs often carry an API key, and these texts
/// reach logs and, through the server, answers.
pub(crate) fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let next = |s: &str| {
        [s.find("http://"), s.find("https://")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(i) = next(rest) {
        out.push_str(&rest[..i]);
        out.push_str("<rpc url>");
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ',' | ']'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_scrubbed_from_error_text() {
        assert_eq!(
            super::scrub_urls(
                "error sending request for url (https://base.example/v2/SECRETKEY): timed out"
            ),
            "error sending request for url (<rpc url>): timed out"
        );
        assert_eq!(
            super::scrub_urls("a http://h:1/x and https://k@h/y end"),
            "a <rpc url> and <rpc url> end"
        );
        assert_eq!(super::scrub_urls("no url here"), "no url here");
    }
}
