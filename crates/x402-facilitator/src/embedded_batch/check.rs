//! The checks of `batch-settlement` payloads (offline, then against the ledger) and the
//! contract's claim semantics, for the embedded facilitator.

use std::collections::HashMap;

use x402_payer::channel::{ChannelDomain, recover_bytes, voucher_signer};
use x402_payer::channel_check::{self, ReceiverTerms};
use x402_payer::verify::MIN_VALIDITY_LEFT;
use x402_types::batch::{
    BATCH_SETTLEMENT, BatchExtra, BatchPayload, Bytes, ChannelConfig, Deposit, SignedVoucher,
    VoucherClaim, parse_payload, reasons,
};
use x402_types::{
    Address, B256, FacilitatorReason, FacilitatorRequest, Requirement, SchemePayload, U256,
};

use super::{
    Books, Chan, Claimed, Ctx, DepositAuth, EMBEDDED_RECEIVER_AUTHORIZER, No, Terms, ZERO, no,
};

/// The scheme's payload and its context, once the scheme and network are right.
pub(super) fn parse(req: &FacilitatorRequest) -> Result<(Ctx, BatchPayload), No> {
    let r = req.payment_requirements.requirement();
    if r.scheme != BATCH_SETTLEMENT {
        return Err(no(
            reasons::INVALID_SCHEME,
            format!(
                "the requirement's scheme is {:?}, the payload's batch-settlement",
                r.scheme
            ),
        ));
    }
    let Some(chain_id) = r.network.chain_id() else {
        return Err(no(
            FacilitatorReason::InvalidNetwork.as_str(),
            format!("{} is not an EVM network", r.network.caip2()),
        ));
    };
    if *req.payment_payload.network() != r.network {
        return Err(no(
            reasons::NETWORK_MISMATCH,
            "the payload's network is not the requirement's",
        ));
    }
    let payload = match req.payment_payload.scheme_payload() {
        SchemePayload::Other(map) => parse_payload(map).map_err(|e| {
            no(
                FacilitatorReason::InvalidPayload.as_str(),
                format!("malformed batch-settlement payload: {e}"),
            )
        })?,
        SchemePayload::ExactEvm(_) => {
            return Err(no(
                FacilitatorReason::InvalidPayload.as_str(),
                "an exact EIP-3009 payload is not a batch-settlement payload",
            ));
        }
    };
    Ok((
        Ctx {
            chain_id,
            domain: ChannelDomain::new(chain_id),
            requirement: r,
        },
        payload,
    ))
}

