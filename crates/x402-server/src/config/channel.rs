//! `[streams.channel]`: selling a stream over x402 `batch-settlement` (payment
//! channels) beside `exact`.

use serde::Deserialize;
use x402_types::batch::{MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY};

/// A stream's `batch-settlement` terms. The receiver's authorizer (who signs claims
/// and refunds) is the facilitator's, from its `/supported`. Present: the stream's 402 lists
/// `batch-settlement` after `exact` (clients that know only `exact` are unaffected).
///
/// ```toml
/// [streams.channel]
/// withdraw_delay = 900        # seconds a payer's timed withdrawal waits (900 to 2592000)
/// min_deposit_slices = 12     # the minDeposit hint, in slices
/// billing_granularity_secs = 1 # a session paid by channel is charged per started granule
/// ```
///
/// A session bought through a channel is metered: its paid time runs only while its
/// socket is open, and when the socket closes the unused rest of its last slice goes
/// back to the channel (`charge = ceil(seconds * slice price / slice seconds)`, in
/// whole granules, rounded once on the session's total).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOffer {
    /// The channel's `withdrawDelay` (seconds).
    pub withdraw_delay: u64,
    /// The `minDeposit` hint, in slices.
    pub min_deposit_slices: u64,
    /// Metered sessions are billed per started granule of this many seconds.
    pub billing_granularity_secs: u64,
}

impl Default for ChannelOffer {
    fn default() -> Self {
        ChannelOffer {
            withdraw_delay: MIN_WITHDRAW_DELAY,
            min_deposit_slices: 12,
            billing_granularity_secs: 1,
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
        if self.billing_granularity_secs == 0 {
            out.push("channel.billing_granularity_secs: must be at least 1".into());
        }
        if self.min_deposit_slices == 0 {
            out.push("channel.min_deposit_slices: must be at least 1".into());
        }
        out
    }
}

/// `[channel_manager]`: when the server claims what its channels were charged.
///
/// ```toml
/// [channel_manager]
/// interval_secs = 60          # how often channels are read from the chain
/// claim_threshold_slices = 10 # claim once this many slices are unclaimed on a channel
/// idle_refund_secs = 3600     # return the unused deposit of a channel idle this long (0: never)
/// # authorizer_key_file = "/etc/atomicstream/authorizer.key"  # sign claims and refunds here
/// ```
/// A channel with a pending withdrawal is claimed at the next round whatever its
/// exposure: the shortest `withdrawDelay` (900 s) leaves many rounds to do it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelManagerConfig {
    /// Seconds between rounds.
    pub interval_secs: u64,
    /// Unclaimed slices (per channel) that trigger a claim.
    pub claim_threshold_slices: u64,
    /// A channel without a voucher for this long gets its unused deposit back (a
    /// cooperative refund the receiver sends, claims first); 0: never.
    pub idle_refund_secs: u64,
    /// The receiver's own authorizer key (hex, in a file): the offer names its address
    /// as `receiverAuthorizer`, and the server signs claims and refunds itself, so any
    /// facilitator that executes signed ones will do. Absent: the facilitator's
    /// authorizer from its `/supported`, which signs them.
    pub authorizer_key_file: Option<std::path::PathBuf>,
}

impl ChannelManagerConfig {
    /// Every problem of these settings with the streams they serve: a round must come
    /// several times within the shortest withdrawal delay, so a pending withdrawal is
    /// claimed before it can finalize.
    pub fn problems(&self, streams: &[super::StreamConfig]) -> Vec<String> {
        let shortest = streams
            .iter()
            .filter_map(|s| s.channel.as_ref())
            .map(|c| c.withdraw_delay)
            .min();
        match shortest {
            Some(d) if self.interval_secs == 0 || self.interval_secs.saturating_mul(4) > d => {
                vec![format!(
                    "channel_manager.interval_secs: must be 1 to {} (a quarter of the shortest withdraw_delay, {d} s), so a pending withdrawal is claimed in time",
                    d / 4
                )]
            }
            _ => Vec::new(),
        }
    }
}

impl Default for ChannelManagerConfig {
    fn default() -> Self {
        ChannelManagerConfig {
            interval_secs: 60,
            claim_threshold_slices: 10,
            idle_refund_secs: 3600,
            authorizer_key_file: None,
        }
    }
}
