//! Money leaving a `batch-settlement` channel: the payer's cooperative refund (a
//! `refund` payload sent to the renew URL, as the official client does), and the
//! channel manager that claims what was charged (periodically, past a threshold, and
//! always while a withdrawal is pending, before it can finalize) and sweeps claimed
//! funds to the receiver.
//!
//! Everything goes through the standard facilitator API (`/verify` reads a channel's
//! state from the chain, `/settle` executes `claim`, `settle` and `refund`), so a
//! remote official facilitator works as well as ours; the facilitator signs as the
//! delegated `receiverAuthorizer`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use x402_payer::channel::{claim_row, sign_claim_batch, sign_refund};
use x402_session::channel::{ChannelRecord, Judgement};
use x402_types::batch::{BatchPayload, Bytes, ChannelState, VoucherClaim, reasons};
use x402_types::{
    Amount, FacilitatorRequest, PathVersion, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
    PreservedRequirement, Requirement, SchemePayload, SettleResponse,
};

use crate::channels::{ChannelTerms, batch_of, check_offline, invalid, parse_record, state_in};
use crate::error::ApiError;
use crate::facilitator::Facilitator;
use crate::payments::{Sold, store_down};
use crate::state::AppState;
use crate::store::Commit;

/// How long a refund holds its channel busy (vouchers wait) at most.
const REFUND_HOLD_SECS: u64 = 120;

/// A `batch-settlement` payload for the facilitator, under the stream's requirement.
fn request(
    accepted: &PreservedRequirement,
    ours: &Requirement,
    b: &BatchPayload,
) -> FacilitatorRequest {
    FacilitatorRequest {
        payment_payload: PaymentPayload::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource: None,
            accepted: accepted.clone(),
            payload: SchemePayload::Other(b.to_map()),
            extensions: None,
        }),
        payment_requirements: PaymentRequirements::V2(ours.to_v2()),
    }
}

fn refusal(
    e: &AppState,
    v: PathVersion,
    s: &Sold<'_>,
    reason: &str,
    m: impl std::fmt::Display,
) -> ApiError {
    e.refusal(v, s, invalid(reason, m))
}

impl AppState {
    /// Writes a channel record by compare-and-set; `Ok(false)` on a conflict.
    pub(crate) async fn put_channel(
        &self,
        version: u64,
        rec: &ChannelRecord,
    ) -> Result<bool, ApiError> {
        let json = serde_json::to_string(rec).map_err(|_| store_down())?;
        match self
            .store
            .commit_channel(&rec.id.to_string(), version, &json)
            .await
        {
            Ok(Commit::Done) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => {
                self.metrics.store_failed("commit_channel", &e);
                Err(store_down())
            }
        }
    }

    pub(crate) async fn get_channel(
        &self,
        id: &str,
    ) -> Result<(u64, Option<ChannelRecord>), ApiError> {
        let (version, json) = self.store.load_channel(id).await.map_err(|e| {
            self.metrics.store_failed("load_channel", &e);
            store_down()
        })?;
        let rec = parse_record(json).map_err(|m| {
            tracing::error!(message = %m, "channel record");
            store_down()
        })?;
        Ok((version, rec))
    }

