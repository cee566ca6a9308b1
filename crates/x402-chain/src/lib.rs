#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod anvil;
mod batch;
pub mod channel_contract;
mod facilitator;
pub mod token;
pub mod withdraw;

pub use alloy::primitives::{Address as EvmAddress, U256 as EvmU256};
pub use channel_contract::{BATCH_SETTLEMENT, ERC3009_DEPOSIT_COLLECTOR};
pub use facilitator::{EvmConfig, EvmFacilitator};
pub use withdraw::{
    PendingWithdrawal, WithdrawStatus, channel_status, finalize_withdraw, initiate_withdraw,
};

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
    /// The RPC endpoint did not answer (refused, unreachable, timed out, not JSON-RPC).
    #[error("the RPC endpoint did not answer: {0}")]
    Unreachable(String),
    /// The chain has no `x402BatchSettlement` contract at its canonical address.
    #[error(
        "chain {chain_id} has no x402BatchSettlement contract at {}",
        channel_contract::BATCH_SETTLEMENT
    )]
    NoContract {
        /// The node's chain id.
        chain_id: u64,
    },
    /// The key is neither the channel's payer nor its payer authorizer.
    #[error(
        "the key's address {key} is not the channel's payer ({payer}) nor its payer authorizer"
    )]
    NotPayer {
        /// The key's address.
        key: x402_types::Address,
        /// The channel's payer.
        payer: x402_types::Address,
    },
    /// The sending key has too little ether for the gas.
    #[error(
        "the payer {payer} has {} ETH on chain {chain_id}{}: it pays the gas of this \
         transaction itself, so send it a little ETH (the chain's native coin) and try again",
        withdraw::eth(.have),
        .need.as_ref().map(|n| format!(", the transaction needs about {} ETH of gas", withdraw::eth(n))).unwrap_or_default()
    )]
    NoGas {
        /// The sender.
        payer: x402_types::Address,
        /// The chain id.
        chain_id: u64,
        /// Its ether (wei).
        have: EvmU256,
        /// What the gas would cost (wei), when it could be estimated.
        need: Option<EvmU256>,
    },
    /// `finalizeWithdraw` before the withdrawal's delay is over.
    #[error(
        "too early: the withdrawal can be finalized once the chain's clock reaches {finalize_after} \
         (unix time), in {} (the chain's clock reads {now})",
        withdraw::span(.finalize_after.saturating_sub(*.now))
    )]
    WithdrawNotReady {
        /// The chain time from which it succeeds (unix seconds).
        finalize_after: u64,
        /// The chain's time when refused (unix seconds).
        now: u64,
    },
    /// `finalizeWithdraw` with no withdrawal initiated.
    #[error("no withdrawal is pending on the channel: initiate one first")]
    NoPendingWithdrawal,
    /// `initiateWithdraw` while one is pending.
    #[error("a withdrawal is already pending on the channel: finalize it once its delay is over")]
    WithdrawAlreadyPending,
    /// The contract refused the transaction (in words).
    #[error("the chain refused the transaction: {0}")]
    Reverted(String),
    /// A sent transaction's receipt did not come in time; it may still be mined.
    #[error(
        "transaction {transaction} was sent but not mined in time; check it before sending again"
    )]
    ReceiptTimeout {
        /// Its hash.
        transaction: x402_types::B256,
    },
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
