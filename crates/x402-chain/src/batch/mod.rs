//! The x402 `batch-settlement` scheme (payment channels) in the settling EVM facilitator.
//!
//! [`EvmFacilitator`] hands every payment whose scheme is `batch-settlement` to this module.
//!
//! **`/verify`** takes `deposit`, `voucher` and `refund` payloads and checks them against the
//! requirement and the chain: the channel id is the EIP-712 hash of the configuration; the
//! token is the requirement's asset, the receiver its `payTo`, `receiverAuthorizer` and
//! `withdrawDelay` those of its `extra`; the voucher is signed by `payerAuthorizer` (an EOA:
//! a zero `payerAuthorizer`, an EIP-1271 payer, is refused here); a deposit's ERC-3009
//! `ReceiveWithAuthorization` is in its window, signed by the payer under the token's domain
//! for the deposit collector with the nonce `keccak256(channelId, salt)`, unused, covered by
//! the payer's balance and its `deposit` call simulates; a voucher's channel is funded; the
//! voucher's maximum is at most the balance (plus the deposit) and above what is claimed (a
//! refund's: at least). A valid answer carries the channel's state as the chain has it:
//! `{channelId, balance, totalClaimed, withdrawRequestedAt, refundNonce}`.
//!
//! **`/settle`** executes, from the relayer:
//! - `deposit`: `deposit(config, amount, ERC3009DepositCollector, collectorData)`. Idempotent:
//!   when the authorization is already used on chain the answer is the success of the
//!   deposit that used it (its transaction read from the token's `AuthorizationUsed` log);
//!   nothing is sent twice.
//! - `claim`: `claimWithSignature(claims, signature)`; a missing signature is made with the
//!   authorizer key when the channels name it. `amount` is the total newly claimed.
//! - `settle`: `settle(receiver, token)`; `amount` is the sum swept. When nothing is claimed
//!   and unsettled the answer is `success: false` with
//!   `invalid_batch_settlement_evm_nothing_to_settle` and no transaction, as the official
//!   facilitator (x402 Python SDK 2.25, `execute_settle`) answers.
//! - `refund`: `multicall(claimWithSignature, refundWithSignature)` (only
//!   `refundWithSignature` without claims); missing signatures are made with the authorizer
//!   key; without `refundNonce` the chain's is used, without `amount` everything left
//!   unclaimed after the claims. `amount` is what the `Refunded` event says was returned.
//!
//! `voucher` payloads are never settled (the server records them and claims later).
//!
//! Every sent transaction is remembered by what it does (the deposit's authorization, the
//! claim batch's digest, the receiver's claimed total, the refund's nonce): a retry while it
//! is in flight waits for it, a retry after it was mined gets its success, and it is never
//! sent twice. A receipt that does not come in time is answered `settlement_pending` with
//! the transaction hash, as `exact` does.

mod check;
mod execute;

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::aliases::U40;
use alloy::primitives::{Address as EvmAddress, B256, Bytes as EvmBytes, U256 as EvmU256};
use alloy::rpc::types::TransactionReceipt;
use x402_facilitator::FacilitatorError;
use x402_payer::channel::ChannelDomain;
use x402_payer::{DigestSigner, LocalSigner};
use x402_types::batch::{
    BatchExtra, BatchPayload, ChannelConfig, ChannelState, VoucherClaim, parse_payload, reasons,
};
use x402_types::{
    FacilitatorReason, FacilitatorRequest, Requirement, SchemePayload, SettleResponse,
    SupportedKind, VerifyResponse,
};

use crate::ChainError;
use crate::channel_contract::{BATCH_SETTLEMENT, IBatchSettlement};
use crate::facilitator::{EvmFacilitator, transport_err};

/// What the facilitator keeps for the scheme: the receiver authorizer's key and the
/// transactions it sent, by what they do.
pub(crate) struct BatchState {
    authorizer: LocalSigner,
    sent: Mutex<HashMap<Op, B256>>,
    /// Held from "was this sent?" through the send: two requests for one operation never
    /// both send it.
    submit: tokio::sync::Mutex<()>,
}

impl BatchState {
    /// With the authorizer's hex key.
    pub(crate) fn new(authorizer_key: &str) -> Result<Self, ChainError> {
        let authorizer = LocalSigner::from_hex(authorizer_key)
            .map_err(|_| ChainError::Config("authorizer key: not a 32-byte hex secret".into()))?;
        Ok(BatchState {
            authorizer,
            sent: Mutex::new(HashMap::new()),
            submit: tokio::sync::Mutex::new(()),
        })
    }
}