    /// A cooperative refund: claims what was charged and returns the rest of the
    /// deposit (or `amount` of it) to the payer in one transaction. Answers the body
    /// and the `PAYMENT-RESPONSE` value.
    pub(crate) async fn channel_refund(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        payload: &PaymentPayload,
    ) -> Result<(Value, String), ApiError> {
        let (Some(t), Some(ours)) = (e.channel.as_ref(), e.channel_requirement()) else {
            return Err(refusal(
                self,
                v,
                e,
                "unsupported_scheme",
                "this stream is not sold over batch-settlement",
            ));
        };
        let b = batch_of(payload).map_err(|r| self.refusal(v, e, r))?;
        check_offline(t, &ours, payload, &b).map_err(|r| self.refusal(v, e, r))?;
        let (
            PaymentPayload::V2(p2),
            BatchPayload::Refund {
                channel_config,
                voucher,
                amount,
                ..
            },
        ) = (payload, &b)
        else {
            return Err(refusal(self, v, e, "invalid_payload", "not a refund"));
        };
        let id = voucher.channel_id.to_string();
        // Take the channel: no voucher lands between the refund's claim and its payout.
        let (version, rec) = loop {
            let (version, rec) = self.get_channel(&id).await?;
            let mut rec = match rec {
                Some(r) => r,
                None => {
                    let st = crate::channels::read_chain(
                        self.facilitator.as_ref(),
                        &request(&p2.accepted, &ours, &b),
                    )
                    .await
                    .map_err(|_| {
                        refusal(
                            self,
                            v,
                            e,
                            reasons::MISSING_CHANNEL,
                            "the channel could not be read from the chain",
                        )
                    })?;
                    let mut r = ChannelRecord::new(channel_config.clone(), voucher.channel_id);
                    r.sync(&st);
                    r
                }
            };
            let now = self.unix_now();
            match rec.judge_refund(voucher, now) {
                Judgement::Accept { .. } => {}
                Judgement::Mismatch => return Err(self.corrective(v, e, &ours, &rec)),
                Judgement::Refuse { reason, message } => {
                    return Err(refusal(self, v, e, reason, message));
                }
                Judgement::Repeat => {}
            }
            rec.busy_until = now + REFUND_HOLD_SECS;
            // Whatever the refund's outcome, the next voucher re-reads the chain.
            rec.synced_at = 0;
            if self.put_channel(version, &rec).await? {
                break (version + 1, rec);
            }
        };
        let left = rec.balance.saturating_sub(rec.claimable());
        let refund = amount.unwrap_or(left).min(left);
        let outcome = if refund == 0 {
            Err(refusal(
                self,
                v,
                e,
                reasons::REFUND_NO_BALANCE,
                "nothing is left to refund",
            ))
        } else {
            let held = Held {
                accepted: &p2.accepted,
                ours: &ours,
                terms: t,
                voucher,
                claim_to: rec.claimable(),
                refund,
            };
            execute_refund(self, &rec, &held)
                .await
                .map_err(|fail| match fail {
                    RefundFail::Pending => crate::payments::pending(2),
                    RefundFail::Refused(reason) => refusal(
                        self,
                        v,
                        e,
                        reason.as_deref().unwrap_or("refund_failed"),
                        "the refund was not executed",
                    ),
                    RefundFail::Unreachable(err) => ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        x402_types::ErrorCode::FacilitatorUnavailable,
                        format!("the facilitator could not refund: {err}; send the refund again"),
                    ),
                })
        };
        let rec = release(self, &id, version, rec, outcome.as_ref().ok()).await?;
        let s = outcome?;
        let refunded = s
            .amount
            .map_or_else(|| refund.to_string(), |a| a.to_string());
        let answer = SettleResponse {
            success: true,
            error_reason: None,
            payer: Some(channel_config.payer.to_string()),
            transaction: s.transaction.clone(),
            network: ours.network.caip2(),
            amount: s.amount.or_else(|| Some(Amount::from(0u64))),
            extra: Some(json!({ "channelState": rec.state() })),
        };
        Ok((
            json!({ "message": "refunded", "channelId": id, "amount": refunded, "transaction": s.transaction }),
            x402_types::x402::encode_header(&answer),
        ))
    }
}

