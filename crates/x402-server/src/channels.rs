//! x402 `batch-settlement` (payment channels) on the server: the requirement a
//! stream offers beside `exact`, a channel payment's checks and corrective 402, and
//! its "settlement": a deposit executed through the facilitator, then the voucher
//! accepted into the channel's record by compare-and-set.
//!
//! A channel payment rides the same payment pipeline as `exact` (records, claims,
//! idempotent retries, orphan takeover, one credit per payload): only the settlement
//! step differs ([`settle_channel`]). Its key is the voucher (channel, maximum,
//! signature) and its claim `(payer, keccak(channelId, maximum))`, so one voucher pays
//! one slice once. The rules of the channel record live in
//! [`x402_session::channel`].

use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

use x402_payer::channel::ChannelDomain;
use x402_payer::channel_check::{ReceiverTerms, check_channel};
use x402_payer::{DigestSigner, LocalSigner};
use x402_session::channel::{ChannelRecord, Judgement, mirror_ttl};
use x402_session::{PaymentIn, Quote, Refusal, SettleJob, SettleOutcome};
use x402_types::batch::{
    BATCH_SETTLEMENT, BatchExtra, BatchPayload, BatchReceiptExtra, ChannelState, parse_payload,
    reasons,
};
use x402_types::{
    Address, ErrorCode, FacilitatorRequest, FixedBytes, PathVersion, PaymentPayload,
    PaymentRequiredV2, PaymentRequirements, PreservedRequirement, Requirement, SchemePayload,
    SettleResponse, keccak256,
};

use crate::config::{StreamConfig, Terms};
use crate::error::{ApiError, ConfigError};
use crate::facilitator::Facilitator;
use crate::payments::{Sold, store_down};
use crate::state::{AppState, StreamEntry};
use crate::store::Commit;

/// A stream's resolved `batch-settlement` terms.
#[derive(Debug, Clone)]
pub struct ChannelTerms {
    /// Who signs claims and refunds for the receiver (the facilitator's, or this
    /// server's own key).
    pub receiver_authorizer: Address,
    /// This server's own authorizer key, when it signs claims and refunds itself.
    pub own_authorizer: Option<Arc<LocalSigner>>,
    /// The channel's withdrawal delay.
    pub withdraw_delay: u64,
    /// The `minDeposit` hint (atomic units).
    pub min_deposit: u128,
    /// The token's EIP-712 domain name and version.
    pub eip712: (String, String),
    /// The settlement contract's domain on the stream's chain.
    pub domain: ChannelDomain,
    /// Metered sessions are billed per started granule of this many seconds.
    pub granularity_secs: u64,
}

/// Resolves a stream's channel terms: the receiver authorizer is this server's own
/// key (`own`), or else the facilitator's for the stream's network (its `/supported`).
pub(crate) async fn resolve(
    f: &dyn Facilitator,
    cfg: &StreamConfig,
    terms: &Terms,
    own: Option<&Arc<LocalSigner>>,
) -> Result<Option<ChannelTerms>, ConfigError> {
    let Some(offer) = &cfg.channel else {
        return Ok(None);
    };
    let bad = |m: String| ConfigError::Invalid(format!("stream {}: channel: {m}", cfg.id));
    let chain_id = terms
        .network
        .chain_id()
        .ok_or_else(|| bad(format!("{} is not an EVM network", terms.network)))?;
    let eip712 = terms.eip712.clone().ok_or_else(|| {
        bad("the asset's EIP-712 domain is unknown (a deposit signs under it)".into())
    })?;
    let supported = f.supported().await.map_err(|e| {
        bad(format!(
            "the facilitator's /supported could not be read: {e}"
        ))
    })?;
    let caip2 = terms.network.caip2();
    let kinds = || {
        supported
            .kinds
            .iter()
            .filter(|k| k.scheme == BATCH_SETTLEMENT && k.network == caip2)
    };
    let theirs = kinds().find_map(|k| {
        k.extra
            .as_ref()?
            .get("receiverAuthorizer")?
            .as_str()?
            .parse()
            .ok()
    });
    let authorizer = match own {
        // Signing ourselves: the facilitator need only execute the scheme.
        Some(k) if kinds().next().is_some() => Some(k.address()),
        Some(_) => None,
        None => theirs,
    }
    .ok_or_else(|| {
        bad(format!(
            "the facilitator does not offer batch-settlement on {caip2}{} \
                 (use the evm facilitator, or remove [streams.channel])",
            if own.is_none() {
                " with a receiverAuthorizer"
            } else {
                ""
            }
        ))
    })?;
    let min_deposit = u128::from(offer.min_deposit_slices)
        .saturating_mul(terms.per_slice.atomic().to_u128().unwrap_or(u128::MAX));
    Ok(Some(ChannelTerms {
        receiver_authorizer: authorizer,
        own_authorizer: own.cloned(),
        withdraw_delay: offer.withdraw_delay,
        min_deposit,
        eip712,
        domain: ChannelDomain::new(chain_id),
        granularity_secs: offer.billing_granularity_secs.max(1),
    }))
}

