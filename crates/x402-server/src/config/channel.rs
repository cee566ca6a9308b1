//! `[streams.channel]`: selling a stream over x402 `batch-settlement` (payment
//! channels) beside `exact`.

use serde::Deserialize;
use x402_types::Address;
use x402_types::batch::{MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY};

/// A stream's `batch-settlement` terms. Present: the stream's 402 lists
/// `batch-settlement` after `exact` (clients that know only `exact` are unaffected).
///
/// ```toml
/// [streams.channel]
/// withdraw_delay = 900        # seconds a payer's timed withdrawal waits (900 to 2592000)
/// min_deposit_slices = 12     # the minDeposit hint, in slices
/// # receiver_authorizer = "0x…" # default: the facilitator's, from its /supported
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOffer {
    /// The channel's `withdrawDelay` (seconds).
    pub withdraw_delay: u64,
    /// The `minDeposit` hint, in slices.
    pub min_deposit_slices: u64,
    /// Who signs claims and refunds for the receiver; default: the facilitator's
    /// `receiverAuthorizer` for the network (`/supported`).
    pub receiver_authorizer: Option<String>,
}

impl Default for ChannelOffer {
    fn default() -> Self {
        ChannelOffer {
            withdraw_delay: MIN_WITHDRAW_DELAY,
            min_deposit_slices: 12,
            receiver_authorizer: None,
        }
    }
}

impl ChannelOffer {
    /// Every problem of these terms.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&self.withdraw_delay) {
            out.push(format!(
                "channel.withdraw_delay: must be {MIN_WITHDRAW_DELAY} to {MAX_WITHDRAW_DELAY} seconds (the contract's range)"
            ));
        }
        if self.min_deposit_slices == 0 {
            out.push("channel.min_deposit_slices: must be at least 1".into());
        }
        if let Some(Err(e)) = self
            .receiver_authorizer
            .as_ref()
            .map(|a| a.parse::<Address>())
        {
            out.push(format!("channel.receiver_authorizer: {e}"));
        }
        out
    }
}