/// The channel manager: every `interval`, reads each channel with unclaimed charges
/// from the chain and claims when a withdrawal is pending or the exposure reached
/// `threshold`; then sweeps what was claimed to the receiver.
pub(crate) async fn manage(
    state: Arc<AppState>,
    interval: Duration,
    threshold: u128,
    idle_refund_secs: u64,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids = match state.store.channels().await {
            Ok(ids) => ids,
            Err(e) => {
                state.metrics.store_failed("channels", &e);
                continue;
            }
        };
        for id in &ids {
            if let Err(e) = claim_if_due(&state, id, threshold).await {
                tracing::warn!(channel = %id, error = %e, "channel manager");
            }
            if let Err(e) = refund_if_idle(&state, id, idle_refund_secs).await {
                tracing::warn!(channel = %id, error = %e, "channel manager: idle refund");
            }
        }
        let (mut open, mut unclaimed) = (0i64, 0u128);
        for id in &ids {
            if let Ok((_, Some(r))) = state.get_channel(id).await {
                open += i64::from(r.balance > r.total_claimed);
                unclaimed = unclaimed.saturating_add(r.unclaimed());
            }
        }
        state.metrics.channels_open.set(open);
        state
            .metrics
            .channel_unclaimed
            .set(i64::try_from(unclaimed).unwrap_or(i64::MAX));
    }
}

/// The stream terms a channel was bought under (by receiver, token and authorizer).
fn terms_for(state: &AppState, rec: &ChannelRecord) -> Option<Bought> {
    state.streams.values().find_map(|e| {
        let r = e.channel_requirement()?;
        let t = e.channel.clone()?;
        (r.pay_to
            .eq_ignore_ascii_case(&rec.config.receiver.to_string())
            && r.asset.eq_ignore_ascii_case(&rec.config.token.to_string())
            && t.receiver_authorizer == rec.config.receiver_authorizer)
            .then(|| Bought {
                accepted: PreservedRequirement::new(r.to_v2()),
                ours: r,
                terms: t,
            })
    })
}

/// What a channel's money moves under: the stream's requirement and channel terms.
struct Bought {
    accepted: PreservedRequirement,
    ours: Requirement,
    terms: ChannelTerms,
}

/// With the server's own authorizer key, the claim batch's signature (none: the
/// facilitator signs as the channel's authorizer).
fn claim_signature(t: &ChannelTerms, claims: &[VoucherClaim]) -> Result<Option<Bytes>, String> {
    match &t.own_authorizer {
        Some(k) if !claims.is_empty() => sign_claim_batch(k.as_ref(), &t.domain, claims)
            .map(Some)
            .map_err(|e| format!("cannot sign the claim: {e}")),
        _ => Ok(None),
    }
}

/// Returns the unused deposit of a channel idle for `idle_secs`: one refund that claims
/// what was charged first (with the last voucher held), then a sweep. The channel is
/// held busy meanwhile, so no voucher lands between the claim and the payout.
pub(crate) async fn refund_if_idle(
    state: &AppState,
    id: &str,
    idle_secs: u64,
) -> Result<(), String> {
    let now = state.unix_now();
    let (version, Some(mut rec)) = state.get_channel(id).await.map_err(|e| e.message)? else {
        return Ok(());
    };
    if !rec.refund_due(now, idle_secs) {
        return Ok(());
    }
    let Some(b) = terms_for(state, &rec) else {
        return Ok(());
    };
    rec.busy_until = now + REFUND_HOLD_SECS;
    if !state
        .put_channel(version, &rec)
        .await
        .map_err(|e| e.message)?
    {
        return Ok(()); // changed meanwhile: the next round decides again
    }
    let voucher = x402_types::batch::SignedVoucher {
        channel_id: rec.id,
        max_claimable_amount: rec.signed_max,
        signature: rec.signature.clone(),
    };
    let refund = rec.balance.saturating_sub(rec.claimable());
    let held = Held {
        accepted: &b.accepted,
        ours: &b.ours,
        terms: &b.terms,
        voucher: &voucher,
        claim_to: rec.claimable(),
        refund,
    };
    let outcome = execute_refund(state, &rec, &held).await;
    if let Ok(s) = &outcome {
        tracing::info!(channel = %id, transaction = %s.transaction, refunded = %refund, "refunded an idle channel");
    }
    release(state, id, version + 1, rec, outcome.as_ref().ok())
        .await
        .map_err(|e| e.message)?;
    outcome.map(|_| ()).map_err(|f| format!("{f:?}"))
}