impl StreamEntry {
    /// The `batch-settlement` requirement (one slice's price is the most a voucher is
    /// ahead), when the stream offers it.
    pub fn channel_requirement(&self) -> Option<Requirement> {
        let t = self.channel.as_ref()?;
        let mut r = self.requirement();
        r.scheme = BATCH_SETTLEMENT.into();
        r.extra = Some(json!({
            "name": t.eip712.0,
            "version": t.eip712.1,
            "receiverAuthorizer": t.receiver_authorizer,
            "withdrawDelay": t.withdraw_delay,
            "minDeposit": t.min_deposit.to_string(),
        }));
        Some(r)
    }
}

/// A channel refusal: `payment_invalid` whose message is `reason: text`, the reason
/// being the scheme's (`invalid_batch_settlement_evm_*`); see [`x402_reason`].
pub(crate) fn invalid(reason: &str, message: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::PaymentInvalid, format!("{reason}: {message}"))
}

/// The scheme's reason of a channel refusal's message (`reason: text`): what the x402
/// `error` field of its `PAYMENT-REQUIRED` carries alone, as stock clients compare it.
pub(crate) fn x402_reason(message: &str) -> Option<&str> {
    let (reason, _) = message.split_once(": ")?;
    (reason.starts_with("invalid_batch_settlement_evm_")
        || reason == "invalid_payload"
        || reason == "unsupported_scheme")
        .then_some(reason)
}

/// The scheme payload of a `batch-settlement` payment.
pub(crate) fn batch_of(p: &PaymentPayload) -> Result<BatchPayload, Refusal> {
    match p.scheme_payload() {
        SchemePayload::Other(map) => parse_payload(map).map_err(|e| invalid("invalid_payload", e)),
        SchemePayload::ExactEvm(_) => Err(invalid(
            "invalid_payload",
            "an exact payload under the batch-settlement scheme",
        )),
    }
}

/// Whether a payment is a `batch-settlement` refund (a cooperative close, not a purchase).
pub(crate) fn is_refund(p: &PaymentPayload) -> bool {
    p.scheme() == BATCH_SETTLEMENT
        && matches!(p.scheme_payload(), SchemePayload::Other(m) if m.get("type").and_then(Value::as_str) == Some("refund"))
}

/// What a facilitator would check without the chain: the accepted requirement is
/// ours, the channel is for our receiver, token, authorizer and delay, its id is the
/// hash of its config, and the voucher is signed by the payer's authorizer.
pub(crate) fn check_offline(
    t: &ChannelTerms,
    ours: &Requirement,
    p: &PaymentPayload,
    b: &BatchPayload,
) -> Result<(), Refusal> {
    let PaymentPayload::V2(p2) = p else {
        return Err(invalid(
            "invalid_payload",
            "batch-settlement is sold on /v2 only",
        ));
    };
    let a = p2.accepted.get();
    let extra =
        BatchExtra::from_extra(a.extra.as_ref()).map_err(|e| invalid("invalid_payload", e))?;
    if a.network != ours.network
        || a.amount != ours.amount
        || !a.asset.eq_ignore_ascii_case(&ours.asset)
        || !a.pay_to.eq_ignore_ascii_case(&ours.pay_to)
        || extra.receiver_authorizer != t.receiver_authorizer
        || extra.withdraw_delay != t.withdraw_delay
    {
        return Err(invalid(
            "invalid_payload",
            "accepted requirement differs from the one offered",
        ));
    }
    let Some((config, voucher)) = b.channel() else {
        return Err(invalid("invalid_payload", "not a deposit or a voucher"));
    };
    let ours_token: Address = ours
        .asset
        .parse()
        .map_err(|e| invalid("invalid_payload", e))?;
    let ours_to: Address = ours
        .pay_to
        .parse()
        .map_err(|e| invalid("invalid_payload", e))?;
    let receiver = ReceiverTerms {
        pay_to: ours_to,
        token: ours_token,
        receiver_authorizer: t.receiver_authorizer,
        withdraw_delay: t.withdraw_delay,
    };
    check_channel(&t.domain, &receiver, config, voucher)
        .map(|_| ())
        .map_err(|r| invalid(r.reason, r.message))
}

