//! The offline checks of a `batch-settlement` channel (the spec's section 7), written
//! once for everyone who receives a payload: the EVM facilitator, the embedded one,
//! and the server's own precheck. Each answers the scheme's reason
//! (`invalid_batch_settlement_evm_*`) and a message for people; what it is wrapped in
//! is the caller's.
//!
//! ```
//! use x402_payer::channel::ChannelDomain;
//! use x402_payer::channel_check::{ReceiverTerms, check_channel};
//! use x402_types::batch::{ChannelConfig, SignedVoucher, Bytes, reasons};
//!
//! let terms = ReceiverTerms {
//!     pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".parse().unwrap(),
//!     token: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".parse().unwrap(),
//!     receiver_authorizer: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".parse().unwrap(),
//!     withdraw_delay: 900,
//! };
//! let config = ChannelConfig {
//!     payer: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap(),
//!     payer_authorizer: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap(),
//!     receiver: terms.pay_to,
//!     receiver_authorizer: terms.receiver_authorizer,
//!     token: terms.token,
//!     withdraw_delay: 3600, // not the receiver's
//!     salt: Default::default(),
//! };
//! let domain = ChannelDomain::new(84532);
//! let voucher = SignedVoucher {
//!     channel_id: domain.channel_id(&config),
//!     max_claimable_amount: 1_000,
//!     signature: Bytes(vec![0; 65]),
//! };
//! let no = check_channel(&domain, &terms, &config, &voucher).unwrap_err();
//! assert_eq!(no.reason, reasons::WITHDRAW_DELAY_MISMATCH);
//! ```

use x402_types::batch::{
    BatchExtra, ChannelConfig, Deposit, ERC3009_DEPOSIT_COLLECTOR, MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY, SignedVoucher, VoucherClaim, reasons,
};
use x402_types::{Address, Amount, Authorization, B256, U256};

use crate::channel::{ChannelDomain, deposit_nonce, receive_digest, recover_bytes, voucher_signer};
use crate::eip712::Domain;

const ZERO: Address = Address([0u8; 20]);

/// What a channel must name to pay this receiver (from the requirement it answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverTerms {
    /// The requirement's `payTo`: the channel's receiver.
    pub pay_to: Address,
    /// The requirement's asset: the channel's token.
    pub token: Address,
    /// The requirement's `extra.receiverAuthorizer`.
    pub receiver_authorizer: Address,
    /// The requirement's `extra.withdrawDelay`.
    pub withdraw_delay: u64,
}

impl ReceiverTerms {
    /// The terms of a requirement whose `payTo` and asset are read, and its `extra`.
    pub fn of(pay_to: Address, token: Address, extra: &BatchExtra) -> Self {
        ReceiverTerms {
            pay_to,
            token,
            receiver_authorizer: extra.receiver_authorizer,
            withdraw_delay: extra.withdraw_delay,
        }
    }
}

/// Why a channel payload is refused: the scheme's reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ChannelRefusal {
    /// The scheme's reason (`x402_types::batch::reasons`).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

fn no(reason: &'static str, message: impl Into<String>) -> ChannelRefusal {
    ChannelRefusal {
        reason,
        message: message.into(),
    }
}

/// The configuration against the receiver's terms, the channel id, and the voucher's
/// signature by the payer's authorizer, in the official facilitator's order
/// (`validate_channel_config`). Returns the channel id.
///
/// Vouchers of a contract wallet (a zero `payerAuthorizer`, verified by EIP-1271 on
/// chain) are refused: only EOA authorizers are verified here.
pub fn check_channel(
    domain: &ChannelDomain,
    terms: &ReceiverTerms,
    config: &ChannelConfig,
    voucher: &SignedVoucher,
) -> Result<B256, ChannelRefusal> {
    let id = domain.channel_id(config);
    if voucher.channel_id != id {
        return Err(no(
            reasons::CHANNEL_ID_MISMATCH,
            format!(
                "voucher.channelId {} is not the channel id of channelConfig ({id})",
                voucher.channel_id
            ),
        ));
    }
    let mismatch = |reason: &'static str,
                    field: &str,
                    got: &dyn std::fmt::Display,
                    want: &dyn std::fmt::Display| {
        no(
            reason,
            format!("channelConfig.{field} is {got}, the requirement says {want}"),
        )
    };
    if config.receiver != terms.pay_to {
        return Err(mismatch(
            reasons::RECEIVER_MISMATCH,
            "receiver",
            &config.receiver,
            &terms.pay_to,
        ));
    }
    if terms.receiver_authorizer == ZERO || config.receiver_authorizer != terms.receiver_authorizer
    {
        return Err(mismatch(
            reasons::RECEIVER_AUTHORIZER_MISMATCH,
            "receiverAuthorizer",
            &config.receiver_authorizer,
            &terms.receiver_authorizer,
        ));
    }
    if config.token != terms.token {
        return Err(mismatch(
            reasons::TOKEN_MISMATCH,
            "token",
            &config.token,
            &terms.token,
        ));
    }
    if config.withdraw_delay != terms.withdraw_delay {
        return Err(mismatch(
            reasons::WITHDRAW_DELAY_MISMATCH,
            "withdrawDelay",
            &config.withdraw_delay,
            &terms.withdraw_delay,
        ));
    }
    if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&config.withdraw_delay) {
        return Err(no(
            reasons::WITHDRAW_DELAY_OUT_OF_RANGE,
            format!(
                "withdrawDelay {} is outside {MIN_WITHDRAW_DELAY}..={MAX_WITHDRAW_DELAY}",
                config.withdraw_delay
            ),
        ));
    }
    if config.payer == ZERO {
        return Err(no(reasons::VOUCHER_PAYLOAD, "channelConfig.payer is zero"));
    }
    if config.payer_authorizer == ZERO {
        return Err(no(
            reasons::VOUCHER_SIGNATURE,
            "payerAuthorizer is zero (vouchers signed by the payer by EIP-1271): only vouchers \
             of an EOA payerAuthorizer are verified here",
        ));
    }
    match voucher_signer(domain, voucher) {
        Ok(signer) if signer == config.payer_authorizer => Ok(id),
        Ok(signer) => Err(no(
            reasons::VOUCHER_SIGNATURE,
            format!(
                "the voucher is signed by {signer}, not by payerAuthorizer {}",
                config.payer_authorizer
            ),
        )),
        Err(e) => Err(no(
            reasons::VOUCHER_SIGNATURE,
            format!("the voucher signature is unusable: {e}"),
        )),
    }
}

