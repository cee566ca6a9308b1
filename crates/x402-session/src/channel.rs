//! `batch-settlement` channels, the receiver's side: the record a server keeps per
//! channel and the rules that change it (the cumulative voucher rule, balance and claim
//! bounds, idempotent acceptance), and the per-second meter.
//!
//! Sans-IO like the rest of the crate: signatures are checked by the caller
//! (`x402_payer::channel`), the chain is read by the facilitator, and the record is
//! stored by whoever drives this (compare-and-set by version).
//!
//! ```
//! use x402_session::channel::{ChannelRecord, Judgement, Meter};
//! # use x402_types::batch::{ChannelConfig, SignedVoucher, Bytes};
//! # let config = ChannelConfig { payer: Default::default(), payer_authorizer: Default::default(),
//! #   receiver: Default::default(), receiver_authorizer: Default::default(), token: Default::default(),
//! #   withdraw_delay: 900, salt: Default::default() };
//! let mut ch = ChannelRecord::new(config, Default::default());
//! ch.balance = 100_000;
//! let v = SignedVoucher { channel_id: ch.id, max_claimable_amount: 10_000, signature: Bytes(vec![1; 65]) };
//! // The first voucher must sign the charged total (0) plus one request's price.
//! assert_eq!(ch.judge(&v, 10_000, 0), Judgement::Accept { charge: 10_000 });
//! ch.accept(&v, 10_000);
//! assert_eq!(ch.judge(&v, 10_000, 0), Judgement::Repeat);
//! // Per-second metering rounds once, on the cumulative total.
//! let m = Meter::new(1_000, 60, 1); // 1000 atomic units a minute, billed per second
//! assert_eq!(m.charge_ms(1), 17); // one started second: ceil(1000/60)
//! assert_eq!(m.charge_ms(60_000), 1_000);
//! ```

use serde::{Deserialize, Serialize};

use x402_types::batch::{ChannelConfig, ChannelState, SignedVoucher, VoucherState, reasons};
use x402_types::{B256, U256};

/// What a server knows of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The configuration.
    pub config: ChannelConfig,
    /// Its id.
    pub id: B256,
    /// Deposited (as last read from the chain, plus deposits this server made).
    pub balance: u128,
    /// Claimed on chain.
    pub total_claimed: u128,
    /// A pending withdrawal's start (unix seconds; 0: none).
    pub withdraw_requested_at: u64,
    /// The chain's refund nonce.
    pub refund_nonce: U256,
    /// What this server charged, cumulative: the voucher rule's total. It never falls,
    /// so a next voucher is never one already used.
    pub charged: u128,
    /// Part of `charged` given back by metered sessions that stopped early: claims and
    /// refunds take `charged - returned` ([`claimable`](Self::claimable)).
    #[serde(default)]
    pub returned: u128,
    /// The highest voucher held: its maximum (0: none).
    pub signed_max: u128,
    /// Its signature (empty: none).
    pub signature: x402_types::batch::Bytes,
    /// A cooperative refund is under way until this unix second: vouchers wait
    /// (`channel_busy`), so no charge lands between the refund's claim and its payout.
    #[serde(default)]
    pub busy_until: u64,
    /// When the chain was last read into this record (unix seconds; 0: never).
    #[serde(default)]
    pub synced_at: u64,
    /// When the last voucher was accepted (unix seconds; 0: none yet): the channel
    /// manager refunds a channel idle long enough.
    #[serde(default)]
    pub updated_at: u64,
}

/// What [`ChannelRecord::judge`] decided about a voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// A new voucher paying `charge`: [`ChannelRecord::accept`] it.
    Accept {
        /// The charge it pays.
        charge: u128,
    },
    /// The voucher already held (a retry): answer as before, charge nothing.
    Repeat,
    /// The client's total is not ours: answer the corrective 402 with
    /// [`ChannelRecord::state`] and [`ChannelRecord::voucher_state`].
    Mismatch,
    /// Refused, with an `invalid_batch_settlement_evm_*` reason.
    Refuse {
        /// The reason.
        reason: &'static str,
        /// For people.
        message: String,
    },
}