pub(crate) fn parse_record(json: Option<String>) -> Result<Option<ChannelRecord>, String> {
    json.map(|j| serde_json::from_str(&j).map_err(|e| format!("unreadable channel record: {e}")))
        .transpose()
}

/// The payment key of a channel payload: its voucher (one voucher pays one slice once).
fn voucher_key(v: &x402_types::batch::SignedVoucher) -> String {
    format!(
        "bs:{}:{}:{}",
        v.channel_id, v.max_claimable_amount, v.signature
    )
}

/// Most payloads remembered as checked (see [`AppState::prechecked`]).
const PRECHECKED_MAX: usize = 10_000;

fn price(r: &Requirement) -> u128 {
    r.amount.atomic().to_u128().unwrap_or(u128::MAX)
}

impl AppState {
    /// A `batch-settlement` payment as the pipeline's [`PaymentIn`], after the offline
    /// checks and the cumulative rule against the channel's record (a disagreement is
    /// answered with the corrective 402 here, before anything is recorded).
    pub(crate) async fn channel_payment(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        quote: &Quote,
        payload: &PaymentPayload,
    ) -> Result<(PaymentIn, Requirement), ApiError> {
        let refuse = |r: Refusal| self.refusal(v, e, r);
        let (Some(t), Some(ours)) = (e.channel.as_ref(), e.channel_requirement()) else {
            return Err(refuse(invalid(
                "unsupported_scheme",
                "this stream is not sold over batch-settlement",
            )));
        };
        let b = batch_of(payload).map_err(refuse)?;
        if matches!(b, BatchPayload::Refund { .. }) {
            return Err(refuse(invalid(
                "invalid_payload",
                "a refund buys no slice: send it to the renew URL (GET or POST) to close the channel",
            )));
        }
        check_offline(t, &ours, payload, &b).map_err(refuse)?;
        let Some((config, voucher)) = b.channel() else {
            return Err(refuse(invalid(
                "invalid_payload",
                "not a deposit or a voucher",
            )));
        };
        let key = voucher_key(voucher);
        let mut word = [0u8; 64];
        word[..32].copy_from_slice(&voucher.channel_id.0);
        word[48..].copy_from_slice(&voucher.max_claimable_amount.to_be_bytes());
        let unix = self.unix_now();
        let valid_before = match &b {
            BatchPayload::Deposit { deposit, .. } => deposit
                .authorization
                .erc3009_authorization
                .as_ref()
                .and_then(|a| a.valid_before.to_u64())
                .unwrap_or(0),
            _ => unix.saturating_add(quote.max_timeout_seconds),
        };
        let payment = PaymentIn {
            scheme: BATCH_SETTLEMENT.into(),
            key: x402_session::PaymentKey::from_stored(key.clone()),
            payer: config.payer,
            nonce: FixedBytes(keccak256(&word)),
            amount: ours.amount,
            valid_before,
            payment_id: payload
                .payment_identifier()
                .map_err(|err| refuse(invalid("invalid_payload", err)))?
                .map(str::to_string),
            account: Some(voucher.channel_id.to_string()),
            request: None,
        };
        // The cumulative rule, against what this server holds (a channel it has never
        // seen is read from the chain when it settles).
        let (_, rec) = self
            .store
            .load_channel(&voucher.channel_id.to_string())
            .await
            .map_err(|err| {
                self.metrics.store_failed("load_channel", &err);
                store_down()
            })?;
        let rec = parse_record(rec).map_err(|m| {
            tracing::error!(message = %m, "channel record");
            store_down()
        })?;
        if let Some(rec) = rec {
            let now = self.unix_now();
            match rec.judge(voucher, price(&ours), now) {
                // A refusal from a stale mirror (or one with a withdrawal pending) is
                // decided in the settlement step, after the chain is read again.
                Judgement::Refuse { .. } if !rec.fresh(now, mirror_ttl(t.withdraw_delay)) => {}
                Judgement::Accept { .. } => {}
                Judgement::Mismatch => return Err(self.corrective(v, e, &ours, &rec)),
                // Only a retry whose record still answers is a repeat; an old voucher
                // sent again long after is told the channel's state.
                Judgement::Repeat => {
                    if !self.recorded(quote, &payment).await? {
                        return Err(self.corrective(v, e, &ours, &rec));
                    }
                }
                Judgement::Refuse { reason, message } => {
                    return Err(refuse(invalid(reason, message)));
                }
            }
        }
        // A new deposit the facilitator refuses (its authorization used, the payer's
        // balance short, ...) is refused before anything is recorded: a recorded refusal
        // would also answer, for minutes, the payer's next payload of the same voucher
        // (the payment's key), a good voucher or a good deposit among them.
        let mut deposit_verified = false;
        if matches!(b, BatchPayload::Deposit { .. }) && !self.recorded(quote, &payment).await? {
            let req = FacilitatorRequest {
                payment_payload: payload.clone(),
                payment_requirements: PaymentRequirements::V2(ours.to_v2()),
            };
            match self.facilitator.verify(&req).await {
                Ok(r) if r.is_valid => deposit_verified = true,
                Ok(r) => {
                    return Err(refuse(invalid(
                        r.invalid_reason.as_deref().unwrap_or("invalid_payload"),
                        r.invalid_message.unwrap_or_default(),
                    )));
                }
                Err(err) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::FacilitatorUnavailable,
                        format!(
                            "the facilitator could not check the deposit: {err}; nothing moved; send it again"
                        ),
                    ));
                }
            }
        }
        self.note_prechecked(key, deposit_verified);
        Ok((payment, ours))
    }

    /// Remembers that this process checked a payload before deciding it.
    fn note_prechecked(&self, key: String, deposit_verified: bool) {
        let mut m = self.prechecked.lock().unwrap_or_else(|p| p.into_inner());
        // Payloads refused after the check (horizon, a rival) never settle here:
        // forgetting them all now and then only costs a second check.
        if m.len() >= PRECHECKED_MAX {
            m.clear();
        }
        m.insert(key, deposit_verified);
    }

    /// Whether `payment` has a record (a retry: its recorded answer stands).
    async fn recorded(&self, quote: &Quote, payment: &PaymentIn) -> Result<bool, ApiError> {
        let loaded = self
            .store
            .load(&quote.id, Some(payment))
            .await
            .map_err(|err| {
                self.metrics.store_failed("load", &err);
                store_down()
            })?;
        Ok(loaded.records.iter().any(|r| r.key == payment.key))
    }

    /// The corrective 402: the server's charged total and the last voucher it holds,
    /// so the client (after checking that voucher's signature) signs `charged + price`.
    pub(crate) fn corrective(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        ours: &Requirement,
        rec: &ChannelRecord,
    ) -> ApiError {
        let reason = reasons::CUMULATIVE_AMOUNT_MISMATCH;
        let mut req = ours.to_v2();
        if let Some(Value::Object(extra)) = req.extra.as_mut() {
            extra.insert("channelState".into(), json!(rec.state()));
            if let Some(vs) = rec.voucher_state() {
                extra.insert("voucherState".into(), json!(vs));
            }
        }
        let mut err = ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::Other(reason.into()),
            format!(
                "{reason}: the server's charged total is {}; sign maxClaimableAmount = {} + {}",
                rec.charged, rec.charged, ours.amount
            ),
        );
        let base: PaymentRequiredV2 = self.payment_required_v2(v, e, reason);
        let pr = PaymentRequiredV2 {
            accepts: vec![PreservedRequirement::new(req.clone())],
            ..base
        };
        err.accepts = Some(vec![serde_json::to_value(req).unwrap_or(Value::Null)]);
        err.x402_version = Some(2);
        err.payment_required = Some(pr.to_header());
        err
    }
}

