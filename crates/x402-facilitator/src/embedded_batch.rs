//! `batch-settlement` (payment channels) in the
//! [`EmbeddedFacilitator`](crate::EmbeddedFacilitator): every signature is checked for
//! real and **no money moves**. An in-memory ledger stands in for the chain and the
//! `x402BatchSettlement` contract: each channel's balance, claimed total and refund nonce,
//! the deposit authorizations used, and each receiver's claimed and settled totals. It
//! lives as long as the process.
//!
//! The checks and the answers' JSON are those of the settling EVM facilitator
//! (`x402-chain`, module `batch`), which follow the scheme's specification:
//! - **`/verify`** of `deposit`, `voucher` and `refund`: the channel id is the EIP-712
//!   hash of the configuration, the receiver is the requirement's `payTo`, the token its
//!   asset, `receiverAuthorizer` and `withdrawDelay` those of its `extra`; the voucher
//!   recovers to `payerAuthorizer`; a deposit's `ReceiveWithAuthorization` recovers to the
//!   payer under the token's domain, `to` the deposit collector, nonce
//!   `keccak256(channelId, salt)`, in its window and unused; the voucher's maximum is at
//!   most the balance (plus the deposit) and above the claimed total (a refund's: at
//!   least). A valid answer's `extra` is the channel's state
//!   `{channelId, balance, totalClaimed, withdrawRequestedAt, refundNonce}`.
//! - **`/settle`** `deposit` credits the channel once per authorization (the same
//!   deposit settled again answers success again; the balance rose once); `claim` raises
//!   claimed totals (a row at or below the channel's total is a no-op, above its voucher's
//!   maximum or the balance the batch is refused); `settle` answers the amount swept
//!   (claimed minus settled, per receiver and token; nothing: `success: false` with
//!   `invalid_batch_settlement_evm_nothing_to_settle`); `refund` claims first, then
//!   returns the amount capped to `balance - totalClaimed`, its nonce equal to the
//!   channel's and then incremented. A claim, a sweep or a refund done before is answered
//!   as it was the first time, as the EVM facilitator answers a transaction it sent.
//!   `transaction` is always empty: nothing is on chain.
//!
//! What the ledger cannot know: the payer's token balance (a deposit is credited
//! whatever the payer holds), EIP-1271 wallets (a zero `payerAuthorizer` is refused, as
//! the EVM facilitator refuses it) and timed withdrawals (`withdrawRequestedAt` is 0).
//!
//! The `receiverAuthorizer` it lists in `/supported` and accepts claims and refunds for
//! without a signature is [`EMBEDDED_RECEIVER_AUTHORIZER`], the address of the
//! **published** key [`EMBEDDED_AUTHORIZER_KEY`]: for local use only. Anyone can sign as
//! it, which is harmless here (nothing settles) and fatal on a real chain: never deposit
//! real funds into a channel that names it.

mod check;

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use x402_payer::channel::ChannelDomain;
use x402_types::batch::{
    BATCH_SETTLEMENT, BatchExtra, BatchPayload, Bytes, ChannelConfig, ChannelState, Deposit,
    SignedVoucher, VoucherClaim, reasons,
};
use x402_types::network::EVM_NETWORKS;
use x402_types::{
    Address, Amount, B256, FacilitatorRequest, Requirement, SettleResponse, SupportedKind, U256,
    VerifyResponse,
};

use check::{
    authorize, check_channel, check_deposit_authorization, check_deposit_ledger,
    check_voucher_ledger, commit_claims, parse, run_claims, signed_by, terms,
};
use x402_payer::channel_check::{RefundCheck, check_claim_batch, claims_authorizer, refund_amount};

/// The embedded facilitator's receiver-authorizer key: `keccak256("atomicstream embedded
/// facilitator receiverAuthorizer (local use only)")`. **Published: for local use only.**
pub const EMBEDDED_AUTHORIZER_KEY: &str =
    "0x3df8b87454381809c7364a1df6019e44f9d7b3003eaf339f4ddf00da53010ab0";

/// The address of [`EMBEDDED_AUTHORIZER_KEY`]: the `receiverAuthorizer` the embedded
/// facilitator lists in `/supported` for `batch-settlement`:
/// `0xea1e27aFA06298DFDB9d75d732607B4e1Ed9bbD7`. **For local use only.**
pub const EMBEDDED_RECEIVER_AUTHORIZER: Address = Address([
    0xea, 0x1e, 0x27, 0xaf, 0xa0, 0x62, 0x98, 0xdf, 0xdb, 0x9d, 0x75, 0xd7, 0x32, 0x60, 0x7b, 0x4e,
    0x1e, 0xd9, 0xbb, 0xd7,
]);