pub(super) fn terms(r: &Requirement) -> Result<Terms, No> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        no(
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

/// The configuration against the requirement, the channel id, and the voucher's
/// signature (`x402_payer::channel_check`). Returns the channel id.
pub(super) fn check_channel(
    ctx: &Ctx,
    t: &Terms,
    config: &ChannelConfig,
    voucher: &SignedVoucher,
) -> Result<B256, No> {
    let receiver = ReceiverTerms::of(t.pay_to, t.token, &t.extra);
    channel_check::check_channel(&ctx.domain, &receiver, config, voucher)
        .map_err(|r| no(r.reason, r.message).payer(config.payer))
}

/// A deposit's ERC-3009 `ReceiveWithAuthorization`, under the token's domain
/// (`x402_payer::channel_check`).
pub(super) fn check_deposit_authorization(
    ctx: &Ctx,
    t: &Terms,
    config: &ChannelConfig,
    id: &B256,
    deposit: &Deposit,
) -> Result<DepositAuth, No> {
    let domain = channel_check::token_domain(&t.extra, ctx.chain_id, t.token);
    let d = channel_check::check_deposit_authorization(&domain, config, id, deposit)
        .map_err(|r| no(r.reason, r.message).payer(config.payer))?;
    Ok(DepositAuth {
        amount: d.amount,
        valid_after: d.valid_after,
        valid_before: d.valid_before,
        key: (ctx.chain_id, t.token, config.payer, d.nonce),
    })
}

/// A deposit against the ledger: its window, its authorization unused, the voucher
/// within the balance after it and above what is claimed.
pub(super) fn check_deposit_ledger(
    chan: &Chan,
    id: B256,
    payer: Address,
    voucher: &SignedVoucher,
    d: &DepositAuth,
    used: bool,
    now: u64,
) -> Result<(), No> {
    if d.valid_before < U256::from_u64(now.saturating_add(MIN_VALIDITY_LEFT)) {
        return Err(no(
            reasons::VALID_BEFORE_EXPIRED,
            format!(
                "the authorization expired or is about to: validBefore {} < now + {MIN_VALIDITY_LEFT} ({now})",
                d.valid_before
            ),
        )
        .payer(payer));
    }
    if d.valid_after > U256::from_u64(now) {
        return Err(no(
            reasons::VALID_AFTER_IN_FUTURE,
            format!("the authorization is valid only after {}", d.valid_after),
        )
        .payer(payer));
    }
    let refuse =
        |reason: &str, message: String| no(reason, message).payer(payer).state(chan.state(id));
    if used {
        return Err(refuse(
            reasons::DEPOSIT_SIMULATION_FAILED,
            "the deposit would revert: its authorization is already used".into(),
        ));
    }
    let Some(after) = chan.balance.checked_add(d.amount) else {
        return Err(refuse(
            reasons::DEPOSIT_SIMULATION_FAILED,
            "the deposit would revert: the balance would overflow uint128".into(),
        ));
    };
    let max = voucher.max_claimable_amount;
    if max > after {
        return Err(refuse(
            reasons::CUMULATIVE_EXCEEDS_BALANCE,
            format!(
                "maxClaimableAmount {max} exceeds the balance after the deposit ({} + {})",
                chan.balance, d.amount
            ),
        ));
    }
    if max <= chan.total_claimed {
        return Err(refuse(
            reasons::CUMULATIVE_BELOW_CLAIMED,
            format!(
                "maxClaimableAmount {max} is not above the claimed {}",
                chan.total_claimed
            ),
        ));
    }
    Ok(())
}

/// A voucher (or a refund's voucher) against the ledger: the channel funded, the
/// maximum within the balance and above what is claimed (a refund's: at least).
pub(super) fn check_voucher_ledger(
    chan: &Chan,
    id: B256,
    payer: Address,
    voucher: &SignedVoucher,
    refund: bool,
) -> Result<(), No> {
    channel_check::check_voucher_funds(
        &id,
        chan.balance,
        chan.total_claimed,
        voucher.max_claimable_amount,
        refund,
    )
    .map_err(|r| no(r.reason, r.message).payer(payer).state(chan.state(id)))
}

/// Claims and refunds without a signature are signed by the delegated authorizer: only
/// when the channel names this facilitator's.
pub(super) fn authorize(named: Address) -> Result<(), No> {
    if named == EMBEDDED_RECEIVER_AUTHORIZER {
        return Ok(());
    }
    Err(no(
        reasons::AUTHORIZER_ADDRESS_MISMATCH,
        format!(
            "the channel's receiverAuthorizer is {named}; this facilitator signs as \
             {EMBEDDED_RECEIVER_AUTHORIZER}: send the authorizer's signature"
        ),
    ))
}

/// Whether `sig` over `digest` recovers to `who`.
pub(super) fn signed_by(digest: &[u8; 32], sig: &Bytes, who: Address) -> bool {
    recover_bytes(digest, sig).is_ok_and(|a| a == who)
}

/// Runs claim rows as the contract does (every voucher signature checked, a row at or
/// below the channel's total skipped, one above the balance reverting the batch), on a
/// copy: the channels touched after the batch and the rows that claimed.
pub(super) fn run_claims(
    books: &Books,
    domain: &ChannelDomain,
    claims: &[VoucherClaim],
) -> Result<(HashMap<B256, Chan>, Vec<Claimed>), String> {
    let mut touched: HashMap<B256, Chan> = HashMap::new();
    let mut rows = Vec::new();
    for (i, c) in claims.iter().enumerate() {
        let config = &c.voucher.channel;
        let id = domain.channel_id(config);
        let max = c.voucher.max_claimable_amount;
        if config.payer_authorizer == ZERO {
            return Err(format!(
                "claim {i}: a zero payerAuthorizer (EIP-1271) cannot be checked here"
            ));
        }
        let v = SignedVoucher {
            channel_id: id,
            max_claimable_amount: max,
            signature: c.signature.clone(),
        };
        if !voucher_signer(domain, &v).is_ok_and(|a| a == config.payer_authorizer) {
            return Err(format!(
                "claim {i}: the voucher is not signed by payerAuthorizer {}",
                config.payer_authorizer
            ));
        }
        if c.total_claimed > max {
            return Err(format!(
                "claim {i}: totalClaimed {} exceeds maxClaimableAmount {max}",
                c.total_claimed
            ));
        }
        let chan = touched.entry(id).or_insert_with(|| books.chan(&id));
        if c.total_claimed <= chan.total_claimed {
            continue;
        }
        if c.total_claimed > chan.balance {
            return Err(format!(
                "claim {i}: totalClaimed {} exceeds the balance {}",
                c.total_claimed, chan.balance
            ));
        }
        rows.push(Claimed {
            id,
            receiver: config.receiver,
            token: config.token,
            amount: c.total_claimed - chan.total_claimed,
            total: c.total_claimed,
        });
        chan.total_claimed = c.total_claimed;
    }
    Ok((touched, rows))
}

/// Adopts a run batch into the books: the channels and the receivers' claimed totals.
pub(super) fn commit_claims(
    books: &mut Books,
    chain: u64,
    touched: HashMap<B256, Chan>,
    rows: &[Claimed],
) {
    books.channels.extend(touched);
    for r in rows {
        let e = books
            .receivers
            .entry((chain, r.receiver, r.token))
            .or_default();
        e.0 = e.0.saturating_add(r.amount);
    }
}