/// The settlement step of a channel payment: a deposit is executed by the facilitator
/// (idempotent: a deposit already made answers success), a channel never seen is read
/// from the chain, then the voucher is accepted into the record by compare-and-set.
/// A crash after the commit is safe: the retry finds the voucher held (a repeat) and
/// answers settled, so the slice is credited once, by the pipeline's record.
pub(crate) async fn settle_channel(state: &AppState, job: &SettleJob) -> SettleOutcome {
    let Some(req) = &job.request else {
        return SettleOutcome::Unknown {
            reason: "the settlement's payload is missing".into(),
        };
    };
    let ours = req.payment_requirements.requirement();
    let Some(t) = state
        .streams
        .get(&job.stream)
        .and_then(|e| e.channel.clone())
    else {
        return refused(invalid(
            "unsupported_scheme",
            "the stream no longer sells channels",
        ));
    };
    let b = match batch_of(&req.payment_payload) {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    let Some((config, voucher)) = b.channel() else {
        return refused(invalid("invalid_payload", "not a deposit or a voucher"));
    };
    // The first attempt of a payload this process checked before deciding it (the
    // record's payload passed that check: nothing undecided reaches the pipeline) is
    // not checked again; a retry, a takeover or a restart checks: a junk copy never
    // settles.
    let pre = if job.attempt == 0 {
        state
            .prechecked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&voucher_key(voucher))
    } else {
        None
    };
    if pre.is_none()
        && let Err(r) = check_offline(&t, &ours, &req.payment_payload, &b)
    {
        return refused(r);
    }
    let id = voucher.channel_id.to_string();
    let mut chain: Option<ChannelState> = None;
    let mut deposit: Option<SettleResponse> = None;
    if matches!(b, BatchPayload::Deposit { .. }) {
        let verified = pre == Some(true);
        match deposit_once(state.facilitator.as_ref(), req, job.attempt, verified).await {
            Ok((answer, st)) => {
                chain = Some(st);
                deposit = Some(answer);
            }
            Err(outcome) => return outcome,
        }
    }
    for _ in 0..16 {
        let (version, rec) = match state.store.load_channel(&id).await {
            Ok(x) => x,
            Err(e) => {
                state.metrics.store_failed("load_channel", &e);
                return SettleOutcome::Unknown {
                    reason: format!("channel record: {e}"),
                };
            }
        };
        let mut rec = match parse_record(rec) {
            Ok(Some(r)) => r,
            Ok(None) => ChannelRecord::new(config.clone(), voucher.channel_id),
            Err(m) => return SettleOutcome::Unknown { reason: m },
        };
        let now = state.unix_now();
        // A channel never seen, or a mirror gone stale (or with a withdrawal pending),
        // is read from the chain before a new voucher is judged on it.
        if chain.is_none()
            && (version == 0 || !rec.fresh(now, mirror_ttl(t.withdraw_delay)))
            && rec.judge(voucher, price(&ours), now) != Judgement::Repeat
        {
            match read_chain(state.facilitator.as_ref(), req).await {
                Ok(st) => chain = Some(st),
                Err(outcome) => return outcome,
            }
        }
        if let Some(st) = &chain {
            rec.sync(st);
            rec.synced_at = now;
        }
        if version == 0 {
            rec.adopt_client_total(voucher, price(&ours));
        }
        let charge = match rec.judge(voucher, price(&ours), now) {
            Judgement::Accept { charge } => charge,
            // Our own earlier attempt committed it (a takeover or a restart): answer it.
            Judgement::Repeat if job.attempt > 0 => {
                return settled(req, &rec, price(&ours), deposit.as_ref());
            }
            // A first attempt finding its voucher already held is a replay whose record
            // expired: it buys nothing.
            Judgement::Repeat => {
                return refused(invalid(
                    reasons::CUMULATIVE_AMOUNT_MISMATCH,
                    format!(
                        "this voucher was already used; the server's charged total is {}",
                        rec.charged
                    ),
                ));
            }
            Judgement::Mismatch => {
                return refused(invalid(
                    reasons::CUMULATIVE_AMOUNT_MISMATCH,
                    format!(
                        "the server's charged total is {}; send a voucher for {} + {}",
                        rec.charged, rec.charged, ours.amount
                    ),
                ));
            }
            Judgement::Refuse { reason, message } => return refused(invalid(reason, message)),
        };
        rec.accept(voucher, charge);
        rec.updated_at = now;
        let json = match serde_json::to_string(&rec) {
            Ok(j) => j,
            Err(e) => {
                return SettleOutcome::Unknown {
                    reason: e.to_string(),
                };
            }
        };
        match state.store.commit_channel(&id, version, &json).await {
            Ok(Commit::Done) => {
                state.metrics.channel_charged(&job.stream, charge);
                return settled(req, &rec, charge, deposit.as_ref());
            }
            Ok(_) => continue,
            // The answer was lost: the retry finds the voucher held, or commits it.
            Err(e) => {
                state.metrics.store_failed("commit_channel", &e);
                return SettleOutcome::Unknown {
                    reason: format!("channel record: {e}"),
                };
            }
        }
    }
    refused(invalid(
        reasons::CHANNEL_BUSY,
        "the channel kept changing under this request; send it again",
    ))
}