/// A refund of a channel held busy: what to claim first and what to return.
struct Held<'a> {
    accepted: &'a PreservedRequirement,
    ours: &'a Requirement,
    terms: &'a ChannelTerms,
    /// The voucher the claim uses (the refund's own, or the last one held).
    voucher: &'a x402_types::batch::SignedVoucher,
    /// Claim up to this total in the same transaction (nothing if already claimed).
    claim_to: u128,
    refund: u128,
}

/// Why a refund was not executed.
#[derive(Debug)]
enum RefundFail {
    /// Sent, its receipt not yet seen: send it again.
    Pending,
    /// Not executed, with the facilitator's reason.
    Refused(Option<String>),
    /// The facilitator could not be asked.
    Unreachable(String),
}

/// Executes a refund of a channel this server holds busy: one transaction that claims
/// what was charged (when more than what is claimed) and returns `refund`, then a
/// sweep of the claim to the receiver. The cooperative refund and the manager's idle
/// refund both run this.
async fn execute_refund(
    state: &AppState,
    rec: &ChannelRecord,
    h: &Held<'_>,
) -> Result<SettleResponse, RefundFail> {
    let claims = if h.claim_to > rec.total_claimed {
        vec![claim_row(&rec.config, h.voucher, h.claim_to)]
    } else {
        Vec::new()
    };
    let claimed = !claims.is_empty();
    // With our own authorizer key we sign both; else the facilitator does.
    let claim_authorizer_signature =
        claim_signature(h.terms, &claims).map_err(RefundFail::Unreachable)?;
    let refund_authorizer_signature = match &h.terms.own_authorizer {
        Some(k) => Some(
            sign_refund(
                k.as_ref(),
                &h.terms.domain,
                &rec.id,
                rec.refund_nonce,
                h.refund,
            )
            .map_err(|e| RefundFail::Unreachable(format!("cannot sign the refund: {e}")))?,
        ),
        None => None,
    };
    let fb = BatchPayload::Refund {
        channel_config: rec.config.clone(),
        voucher: h.voucher.clone(),
        amount: Some(h.refund),
        refund_nonce: Some(rec.refund_nonce),
        claims: Some(claims),
        refund_authorizer_signature,
        claim_authorizer_signature,
    };
    let started = tokio::time::Instant::now();
    match state
        .facilitator
        .settle(&request(h.accepted, h.ours, &fb))
        .await
    {
        Ok(s) if s.success => {
            if claimed {
                state.metrics.channel_claimed(
                    h.claim_to.saturating_sub(rec.total_claimed),
                    started.elapsed(),
                );
                let sweep = BatchPayload::Settle {
                    receiver: rec.config.receiver,
                    token: rec.config.token,
                };
                let req = request(h.accepted, h.ours, &sweep);
                match settle(state.facilitator.as_ref(), &req).await {
                    Ok(x) => {
                        tracing::info!(transaction = %x.transaction, "settled a refund's claim to the receiver")
                    }
                    Err(e) => tracing::warn!(error = %e, "sweep after a refund failed"),
                }
            }
            Ok(s)
        }
        Ok(s) if s.is_pending() => Err(RefundFail::Pending),
        Ok(s) => Err(RefundFail::Refused(s.error_reason)),
        Err(e) => Err(RefundFail::Unreachable(e.to_string())),
    }
}

/// Releases a channel held busy (at `version`), with what the chain says after the
/// refund (`outcome`), by compare-and-set.
async fn release(
    state: &AppState,
    id: &str,
    mut version: u64,
    mut rec: ChannelRecord,
    outcome: Option<&SettleResponse>,
) -> Result<ChannelRecord, ApiError> {
    loop {
        if let Some(st) = outcome.and_then(|s| state_in(s.extra.as_ref())) {
            rec.sync(&st);
        }
        rec.busy_until = 0;
        if state.put_channel(version, &rec).await? {
            return Ok(rec);
        }
        let (v2, r2) = state.get_channel(id).await?;
        version = v2;
        rec = r2.unwrap_or(rec);
    }
}