/// A deposit's ERC-3009 authorization, checked offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDeposit {
    /// The amount deposited.
    pub amount: u128,
    /// `validAfter`.
    pub valid_after: U256,
    /// `validBefore`.
    pub valid_before: U256,
    /// The authorization's salt.
    pub salt: B256,
    /// Its signature.
    pub signature: Vec<u8>,
    /// Its nonce, `keccak256(abi.encode(channelId, salt))`.
    pub nonce: B256,
}

/// The token's EIP-712 domain a deposit's authorization is signed under: the name and
/// version of the requirement's `extra`, on chain `chain_id`, at `token`.
pub fn token_domain(extra: &BatchExtra, chain_id: u64, token: Address) -> Domain {
    Domain {
        name: extra.name.clone(),
        version: extra.version.clone(),
        chain_id,
        verifying_contract: token,
    }
}

/// A deposit's ERC-3009 `ReceiveWithAuthorization`: present, non-zero, signed by the
/// payer under the token's domain (`token_domain`) to the deposit collector, with the
/// channel's nonce. Permit2 deposits are refused.
pub fn check_deposit_authorization(
    token_domain: &Domain,
    config: &ChannelConfig,
    channel_id: &B256,
    deposit: &Deposit,
) -> Result<CheckedDeposit, ChannelRefusal> {
    if deposit.amount == 0 {
        return Err(no(reasons::DEPOSIT_PAYLOAD, "a deposit of zero"));
    }
    let Some(a) = &deposit.authorization.erc3009_authorization else {
        return Err(no(
            reasons::ERC3009_AUTHORIZATION_REQUIRED,
            if deposit.authorization.permit2_authorization.is_some() {
                "Permit2 deposits are not executed here: deposit by ERC-3009 \
                 (erc3009Authorization)"
            } else {
                "the deposit carries no erc3009Authorization"
            },
        ));
    };
    let nonce = deposit_nonce(channel_id, &a.salt);
    let auth = Authorization {
        from: config.payer,
        to: ERC3009_DEPOSIT_COLLECTOR,
        value: Amount::from_u128(deposit.amount),
        valid_after: a.valid_after,
        valid_before: a.valid_before,
        nonce,
    };
    match recover_bytes(&receive_digest(token_domain, &auth), &a.signature) {
        Ok(signer) if signer == config.payer => Ok(CheckedDeposit {
            amount: deposit.amount,
            valid_after: a.valid_after,
            valid_before: a.valid_before,
            salt: a.salt,
            signature: a.signature.0.clone(),
            nonce,
        }),
        Ok(signer) => Err(no(
            reasons::RECEIVE_AUTHORIZATION_SIGNATURE,
            format!(
                "the ReceiveWithAuthorization is signed by {signer}, not by the payer {} \
                 (token domain {:?} version {:?}, to the deposit collector, nonce \
                 keccak256(channelId, salt))",
                config.payer, token_domain.name, token_domain.version
            ),
        )),
        Err(e) => Err(no(
            reasons::RECEIVE_AUTHORIZATION_SIGNATURE,
            format!("the ReceiveWithAuthorization signature is unusable: {e}"),
        )),
    }
}