fn refused(r: Refusal) -> SettleOutcome {
    SettleOutcome::Refused {
        code: r.code,
        message: r.message,
    }
}

/// The channel's state in a facilitator answer's `extra` (verify: the state itself;
/// settle: under `channelState`).
pub(crate) fn state_in(extra: Option<&Value>) -> Option<ChannelState> {
    let x = extra?;
    let v = x.get("channelState").unwrap_or(x);
    serde_json::from_value(v.clone()).ok()
}

/// Executes a deposit (first attempt: verify, unless just `verified`, then settle).
async fn deposit_once(
    f: &dyn Facilitator,
    req: &FacilitatorRequest,
    attempt: u32,
    verified: bool,
) -> Result<(SettleResponse, ChannelState), SettleOutcome> {
    if attempt == 0 && !verified {
        match f.verify(req).await {
            Ok(v) if v.is_valid => {}
            Ok(v) => {
                return Err(refused(invalid(
                    v.invalid_reason.as_deref().unwrap_or("invalid"),
                    v.invalid_message.unwrap_or_default(),
                )));
            }
            Err(e) => {
                return Err(SettleOutcome::NotAttempted {
                    reason: e.to_string(),
                });
            }
        }
    }
    match f.settle(req).await {
        Ok(s) if s.success => match state_in(s.extra.as_ref()) {
            Some(st) => Ok((s, st)),
            None => Err(SettleOutcome::Unknown {
                reason: "the deposit settled but the facilitator named no channel state".into(),
            }),
        },
        Ok(s) if s.is_pending() => Err(SettleOutcome::Pending),
        Ok(s) => Err(refused(invalid(
            s.error_reason.as_deref().unwrap_or("deposit_failed"),
            "the deposit was not executed",
        ))),
        // Money may have moved: settle the same deposit again (idempotent).
        Err(e) => Err(SettleOutcome::Unknown {
            reason: e.to_string(),
        }),
    }
}