/// What a sent transaction does, to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    /// A deposit, by its ERC-3009 authorization.
    Deposit { payer: EvmAddress, nonce: B256 },
    /// A claim batch, by its EIP-712 digest.
    Claim(B256),
    /// A sweep, by the receiver's claimed total when it was asked for.
    Sweep {
        receiver: EvmAddress,
        token: EvmAddress,
        claimed: u128,
    },
    /// A refund, by its channel and nonce.
    Refund { channel: B256, nonce: EvmU256 },
}

/// Why a payload is refused, with what is known of its channel.
#[derive(Debug)]
struct Refusal {
    reason: String,
    message: String,
    payer: Option<x402_types::Address>,
    state: Option<ChannelState>,
    tx: Option<B256>,
}

fn refuse(reason: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        reason: reason.into(),
        message: message.into(),
        payer: None,
        state: None,
        tx: None,
    }
}

impl Refusal {
    fn payer(mut self, payer: x402_types::Address) -> Self {
        self.payer = Some(payer);
        self
    }

    fn state(mut self, state: &ChannelState) -> Self {
        self.state = Some(state.clone());
        self
    }
}

/// Why a check stopped: a definite refusal, or nothing can be said now.
#[derive(Debug)]
enum Stop {
    No(Box<Refusal>),
    Err(FacilitatorError),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::No(Box::new(r))
    }
}

impl From<FacilitatorError> for Stop {
    fn from(e: FacilitatorError) -> Self {
        Stop::Err(e)
    }
}

/// Where a sent transaction is.
enum Landed {
    Mined(B256, Box<TransactionReceipt>),
    Reverted(B256),
    Pending(B256),
}

/// The requirement's terms for a channel payload.
struct Terms {
    token: x402_types::Address,
    pay_to: x402_types::Address,
    extra: BatchExtra,
}

fn terms(r: &Requirement) -> Result<Terms, Refusal> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        refuse(
            FacilitatorReason::InvalidPaymentRequirements.as_str(),
            format!("requirement {what}: {e}"),
        )
    };
    Ok(Terms {
        token: r.asset.parse().map_err(|e| bad("asset", &e))?,
        pay_to: r.pay_to.parse().map_err(|e| bad("payTo", &e))?,
        extra: BatchExtra::from_extra(r.extra.as_ref()).map_err(|e| bad("extra", &e))?,
    })
}