/// Claims one channel when due; sweeps after a claim.
pub(crate) async fn claim_if_due(
    state: &AppState,
    id: &str,
    threshold: u128,
) -> Result<(), String> {
    let (_, Some(rec)) = state.get_channel(id).await.map_err(|e| e.message)? else {
        return Ok(());
    };
    if rec.unclaimed() == 0 {
        return Ok(());
    }
    let Some(Bought {
        accepted,
        ours,
        terms,
    }) = terms_for(state, &rec)
    else {
        return Err(
            "no stream sells this channel's receiver, token and authorizer any more".into(),
        );
    };
    let held = x402_types::batch::SignedVoucher {
        channel_id: rec.id,
        max_claimable_amount: rec.signed_max,
        signature: rec.signature.clone(),
    };
    // What the chain says now (a pending withdrawal, claims made elsewhere).
    let probe = BatchPayload::Voucher {
        channel_config: rec.config.clone(),
        voucher: held.clone(),
    };
    // A refusal of the probe still says what the chain holds (a voucher already
    // claimed in full is refused, with the channel's state).
    let chain = match state
        .facilitator
        .verify(&request(&accepted, &ours, &probe))
        .await
    {
        Ok(v) => state_in(v.extra.as_ref()),
        Err(_) => None,
    };
    // An unreadable chain is treated as a pending withdrawal: claiming costs gas,
    // missing a withdrawal costs the charge.
    let pending_withdrawal = chain.as_ref().is_none_or(|c| c.withdraw_requested_at != 0);
    // Decide on what the chain says: a claim whose answer was lost or pending may
    // have landed, and is not sent again.
    let mut due = rec.clone();
    if let Some(c) = &chain {
        due.sync(c);
    }
    if pending_withdrawal {
        due.withdraw_requested_at = due.withdraw_requested_at.max(1);
    }
    if !due.claim_due(threshold) {
        sync(state, id, chain.as_ref()).await;
        return Ok(());
    }
    let claims = vec![claim_row(&rec.config, &held, rec.claimable())];
    let claim_authorizer_signature = claim_signature(&terms, &claims)?;
    let claim = BatchPayload::Claim {
        claims,
        claim_authorizer_signature,
    };
    let started = tokio::time::Instant::now();
    let s = settle(
        state.facilitator.as_ref(),
        &request(&accepted, &ours, &claim),
    )
    .await?;
    tracing::info!(channel = %id, transaction = %s.transaction, withdrawal = pending_withdrawal, "claimed");
    state.metrics.channel_claimed(
        rec.claimable().saturating_sub(rec.total_claimed),
        started.elapsed(),
    );
    let after = ChannelState {
        total_claimed: rec.claimable(),
        ..chain.unwrap_or_else(|| rec.state())
    };
    sync(state, id, Some(&after)).await;
    let sweep = BatchPayload::Settle {
        receiver: rec.config.receiver,
        token: rec.config.token,
    };
    let s = settle(
        state.facilitator.as_ref(),
        &request(&accepted, &ours, &sweep),
    )
    .await?;
    tracing::info!(transaction = %s.transaction, amount = ?s.amount, "settled claimed funds to the receiver");
    Ok(())
}

async fn settle(f: &dyn Facilitator, req: &FacilitatorRequest) -> Result<SettleResponse, String> {
    match f.settle(req).await {
        Ok(s) if s.success => Ok(s),
        Ok(s) => Err(format!(
            "{}: {}",
            s.error_reason.unwrap_or_default(),
            s.transaction
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Adopts the chain's view into the record (compare-and-set, a few tries).
async fn sync(state: &AppState, id: &str, chain: Option<&ChannelState>) {
    let Some(chain) = chain else { return };
    for _ in 0..4 {
        let Ok((version, Some(mut rec))) = state.get_channel(id).await else {
            return;
        };
        // A refund under way moves the balance: its own release syncs the record.
        if rec.busy_until > state.unix_now() {
            return;
        }
        rec.sync(chain);
        if let Ok(true) = state.put_channel(version, &rec).await {
            return;
        }
    }
}