impl ChannelRecord {
    /// A channel seen for the first time (nothing charged, nothing known of the chain).
    pub fn new(config: ChannelConfig, id: B256) -> Self {
        ChannelRecord {
            config,
            id,
            balance: 0,
            total_claimed: 0,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
            charged: 0,
            returned: 0,
            signed_max: 0,
            signature: Default::default(),
            busy_until: 0,
            updated_at: 0,
            synced_at: 0,
        }
    }

    /// Adopts what the chain says (a deposit's or a verification's answer). The charged
    /// total never falls below what was claimed: a server that lost its records
    /// resumes from the chain.
    pub fn sync(&mut self, chain: &ChannelState) {
        self.balance = chain.balance;
        self.total_claimed = self.total_claimed.max(chain.total_claimed);
        self.withdraw_requested_at = chain.withdraw_requested_at;
        self.refund_nonce = chain.refund_nonce;
        self.charged = self.charged.max(self.total_claimed);
        // What was claimed on chain is not given back any more.
        self.returned = self
            .returned
            .min(self.charged.saturating_sub(self.total_claimed));
    }

    /// Whether vouchers may be judged on this mirror alone at unix second `now`: the
    /// chain was read into it less than `ttl` seconds ago and no withdrawal is pending.
    /// Otherwise read the channel again first: a finalized withdrawal (or a refund made
    /// elsewhere) lowers the balance, and a voucher above it could never be claimed.
    /// With `ttl` below the withdrawal delay ([`mirror_ttl`]), no withdrawal initiated
    /// after the last read can finalize while the mirror is still trusted.
    pub fn fresh(&self, now: u64, ttl: u64) -> bool {
        self.synced_at != 0
            && self.withdraw_requested_at == 0
            && now.saturating_sub(self.synced_at) < ttl
    }

    /// A channel this server has no record of (a new instance, a lost store): after
    /// [`sync`](Self::sync) from the chain, the client's voucher says what it was
    /// charged so far (`maxClaimableAmount - price`), which is adopted when above
    /// what was claimed, as the official server does; unclaimed charges a server
    /// forgot are lost to it, never charged twice to the payer.
    pub fn adopt_client_total(&mut self, v: &SignedVoucher, price: u128) {
        if self.signed_max == 0 && v.channel_id == self.id {
            let said = v.max_claimable_amount.saturating_sub(price);
            self.charged = self.charged.max(said).min(self.balance);
        }
    }

    /// Judges a voucher paying one request of `price` at unix second `now` (the
    /// cumulative rule: `maxClaimableAmount == charged + price`).
    pub fn judge(&self, v: &SignedVoucher, price: u128, now: u64) -> Judgement {
        if v.channel_id != self.id {
            return refuse(
                reasons::CHANNEL_ID_MISMATCH,
                "the voucher is for another channel",
            );
        }
        if self.signed_max != 0
            && v.max_claimable_amount == self.signed_max
            && v.signature == self.signature
        {
            return Judgement::Repeat;
        }
        if self.busy_until > now {
            return refuse(
                reasons::CHANNEL_BUSY,
                "a refund of this channel is under way; send the voucher again shortly",
            );
        }
        // The payer is leaving through the timed withdrawal: no more credit (what was
        // charged is claimed before it can finalize).
        if self.withdraw_requested_at != 0 {
            return refuse(
                reasons::CHANNEL_BUSY,
                "a withdrawal is pending on this channel; refund it or open a new channel",
            );
        }
        let Some(want) = self.charged.checked_add(price) else {
            return refuse(
                reasons::CUMULATIVE_EXCEEDS_BALANCE,
                "the charged total would overflow uint128",
            );
        };
        if v.max_claimable_amount != want {
            return Judgement::Mismatch;
        }
        if v.max_claimable_amount > self.balance {
            return refuse(
                reasons::CUMULATIVE_EXCEEDS_BALANCE,
                format!(
                    "the voucher signs {} but the channel holds {}; deposit more",
                    v.max_claimable_amount, self.balance
                ),
            );
        }
        if v.max_claimable_amount <= self.total_claimed {
            return refuse(
                reasons::CUMULATIVE_BELOW_CLAIMED,
                format!(
                    "the voucher signs {} but {} is already claimed",
                    v.max_claimable_amount, self.total_claimed
                ),
            );
        }
        Judgement::Accept { charge: price }
    }