/// The highest `totalClaimed` a channel reaches once the `claims` riding with a
/// refund for channel `id` land, starting from `base`.
pub fn claimed_after(
    domain: &ChannelDomain,
    base: u128,
    claims: &[VoucherClaim],
    id: &B256,
) -> u128 {
    claims
        .iter()
        .filter(|c| domain.channel_id(&c.voucher.channel) == *id)
        .map(|c| c.total_claimed)
        .fold(base, u128::max)
}

/// A cooperative refund against the channel's state.
#[derive(Debug, Clone, Copy)]
pub struct RefundCheck<'a> {
    /// The channel's balance.
    pub balance: u128,
    /// What is claimed before the claims riding with the refund (the chain's
    /// `totalClaimed`, or more when the refund voucher's charge is to be claimed).
    pub claimed: u128,
    /// The channel's refund nonce.
    pub channel_nonce: U256,
    /// The payload's `refundNonce` (none: the channel's).
    pub nonce: Option<U256>,
    /// The payload's `amount` (none: everything not claimed).
    pub amount: Option<u128>,
    /// Claims executed in the same transaction, before the refund.
    pub claims: &'a [VoucherClaim],
}

/// What a cooperative refund of channel `id` returns: the payload's amount, or all
/// that is not claimed once its claims land. Refused when its nonce is not the
/// channel's, its amount is zero, or nothing is left.
pub fn refund_amount(
    domain: &ChannelDomain,
    id: &B256,
    r: &RefundCheck<'_>,
) -> Result<u128, ChannelRefusal> {
    if let Some(n) = r.nonce
        && n != r.channel_nonce
    {
        return Err(no(
            reasons::REFUND_PAYLOAD,
            format!("refundNonce {n} is not the channel's {}", r.channel_nonce),
        ));
    }
    if r.amount == Some(0) {
        return Err(no(reasons::REFUND_AMOUNT_INVALID, "a refund of zero"));
    }
    let claimed = claimed_after(domain, r.claimed, r.claims, id);
    let available = r.balance.saturating_sub(claimed);
    if available == 0 {
        return Err(no(
            reasons::REFUND_NO_BALANCE,
            format!(
                "nothing to refund: balance {} and {claimed} claimed",
                r.balance
            ),
        ));
    }
    Ok(r.amount.unwrap_or(available))
}

/// A voucher (or a refund's voucher) of channel `id` against the channel's state: the
/// channel funded (`balance`), the voucher's maximum within the balance and above what
/// is claimed (a refund's: at least).
pub fn check_voucher_funds(
    id: &B256,
    balance: u128,
    total_claimed: u128,
    max: u128,
    refund: bool,
) -> Result<(), ChannelRefusal> {
    if balance == 0 {
        return Err(no(
            reasons::CHANNEL_NOT_FOUND,
            format!("channel {id} holds no deposit"),
        ));
    }
    if max > balance {
        return Err(no(
            reasons::CUMULATIVE_EXCEEDS_BALANCE,
            format!("maxClaimableAmount {max} exceeds the balance {balance}"),
        ));
    }
    let below = if refund {
        max < total_claimed
    } else {
        max <= total_claimed
    };
    if below {
        return Err(no(
            reasons::CUMULATIVE_BELOW_CLAIMED,
            format!(
                "maxClaimableAmount {max} is {} the claimed {total_claimed}",
                if refund { "below" } else { "not above" },
            ),
        ));
    }
    Ok(())
}

/// The `receiverAuthorizer` every claim of a batch names: one signature covers the
/// batch, so they must all name the same. Refused when the batch is empty or they
/// differ.
pub fn claims_authorizer(claims: &[VoucherClaim]) -> Result<Address, ChannelRefusal> {
    let Some(first) = claims.first() else {
        return Err(no(reasons::CLAIM_PAYLOAD, "a claim batch without claims"));
    };
    let named = first.voucher.channel.receiver_authorizer;
    match claims
        .iter()
        .find(|c| c.voucher.channel.receiver_authorizer != named)
    {
        Some(c) => Err(no(
            reasons::CLAIM_PAYLOAD,
            format!(
                "every claim of a batch must name the same receiverAuthorizer ({} and {named})",
                c.voucher.channel.receiver_authorizer
            ),
        )),
        None => Ok(named),
    }
}

/// A claim batch as a receiver sends it: its authorizer ([`claims_authorizer`]), and no
/// claim above its voucher's maximum.
pub fn check_claim_batch(claims: &[VoucherClaim]) -> Result<Address, ChannelRefusal> {
    let named = claims_authorizer(claims)?;
    if let Some(c) = claims
        .iter()
        .find(|c| c.total_claimed > c.voucher.max_claimable_amount)
    {
        return Err(no(
            reasons::CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
            format!(
                "a claim of {} exceeds its voucher's maxClaimableAmount {}",
                c.total_claimed, c.voucher.max_claimable_amount
            ),
        ));
    }
    Ok(named)
}
