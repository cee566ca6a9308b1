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
use x402_payer::channel::claim_row;
use x402_session::channel::{ChannelRecord, Judgement};
use x402_types::batch::{BatchPayload, ChannelState, reasons};
use x402_types::{
    Amount, FacilitatorRequest, PathVersion, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
    PreservedRequirement, Requirement, SchemePayload, SettleResponse,
};

use crate::channels::{batch_of, check_offline, invalid, parse_record, state_in};
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
        let (mut version, mut rec) = loop {
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
        let left = rec.balance.saturating_sub(rec.charged);
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
            let claims = if rec.charged > rec.total_claimed {
                vec![claim_row(channel_config, voucher, rec.charged)]
            } else {
                Vec::new()
            };
            let fb = BatchPayload::Refund {
                channel_config: channel_config.clone(),
                voucher: voucher.clone(),
                amount: Some(refund),
                refund_nonce: Some(rec.refund_nonce),
                claims: Some(claims),
                refund_authorizer_signature: None,
                claim_authorizer_signature: None,
            };
            let claimed = !claims_empty(&fb);
            let claim_amount = rec.charged.saturating_sub(rec.total_claimed);
            let started = tokio::time::Instant::now();
            match self
                .facilitator
                .settle(&request(&p2.accepted, &ours, &fb))
                .await
            {
                Ok(s) if s.success => {
                    // The refund's claim is swept to the receiver at once.
                    if claimed {
                        self.metrics
                            .channel_claimed(claim_amount, started.elapsed());
                        let sweep = BatchPayload::Settle {
                            receiver: channel_config.receiver,
                            token: channel_config.token,
                        };
                        let req = request(&p2.accepted, &ours, &sweep);
                        match settle(self.facilitator.as_ref(), &req).await {
                            Ok(x) => {
                                tracing::info!(transaction = %x.transaction, "settled a refund's claim to the receiver")
                            }
                            Err(e) => tracing::warn!(error = %e, "sweep after a refund failed"),
                        }
                    }
                    Ok(s)
                }
                Ok(s) if s.is_pending() => Err(crate::payments::pending(2)),
                Ok(s) => Err(refusal(
                    self,
                    v,
                    e,
                    s.error_reason.as_deref().unwrap_or("refund_failed"),
                    "the refund was not executed",
                )),
                Err(err) => Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    x402_types::ErrorCode::FacilitatorUnavailable,
                    format!("the facilitator could not refund: {err}; send the refund again"),
                )),
            }
        };
        // Release the channel, with what the chain now says.
        loop {
            if let Ok(s) = &outcome
                && let Some(st) = state_in(s.extra.as_ref())
            {
                rec.sync(&st);
            }
            rec.busy_until = 0;
            if self.put_channel(version, &rec).await? {
                break;
            }
            let (v2, r2) = self.get_channel(&id).await?;
            version = v2;
            rec = r2.unwrap_or(rec);
        }
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

/// The stream terms a channel was bought under (by receiver and token).
fn terms_for(state: &AppState, rec: &ChannelRecord) -> Option<(PreservedRequirement, Requirement)> {
    state.streams.values().find_map(|e| {
        let r = e.channel_requirement()?;
        (r.pay_to
            .eq_ignore_ascii_case(&rec.config.receiver.to_string())
            && r.asset.eq_ignore_ascii_case(&rec.config.token.to_string()))
        .then(|| (PreservedRequirement::new(r.to_v2()), r))
    })
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
    let Some((accepted, ours)) = terms_for(state, &rec) else {
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
    let mut version = version + 1;
    let held = x402_types::batch::SignedVoucher {
        channel_id: rec.id,
        max_claimable_amount: rec.signed_max,
        signature: rec.signature.clone(),
    };
    let claims = if rec.charged > rec.total_claimed {
        vec![claim_row(
            &rec.config,
            &held,
            rec.charged.min(rec.signed_max),
        )]
    } else {
        Vec::new()
    };
    let claimed = !claims.is_empty();
    let refund = rec.balance.saturating_sub(rec.charged);
    let fb = BatchPayload::Refund {
        channel_config: rec.config.clone(),
        voucher: held,
        amount: Some(refund),
        refund_nonce: Some(rec.refund_nonce),
        claims: Some(claims),
        refund_authorizer_signature: None,
        claim_authorizer_signature: None,
    };
    let outcome = settle(state.facilitator.as_ref(), &request(&accepted, &ours, &fb)).await;
    if let Ok(s) = &outcome {
        tracing::info!(channel = %id, transaction = %s.transaction, refunded = %refund, "refunded an idle channel");
        if claimed {
            let sweep = BatchPayload::Settle {
                receiver: rec.config.receiver,
                token: rec.config.token,
            };
            let _ = settle(
                state.facilitator.as_ref(),
                &request(&accepted, &ours, &sweep),
            )
            .await;
        }
    }
    // Release the channel with what the chain now says.
    loop {
        if let Ok(s) = &outcome
            && let Some(st) = state_in(s.extra.as_ref())
        {
            rec.sync(&st);
        }
        rec.busy_until = 0;
        if state
            .put_channel(version, &rec)
            .await
            .map_err(|e| e.message)?
        {
            break;
        }
        let (v2, r2) = state.get_channel(id).await.map_err(|e| e.message)?;
        version = v2;
        rec = r2.unwrap_or(rec);
    }
    outcome.map(|_| ())
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
    let Some((accepted, ours)) = terms_for(state, &rec) else {
        return Err("no stream sells this channel's receiver and token any more".into());
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
    let chain = crate::channels::read_chain(
        state.facilitator.as_ref(),
        &request(&accepted, &ours, &probe),
    )
    .await
    .ok();
    // An unreadable chain is treated as a pending withdrawal: claiming costs gas,
    // missing a withdrawal costs the charge.
    let pending_withdrawal = chain.as_ref().is_none_or(|c| c.withdraw_requested_at != 0);
    let mut due = rec.clone();
    if pending_withdrawal {
        due.withdraw_requested_at = due.withdraw_requested_at.max(1);
    }
    if !due.claim_due(threshold) {
        sync(state, id, chain.as_ref()).await;
        return Ok(());
    }
    let claim = BatchPayload::Claim {
        claims: vec![claim_row(
            &rec.config,
            &held,
            rec.charged.min(rec.signed_max),
        )],
        claim_authorizer_signature: None,
    };
    let started = tokio::time::Instant::now();
    let s = settle(
        state.facilitator.as_ref(),
        &request(&accepted, &ours, &claim),
    )
    .await?;
    tracing::info!(channel = %id, transaction = %s.transaction, withdrawal = pending_withdrawal, "claimed");
    state.metrics.channel_claimed(
        rec.charged
            .min(rec.signed_max)
            .saturating_sub(rec.total_claimed),
        started.elapsed(),
    );
    let after = ChannelState {
        total_claimed: rec.charged.min(rec.signed_max),
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

fn claims_empty(b: &BatchPayload) -> bool {
    match b {
        BatchPayload::Refund { claims, .. } => claims.as_ref().is_none_or(Vec::is_empty),
        _ => true,
    }
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