    /// Records an accepted voucher and its charge.
    pub fn accept(&mut self, v: &SignedVoucher, charge: u128) {
        self.charged = self.charged.saturating_add(charge);
        self.signed_max = v.max_claimable_amount;
        self.signature = v.signature.clone();
    }

    /// A metered session stopped before its paid time ended: `amount` of what was
    /// charged goes back (never what was already claimed on chain). The voucher rule's
    /// `charged` stays: only what claims and refunds take falls.
    pub fn return_unused(&mut self, amount: u128) {
        self.returned = self
            .returned
            .saturating_add(amount)
            .min(self.charged.saturating_sub(self.total_claimed));
    }

    /// What the receiver may claim in all: charged, less what was given back, within
    /// the highest voucher held.
    pub fn claimable(&self) -> u128 {
        self.charged
            .saturating_sub(self.returned)
            .min(self.signed_max)
    }

    /// Claimable and not yet claimed: what a withdrawal could take from the receiver.
    pub fn unclaimed(&self) -> u128 {
        self.claimable().saturating_sub(self.total_claimed)
    }

    /// The refund voucher's rule: it signs exactly the charged total (a zero-charge
    /// voucher). `Mismatch` (corrective 402) when the client's total is behind ours.
    pub fn judge_refund(&self, v: &SignedVoucher, now: u64) -> Judgement {
        if v.channel_id != self.id {
            return refuse(
                reasons::CHANNEL_ID_MISMATCH,
                "the voucher is for another channel",
            );
        }
        if self.busy_until > now {
            return refuse(
                reasons::CHANNEL_BUSY,
                "a refund of this channel is already under way",
            );
        }
        // Not the charged total: the corrective 402 tells it (below ours: the client
        // missed a charge; above: a metered session gave charge back since).
        if v.max_claimable_amount == self.charged {
            Judgement::Accept { charge: 0 }
        } else {
            Judgement::Mismatch
        }
    }

    /// Whether the manager should refund the channel's unused deposit: no voucher for
    /// `idle_secs` (0: never), something left to return, no refund under way.
    pub fn refund_due(&self, now: u64, idle_secs: u64) -> bool {
        idle_secs > 0
            && self.updated_at != 0
            && now.saturating_sub(self.updated_at) >= idle_secs
            && self.balance > self.claimable()
            && self.busy_until <= now
    }

    /// Whether to claim now: a withdrawal is pending, or the unclaimed exposure reached
    /// `threshold`.
    pub fn claim_due(&self, threshold: u128) -> bool {
        self.unclaimed() > 0 && (self.withdraw_requested_at != 0 || self.unclaimed() >= threshold)
    }

    /// The channel as receipts and corrective 402s show it.
    pub fn state(&self) -> ChannelState {
        ChannelState {
            channel_id: self.id,
            balance: self.balance,
            total_claimed: self.total_claimed,
            withdraw_requested_at: self.withdraw_requested_at,
            refund_nonce: self.refund_nonce,
            charged_cumulative_amount: Some(self.charged),
        }
    }

    /// The last voucher held, for a corrective 402 (`None` before the first).
    pub fn voucher_state(&self) -> Option<VoucherState> {
        (self.signed_max != 0).then(|| VoucherState {
            signed_max_claimable: self.signed_max,
            signature: self.signature.clone(),
        })
    }
}

/// How long a channel's mirror is trusted (seconds), as the official server does it:
/// a third of the withdrawal delay, between 30 seconds and 5 minutes.
pub fn mirror_ttl(withdraw_delay: u64) -> u64 {
    (withdraw_delay / 3).clamp(30, 300)
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Judgement {
    Judgement::Refuse {
        reason,
        message: message.into(),
    }
}

/// Per-second billing: `charge = ceil(seconds * price / per_secs)` (with a price of a
/// minute, `ceil(seconds * price_per_minute / 60)`), where seconds are counted in whole
/// granules (a started granule counts), and the rounding happens once, on the
/// cumulative total. A stream prices a slice: `Meter::new(slice_price, slice_seconds,
/// 1)` charges a whole slice exactly its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    /// Price of `per_secs` seconds, atomic units.
    pub price: u128,
    /// The seconds `price` buys (at least 1).
    pub per_secs: u64,
    /// Billing granularity in seconds (at least 1).
    pub granularity_secs: u64,
}