const ZERO: Address = Address([0u8; 20]);

/// Most remembered answers (claims, sweeps, refunds) before they are forgotten at once.
const DONE_CAP: usize = 100_000;

/// Why a payload is refused, with what is known of its channel.
struct No {
    reason: String,
    message: String,
    payer: Option<Address>,
    state: Option<ChannelState>,
}

fn no(reason: &str, message: impl Into<String>) -> No {
    No {
        reason: reason.into(),
        message: message.into(),
        payer: None,
        state: None,
    }
}

impl No {
    fn payer(mut self, payer: Address) -> Self {
        self.payer = Some(payer);
        self
    }

    fn state(mut self, state: ChannelState) -> Self {
        self.state = Some(state);
        self
    }
}

/// One channel as the contract keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct Chan {
    balance: u128,
    total_claimed: u128,
    refund_nonce: U256,
}

impl Chan {
    fn state(&self, id: B256) -> ChannelState {
        ChannelState {
            channel_id: id,
            balance: self.balance,
            total_claimed: self.total_claimed,
            withdraw_requested_at: 0,
            refund_nonce: self.refund_nonce,
            charged_cumulative_amount: None,
        }
    }
}

/// An operation answered before, by what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Done {
    /// A claim batch, by its EIP-712 digest.
    Claim([u8; 32]),
    /// A sweep, by the receiver's claimed total when it was made.
    Sweep {
        chain: u64,
        receiver: Address,
        token: Address,
        claimed: u128,
    },
    /// A refund, by its channel and nonce.
    Refund { channel: B256, nonce: U256 },
}

/// A used deposit authorization: ERC-3009 keys them by (token, payer, nonce).
type DepositKey = (u64, Address, Address, B256);

#[derive(Default)]
struct Books {
    /// Channel ids are digests under a chain's domain: one map serves every chain.
    channels: HashMap<B256, Chan>,
    /// Used deposit authorizations and their amounts.
    deposits: HashMap<DepositKey, u128>,
    /// Per (chain, receiver, token): (claimed, settled).
    receivers: HashMap<(u64, Address, Address), (u128, u128)>,
    done: HashMap<Done, SettleResponse>,
}

impl Books {
    fn chan(&self, id: &B256) -> Chan {
        self.channels.get(id).copied().unwrap_or_default()
    }

    fn remember(&mut self, op: Done, answer: &SettleResponse) {
        if self.done.len() >= DONE_CAP {
            self.done.clear();
        }
        self.done.insert(op, answer.clone());
    }
}

/// The scheme's ledger inside the embedded facilitator.
#[derive(Default)]
pub(crate) struct BatchLedger {
    books: Mutex<Books>,
}

/// What every payload is judged under.
struct Ctx {
    chain_id: u64,
    domain: ChannelDomain,
    requirement: Requirement,
}

/// The requirement's terms for a channel payload.
struct Terms {
    token: Address,
    pay_to: Address,
    extra: BatchExtra,
}

/// A deposit's ERC-3009 authorization, checked offline.
struct DepositAuth {
    amount: u128,
    valid_after: U256,
    valid_before: U256,
    key: DepositKey,
}

/// A claim row as run: the channel, the amount newly claimed, its new total.
struct Claimed {
    id: B256,
    receiver: Address,
    token: Address,
    amount: u128,
    total: u128,
}

fn state_json(state: &ChannelState) -> Value {
    serde_json::to_value(state).unwrap_or(Value::Null)
}

fn channel_extra(state: &ChannelState) -> Value {
    json!({ "channelState": state_json(state) })
}

/// The `/supported` entries: `batch-settlement` on every EVM network, x402 v2.
pub(crate) fn supported_kinds() -> Vec<SupportedKind> {
    EVM_NETWORKS
        .iter()
        .map(|(_, id)| SupportedKind {
            x402_version: 2,
            scheme: BATCH_SETTLEMENT.into(),
            network: format!("eip155:{id}"),
            extra: Some(json!({
                "receiverAuthorizer": EMBEDDED_RECEIVER_AUTHORIZER.to_string(),
            })),
        })
        .collect()
}