/// Reads a channel this server has never seen from the chain (the facilitator's verify).
pub(crate) async fn read_chain(
    f: &dyn Facilitator,
    req: &FacilitatorRequest,
) -> Result<ChannelState, SettleOutcome> {
    match f.verify(req).await {
        Ok(v) if v.is_valid => state_in(v.extra.as_ref()).ok_or_else(|| SettleOutcome::Unknown {
            reason: "the facilitator named no channel state".into(),
        }),
        Ok(v) => Err(refused(invalid(
            v.invalid_reason
                .as_deref()
                .unwrap_or(reasons::MISSING_CHANNEL),
            v.invalid_message.unwrap_or_default(),
        ))),
        Err(e) => Err(SettleOutcome::NotAttempted {
            reason: e.to_string(),
        }),
    }
}

/// The settled answer: `PAYMENT-RESPONSE` with `chargedAmount` and `channelState` (a
/// deposit's answer also names its transaction and amount).
fn settled(
    req: &FacilitatorRequest,
    rec: &ChannelRecord,
    charge: u128,
    deposit: Option<&SettleResponse>,
) -> SettleOutcome {
    let extra = BatchReceiptExtra {
        charged_amount: Some(charge),
        channel_state: rec.state(),
    };
    let answer = SettleResponse {
        success: true,
        error_reason: None,
        payer: Some(rec.config.payer.to_string()),
        transaction: deposit.map(|d| d.transaction.clone()).unwrap_or_default(),
        network: req.payment_requirements.requirement().network.caip2(),
        amount: deposit.and_then(|d| d.amount),
        extra: serde_json::to_value(extra).ok(),
    };
    SettleOutcome::Settled {
        header: Some(x402_types::x402::encode_header(&answer)),
        payer: Some(rec.config.payer),
        amount: Some(req.payment_requirements.requirement().amount),
    }
}