impl Meter {
    /// A meter charging `price` per `per_secs` seconds, in granules of
    /// `granularity_secs`.
    pub fn new(price: u128, per_secs: u64, granularity_secs: u64) -> Self {
        Meter {
            price,
            per_secs: per_secs.max(1),
            granularity_secs: granularity_secs.max(1),
        }
    }

    /// Seconds billed for `ms` milliseconds delivered (whole granules, rounded up).
    pub fn billed_secs(&self, ms: u64) -> u64 {
        let g = self.granularity_secs.saturating_mul(1000);
        ms.div_ceil(g).saturating_mul(self.granularity_secs)
    }

    /// The cumulative charge for `ms` milliseconds delivered.
    pub fn charge_ms(&self, ms: u64) -> u128 {
        let secs = u128::from(self.billed_secs(ms));
        secs.saturating_mul(self.price)
            .div_ceil(u128::from(self.per_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use x402_types::batch::Bytes;

    fn record(balance: u128) -> ChannelRecord {
        let config = ChannelConfig {
            payer: Default::default(),
            payer_authorizer: Default::default(),
            receiver: Default::default(),
            receiver_authorizer: Default::default(),
            token: Default::default(),
            withdraw_delay: 900,
            salt: Default::default(),
        };
        let mut r = ChannelRecord::new(config, x402_types::FixedBytes([7; 32]));
        r.balance = balance;
        r
    }

    fn voucher(r: &ChannelRecord, max: u128, sig: u8) -> SignedVoucher {
        SignedVoucher {
            channel_id: r.id,
            max_claimable_amount: max,
            signature: Bytes(vec![sig; 65]),
        }
    }

    #[test]
    fn cumulative_rule_and_bounds() {
        let mut r = record(25);
        assert_eq!(r.judge(&voucher(&r, 5, 1), 10, 0), Judgement::Mismatch);
        assert_eq!(
            r.judge(&voucher(&r, 10, 1), 10, 0),
            Judgement::Accept { charge: 10 }
        );
        r.accept(&voucher(&r, 10, 1), 10);
        // A retry of the same voucher is a repeat; a different signature is not.
        assert_eq!(r.judge(&voucher(&r, 10, 1), 10, 0), Judgement::Repeat);
        assert_eq!(r.judge(&voucher(&r, 10, 2), 10, 0), Judgement::Mismatch);
        r.accept(&voucher(&r, 20, 3), 10);
        assert!(matches!(
            r.judge(&voucher(&r, 30, 4), 10, 0),
            Judgement::Refuse {
                reason: reasons::CUMULATIVE_EXCEEDS_BALANCE,
                ..
            }
        ));
        let mut other = voucher(&r, 30, 4);
        other.channel_id = x402_types::FixedBytes([8; 32]);
        assert!(matches!(
            r.judge(&other, 10, 0),
            Judgement::Refuse {
                reason: reasons::CHANNEL_ID_MISMATCH,
                ..
            }
        ));
    }

    #[test]
    fn sync_never_lowers_what_was_claimed() {
        let mut r = record(0);
        r.sync(&ChannelState {
            channel_id: r.id,
            balance: 100,
            total_claimed: 40,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
            charged_cumulative_amount: None,
        });
        assert_eq!((r.balance, r.charged), (100, 40));
        assert_eq!(
            r.judge(&voucher(&r, 50, 1), 10, 0),
            Judgement::Accept { charge: 10 }
        );
    }

    #[test]
    fn the_mirror_goes_stale_with_time_or_a_pending_withdrawal() {
        let mut r = record(100);
        assert!(!r.fresh(1_000, 300), "never read");
        r.synced_at = 1_000;
        assert!(r.fresh(1_299, 300));
        assert!(!r.fresh(1_300, 300));
        r.withdraw_requested_at = 990;
        assert!(!r.fresh(1_000, 300), "a withdrawal is pending");
        assert_eq!(
            (mirror_ttl(900), mirror_ttl(60), mirror_ttl(2_592_000)),
            (300, 30, 300)
        );
    }

    #[test]
    fn a_forgotten_channel_adopts_the_clients_total_above_what_was_claimed() {
        let mut r = record(100);
        r.total_claimed = 30;
        r.charged = 30;
        // The client says it was charged 50 (signs 50 + 10): adopted.
        r.adopt_client_total(&voucher(&r, 60, 1), 10);
        assert_eq!(r.charged, 50);
        assert_eq!(
            r.judge(&voucher(&r, 60, 1), 10, 0),
            Judgement::Accept { charge: 10 }
        );
        // Below what was claimed on chain: the chain wins.
        let mut r = record(100);
        r.total_claimed = 30;
        r.charged = 30;
        r.adopt_client_total(&voucher(&r, 20, 1), 10);
        assert_eq!(r.charged, 30);
        assert_eq!(r.judge(&voucher(&r, 20, 1), 10, 0), Judgement::Mismatch);
    }

    #[test]
    fn a_return_lowers_what_is_claimed_never_the_voucher_total() {
        let mut r = record(100);
        r.accept(&voucher(&r, 10, 1), 10);
        r.accept(&voucher(&r, 20, 2), 10);
        r.return_unused(10);
        assert_eq!((r.charged, r.returned, r.claimable()), (20, 10, 10));
        // The next voucher is a new one (30), never the 20 already used.
        assert_eq!(r.judge(&voucher(&r, 20, 3), 10, 0), Judgement::Mismatch);
        assert_eq!(
            r.judge(&voucher(&r, 30, 3), 10, 0),
            Judgement::Accept { charge: 10 }
        );
        // Never more back than is unclaimed; a claim that landed at the old total wins.
        r.return_unused(1_000);
        assert_eq!(r.returned, 20);
        r.sync(&ChannelState {
            channel_id: r.id,
            balance: 100,
            total_claimed: 15,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
            charged_cumulative_amount: None,
        });
        assert_eq!((r.returned, r.claimable(), r.unclaimed()), (5, 15, 0));
    }

    proptest! {
        /// Whatever vouchers arrive, the charge never exceeds the highest signed
        /// maximum nor the balance, and each accepted voucher pays exactly one price.
        #[test]
        fn charge_is_bounded_by_signed_credit(
            balance in 0u128..1_000,
            price in 1u128..50,
            maxes in proptest::collection::vec(0u128..1_200, 0..40),
        ) {
            let mut r = record(balance);
            let mut accepted = 0u128;
            for (i, m) in maxes.iter().enumerate() {
                let v = voucher(&r, *m, (i % 250) as u8);
                if let Judgement::Accept { charge } = r.judge(&v, price, 0) {
                    prop_assert_eq!(charge, price);
                    r.accept(&v, charge);
                    accepted += 1;
                }
                prop_assert!(r.charged <= r.signed_max || r.signed_max == 0);
                prop_assert!(r.charged <= r.balance);
            }
            prop_assert_eq!(r.charged, accepted * price);
        }

        /// The meter is monotone, rounds once (never more than one atomic unit above
        /// the exact price of the billed seconds), and the granule is respected.
        #[test]
        fn meter_rounds_once(ppm in 0u128..10_000_000, g in 1u64..10, a in 0u64..10_000_000, b in 0u64..10_000_000) {
            let m = Meter::new(ppm, 60, g);
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(m.charge_ms(lo) <= m.charge_ms(hi));
            let secs = u128::from(m.billed_secs(hi));
            prop_assert_eq!(secs % u128::from(g), 0);
            prop_assert!(m.charge_ms(hi) * 60 >= secs * ppm);
            prop_assert!(m.charge_ms(hi) * 60 < secs * ppm + 60);
        }
    }
}