pub(crate) fn evm(a: x402_types::Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

fn word(b: &x402_types::B256) -> B256 {
    B256::from(b.0)
}

fn ours(b: B256) -> x402_types::B256 {
    x402_types::FixedBytes(b.0)
}

fn evm_u256(v: &x402_types::U256) -> EvmU256 {
    EvmU256::from_be_bytes(v.to_be_bytes())
}

fn sol_config(c: &ChannelConfig) -> IBatchSettlement::ChannelConfig {
    IBatchSettlement::ChannelConfig {
        payer: evm(c.payer),
        payerAuthorizer: evm(c.payer_authorizer),
        receiver: evm(c.receiver),
        receiverAuthorizer: evm(c.receiver_authorizer),
        token: evm(c.token),
        withdrawDelay: U40::saturating_from(c.withdraw_delay),
        salt: word(&c.salt),
    }
}

fn sol_claims(claims: &[VoucherClaim]) -> Vec<IBatchSettlement::VoucherClaim> {
    claims
        .iter()
        .map(|c| IBatchSettlement::VoucherClaim {
            voucher: IBatchSettlement::Voucher {
                channel: sol_config(&c.voucher.channel),
                maxClaimableAmount: c.voucher.max_claimable_amount,
            },
            signature: EvmBytes::from(c.signature.0.clone()),
            totalClaimed: c.total_claimed,
        })
        .collect()
}

fn state_json(state: &ChannelState) -> serde_json::Value {
    serde_json::to_value(state).unwrap_or(serde_json::Value::Null)
}

impl EvmFacilitator {
    /// The `batch-settlement` `receiverAuthorizer` this facilitator signs claims and
    /// refunds as (the authorizer key, or the relayer's when none is configured); listed in
    /// `/supported`.
    pub fn receiver_authorizer(&self) -> x402_types::Address {
        self.batch.authorizer.address()
    }

    /// The settlement contract's EIP-712 domain on this chain (channel ids, vouchers,
    /// refunds, claim batches).
    pub fn channel_domain(&self) -> ChannelDomain {
        ChannelDomain::new(self.chain_id)
    }

    /// A channel's state as the chain has it: `channels(id)`, `pendingWithdrawals(id)`
    /// (its `initiatedAt` as `withdrawRequestedAt`) and `refundNonce(id)`. A channel never
    /// funded reads as zeros.
    pub async fn channel_state(
        &self,
        channel_id: &x402_types::B256,
    ) -> Result<ChannelState, FacilitatorError> {
        let c = IBatchSettlement::new(BATCH_SETTLEMENT, self.provider.clone());
        let id = word(channel_id);
        let (ch, wd, nonce) = (c.channels(id), c.pendingWithdrawals(id), c.refundNonce(id));
        let (ch, wd, nonce) =
            tokio::try_join!(ch.call(), wd.call(), nonce.call()).map_err(transport_err)?;
        Ok(ChannelState {
            channel_id: *channel_id,
            balance: ch.balance,
            total_claimed: ch.totalClaimed,
            withdraw_requested_at: u64::try_from(wd.initiatedAt).unwrap_or(u64::MAX),
            refund_nonce: x402_types::U256::from_be_bytes(nonce.to_be_bytes::<32>()),
            charged_cumulative_amount: None,
        })
    }

    /// The `/supported` entry: `batch-settlement` on this network, with the authorizer.
    pub(crate) fn batch_kind(&self) -> SupportedKind {
        SupportedKind {
            x402_version: 2,
            scheme: x402_types::batch::BATCH_SETTLEMENT.into(),
            network: self.network.caip2(),
            extra: Some(serde_json::json!({
                "receiverAuthorizer": self.receiver_authorizer().to_string(),
            })),
        }
    }

    /// The scheme's payload, once the scheme and network are this facilitator's.
    fn batch_payload(&self, req: &FacilitatorRequest) -> Result<BatchPayload, Refusal> {
        let r = req.payment_requirements.requirement();
        if r.scheme != x402_types::batch::BATCH_SETTLEMENT {
            return Err(refuse(
                reasons::INVALID_SCHEME,
                format!(
                    "the requirement's scheme is {:?}, the payload's batch-settlement",
                    r.scheme
                ),
            ));
        }
        if r.network != self.network {
            return Err(refuse(
                FacilitatorReason::InvalidNetwork.as_str(),
                format!(
                    "this facilitator settles on {}",
                    self.network.for_x402_version(req.x402_version())
                ),
            ));
        }
        if *req.payment_payload.network() != r.network {
            return Err(refuse(
                reasons::NETWORK_MISMATCH,
                "the payload's network is not the requirement's",
            ));
        }
        match req.payment_payload.scheme_payload() {
            SchemePayload::Other(map) => parse_payload(map).map_err(|e| {
                refuse(
                    FacilitatorReason::InvalidPayload.as_str(),
                    format!("malformed batch-settlement payload: {e}"),
                )
            }),
            SchemePayload::ExactEvm(_) => Err(refuse(
                FacilitatorReason::InvalidPayload.as_str(),
                "an exact EIP-3009 payload is not a batch-settlement payload",
            )),
        }
    }

    /// `/verify` of a `batch-settlement` payment.
    pub(crate) async fn batch_verify(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<VerifyResponse, FacilitatorError> {
        let checked = async {
            let payload = self.batch_payload(req)?;
            let requirement = req.payment_requirements.requirement();
            self.verify_payload(&requirement, &payload).await
        };
        match checked.await {
            Ok((payer, state)) => Ok(VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(payer.to_string()),
                extra: Some(state_json(&state)),
            }),
            Err(Stop::No(r)) => Ok(VerifyResponse {
                is_valid: false,
                invalid_reason: Some(r.reason),
                invalid_message: Some(r.message),
                payer: r.payer.map(|p| p.to_string()),
                extra: r.state.as_ref().map(state_json),
            }),
            Err(Stop::Err(e)) => Err(e),
        }
    }

    /// `/settle` of a `batch-settlement` payment or settle action.
    pub(crate) async fn batch_settle(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<SettleResponse, FacilitatorError> {
        let version = req.x402_version();
        let done = async {
            let payload = self.batch_payload(req)?;
            let requirement = req.payment_requirements.requirement();
            self.settle_payload(&requirement, payload, version).await
        };
        match done.await {
            Ok(s) => Ok(s),
            Err(Stop::No(r)) => {
                tracing::debug!(reason = %r.reason, message = %r.message, "batch-settlement settle refused");
                Ok(SettleResponse {
                    success: false,
                    error_reason: Some(r.reason),
                    payer: r.payer.map(|p| p.to_string()),
                    transaction: r.tx.map(|t| t.to_string()).unwrap_or_default(),
                    network: self.network.for_x402_version(version),
                    amount: None,
                    extra: r
                        .state
                        .as_ref()
                        .map(|s| serde_json::json!({ "channelState": state_json(s) })),
                })
            }
            Err(Stop::Err(e)) => Err(e),
        }
    }
}
