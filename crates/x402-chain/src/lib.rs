#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod anvil;
mod batch;
pub mod channel_contract;
mod facilitator;
pub mod token;

pub use alloy::primitives::{Address as EvmAddress, U256 as EvmU256};
pub use channel_contract::{BATCH_SETTLEMENT, ERC3009_DEPOSIT_COLLECTOR};
pub use facilitator::{EvmConfig, EvmFacilitator};

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

pub(crate) use x402_facilitator::with_causes;

pub(crate) fn rpc<E: std::error::Error>(e: E) -> ChainError {
    ChainError::Rpc(scrub_urls(&with_causes(&e)))
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
    fn error_text_names_its_causes_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = E("connection refused", None);
        let connect = E("client error (Connect)", Some(Box::new(refused)));
        let e = E("error sending request", Some(Box::new(connect)));
        assert_eq!(
            super::with_causes(&e),
            "error sending request: client error (Connect): connection refused"
        );
        let repeats = E(
            "tcp connect error: connection refused",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(
            super::with_causes(&repeats),
            "tcp connect error: connection refused"
        );
    }

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