/// Success answers on one network.
struct Answer<'a> {
    network: &'a str,
}

impl Answer<'_> {
    fn success(&self, payer: Option<Address>, paid: u128, extra: Option<Value>) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            payer: payer.map(|p| p.to_string()),
            // Nothing is on chain: no transaction exists.
            transaction: String::new(),
            network: self.network.to_string(),
            amount: Some(Amount::from_u128(paid)),
            extra,
        }
    }
}

/// A refund as the facilitator executes it.
struct Refund<'a> {
    config: &'a ChannelConfig,
    voucher: &'a SignedVoucher,
    amount: Option<u128>,
    nonce: Option<U256>,
    claims: Vec<VoucherClaim>,
    refund_signature: Option<Bytes>,
    claim_signature: Option<Bytes>,
}

impl BatchLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `/verify` of a `batch-settlement` payment at unix second `now`.
    pub(crate) fn verify(&self, req: &FacilitatorRequest, now: u64) -> VerifyResponse {
        match self.check(req, now) {
            Ok((payer, state)) => VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(payer.to_string()),
                extra: Some(state_json(&state)),
            },
            Err(n) => VerifyResponse {
                is_valid: false,
                invalid_reason: Some(n.reason),
                invalid_message: Some(n.message),
                payer: n.payer.map(|p| p.to_string()),
                extra: n.state.as_ref().map(state_json),
            },
        }
    }

    fn check(&self, req: &FacilitatorRequest, now: u64) -> Result<(Address, ChannelState), No> {
        let (ctx, payload) = parse(req)?;
        match &payload {
            BatchPayload::Deposit {
                channel_config,
                voucher,
                deposit,
            } => {
                let t = terms(&ctx.requirement)?;
                let id = check_channel(&ctx, &t, channel_config, voucher)?;
                let d = check_deposit_authorization(&ctx, &t, channel_config, &id, deposit)?;
                let books = self.lock();
                let chan = books.chan(&id);
                let used = books.deposits.contains_key(&d.key);
                check_deposit_ledger(&chan, id, channel_config.payer, voucher, &d, used, now)?;
                Ok((channel_config.payer, chan.state(id)))
            }
            BatchPayload::Voucher {
                channel_config,
                voucher,
            } => {
                let t = terms(&ctx.requirement)?;
                let id = check_channel(&ctx, &t, channel_config, voucher)?;
                let chan = self.lock().chan(&id);
                check_voucher_ledger(&chan, id, channel_config.payer, voucher, false)?;
                Ok((channel_config.payer, chan.state(id)))
            }
            BatchPayload::Refund {
                channel_config,
                voucher,
                amount,
                refund_nonce,
                claims,
                ..
            } => {
                let t = terms(&ctx.requirement)?;
                let id = check_channel(&ctx, &t, channel_config, voucher)?;
                let chan = self.lock().chan(&id);
                let payer = channel_config.payer;
                check_voucher_ledger(&chan, id, payer, voucher, true)?;
                // The server claims the refund voucher's charge before refunding.
                let check = RefundCheck {
                    balance: chan.balance,
                    claimed: chan.total_claimed.max(voucher.max_claimable_amount),
                    channel_nonce: chan.refund_nonce,
                    nonce: *refund_nonce,
                    amount: *amount,
                    claims: claims.as_deref().unwrap_or(&[]),
                };
                refund_amount(&ctx.domain, &id, &check)
                    .map_err(|r| no(r.reason, r.message).payer(payer).state(chan.state(id)))?;
                Ok((payer, chan.state(id)))
            }
            BatchPayload::Claim { .. } | BatchPayload::Settle { .. } => Err(no(
                reasons::PAYLOAD_TYPE,
                format!(
                    "a {} payload is a settle action: send it to /settle",
                    payload.kind()
                ),
            )),
        }
    }

    /// `/settle` of a `batch-settlement` payment or settle action at unix second `now`.
    pub(crate) fn settle(&self, req: &FacilitatorRequest, now: u64) -> SettleResponse {
        let network = req
            .payment_requirements
            .requirement()
            .network
            .for_x402_version(req.x402_version());
        match self.execute(req, now, &network) {
            Ok(s) => s,
            Err(n) => SettleResponse {
                success: false,
                error_reason: Some(n.reason),
                payer: n.payer.map(|p| p.to_string()),
                transaction: String::new(),
                network,
                amount: None,
                extra: n.state.as_ref().map(channel_extra),
            },
        }
    }

    fn execute(
        &self,
        req: &FacilitatorRequest,
        now: u64,
        network: &str,
    ) -> Result<SettleResponse, No> {
        let ok = Answer { network };
        let (ctx, payload) = parse(req)?;
        match payload {
            BatchPayload::Deposit {
                channel_config,
                voucher,
                deposit,
            } => self.settle_deposit(&ctx, &ok, &channel_config, &voucher, &deposit, now),
            BatchPayload::Voucher { channel_config, .. } => Err(no(
                reasons::PAYLOAD_TYPE,
                "voucher payloads are not settled: the server records them and claims them later",
            )
            .payer(channel_config.payer)),
            BatchPayload::Claim {
                claims,
                claim_authorizer_signature,
            } => self.settle_claim(&ctx, &ok, &claims, claim_authorizer_signature.as_ref()),
            BatchPayload::Settle { receiver, token } => {
                self.settle_sweep(&ctx, &ok, receiver, token)
            }
            BatchPayload::Refund {
                channel_config,
                voucher,
                amount,
                refund_nonce,
                claims,
                refund_authorizer_signature,
                claim_authorizer_signature,
            } => self.settle_refund(
                &ctx,
                &ok,
                Refund {
                    config: &channel_config,
                    voucher: &voucher,
                    amount,
                    nonce: refund_nonce,
                    claims: claims.unwrap_or_default(),
                    refund_signature: refund_authorizer_signature,
                    claim_signature: claim_authorizer_signature,
                },
            ),
        }
    }

    fn settle_deposit(
        &self,
        ctx: &Ctx,
        ok: &Answer<'_>,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
        deposit: &Deposit,
        now: u64,
    ) -> Result<SettleResponse, No> {
        let t = terms(&ctx.requirement)?;
        let id = check_channel(ctx, &t, config, voucher)?;
        let d = check_deposit_authorization(ctx, &t, config, &id, deposit)?;
        let payer = config.payer;
        let mut books = self.lock();
        // Idempotent: a deposit whose authorization is used is done (only this very
        // deposit can use it: its nonce is the channel's, its value is signed).
        if let Some(paid) = books.deposits.get(&d.key).copied() {
            let state = books.chan(&id).state(id);
            return Ok(ok.success(Some(payer), paid, Some(channel_extra(&state))));
        }
        let mut chan = books.chan(&id);
        check_deposit_ledger(&chan, id, payer, voucher, &d, false, now)?;
        chan.balance = chan.balance.saturating_add(d.amount);
        books.channels.insert(id, chan);
        books.deposits.insert(d.key, d.amount);
        Ok(ok.success(Some(payer), d.amount, Some(channel_extra(&chan.state(id)))))
    }

    fn settle_claim(
        &self,
        ctx: &Ctx,
        ok: &Answer<'_>,
        claims: &[VoucherClaim],
        signature: Option<&Bytes>,
    ) -> Result<SettleResponse, No> {
        let authorizer = check_claim_batch(claims).map_err(|r| no(r.reason, r.message))?;
        let digest = ctx.domain.claim_batch_digest(claims);
        match signature {
            None => authorize(authorizer)?,
            Some(sig) if !signed_by(&digest, sig, authorizer) => {
                return Err(no(
                    reasons::CLAIM_SIMULATION_FAILED,
                    format!(
                        "the claim would revert: the batch is not signed by its \
                         receiverAuthorizer {authorizer}"
                    ),
                ));
            }
            Some(_) => {}
        }
        let mut books = self.lock();
        if let Some(answer) = books.done.get(&Done::Claim(digest)) {
            return Ok(answer.clone());
        }
        let (touched, rows) = run_claims(&books, &ctx.domain, claims).map_err(|m| {
            no(
                reasons::CLAIM_SIMULATION_FAILED,
                format!("the claim would revert: {m}"),
            )
        })?;
        commit_claims(&mut books, ctx.chain_id, touched, &rows);
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "channelId": r.id.to_string(),
                    "claimAmount": r.amount.to_string(),
                    "totalClaimed": r.total.to_string(),
                })
            })
            .collect();
        let total = rows
            .iter()
            .map(|r| r.amount)
            .fold(0u128, u128::saturating_add);
        let answer = ok.success(None, total, Some(json!({ "claims": list })));
        books.remember(Done::Claim(digest), &answer);
        Ok(answer)
    }

    fn settle_sweep(
        &self,
        ctx: &Ctx,
        ok: &Answer<'_>,
        receiver: Address,
        token: Address,
    ) -> Result<SettleResponse, No> {
        let mut books = self.lock();
        let key = (ctx.chain_id, receiver, token);
        let (claimed, settled) = books.receivers.get(&key).copied().unwrap_or_default();
        let op = Done::Sweep {
            chain: ctx.chain_id,
            receiver,
            token,
            claimed,
        };
        if let Some(answer) = books.done.get(&op) {
            return Ok(answer.clone());
        }
        if claimed <= settled {
            return Err(no(
                reasons::NOTHING_TO_SETTLE,
                format!("nothing claimed and unsettled for {receiver} in {token}"),
            ));
        }
        books.receivers.insert(key, (claimed, claimed));
        let answer = ok.success(None, claimed - settled, None);
        books.remember(op, &answer);
        Ok(answer)
    }

    /// `multicall(claimWithSignature, refundWithSignature)`: the claims, then the refund
    /// capped to what is left unclaimed; the nonce must be the channel's and moves on.
    fn settle_refund(
        &self,
        ctx: &Ctx,
        ok: &Answer<'_>,
        r: Refund<'_>,
    ) -> Result<SettleResponse, No> {
        let t = terms(&ctx.requirement)?;
        let config = r.config;
        let id = check_channel(ctx, &t, config, r.voucher)?;
        let payer = config.payer;
        let mut books = self.lock();
        let chan = books.chan(&id);
        let nonce = r.nonce.unwrap_or(chan.refund_nonce);
        let op = Done::Refund { channel: id, nonce };
        if let Some(answer) = books.done.get(&op) {
            return Ok(answer.clone());
        }
        check_voucher_ledger(&chan, id, payer, r.voucher, true)?;
        let refuse =
            |reason: &str, message: String| no(reason, message).payer(payer).state(chan.state(id));
        let check = RefundCheck {
            balance: chan.balance,
            claimed: chan.total_claimed,
            channel_nonce: chan.refund_nonce,
            nonce: Some(nonce),
            amount: r.amount,
            claims: &r.claims,
        };
        let refund =
            refund_amount(&ctx.domain, &id, &check).map_err(|e| refuse(e.reason, e.message))?;
        let simulation = |m: String| {
            refuse(
                reasons::REFUND_SIMULATION_FAILED,
                format!("the refund would revert: {m}"),
            )
        };
        let refund_digest = ctx.domain.refund_digest(&id, nonce, refund);
        match &r.refund_signature {
            None => authorize(config.receiver_authorizer).map_err(|n| n.payer(payer))?,
            Some(sig) if !signed_by(&refund_digest, sig, config.receiver_authorizer) => {
                return Err(simulation(format!(
                    "the refund is not signed by the channel's receiverAuthorizer {}",
                    config.receiver_authorizer
                )));
            }
            Some(_) => {}
        }
        if let Some(first) = r.claims.first() {
            let named = first.voucher.channel.receiver_authorizer;
            match &r.claim_signature {
                None => {
                    claims_authorizer(&r.claims)
                        .map_err(|e| no(e.reason, e.message).payer(payer))?;
                    authorize(named).map_err(|n| n.payer(payer))?;
                }
                Some(sig) => {
                    if !signed_by(&ctx.domain.claim_batch_digest(&r.claims), sig, named) {
                        return Err(simulation(format!(
                            "the claims are not signed by their receiverAuthorizer {named}"
                        )));
                    }
                }
            }
        }
        let (mut touched, rows) = run_claims(&books, &ctx.domain, &r.claims).map_err(simulation)?;
        let mut after = touched.get(&id).copied().unwrap_or(chan);
        let Some(next) = after.refund_nonce.checked_add(U256::from_u64(1)) else {
            return Err(simulation("the refund nonce would overflow".into()));
        };
        let refunded = refund.min(after.balance.saturating_sub(after.total_claimed));
        after.refund_nonce = next;
        after.balance = after.balance.saturating_sub(refunded);
        touched.insert(id, after);
        commit_claims(&mut books, ctx.chain_id, touched, &rows);
        let answer = ok.success(Some(payer), refunded, Some(channel_extra(&after.state(id))));
        books.remember(op, &answer);
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
