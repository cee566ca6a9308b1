//! What instances sharing a store agree on: a session's paid state and a
//! payload's record, with the rules that change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use x402_types::{Address, Amount, ErrorCode, Nonce};

use super::{Credit, PaymentKey, Refusal};

/// A session's paid state: everything that several server instances sharing
/// one store must agree on. Serializable; the rules that change it are its
/// methods, so a store only compares and swaps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionState {
    /// End of paid time (unix milliseconds); `None` until the first credit.
    #[serde(default)]
    pub paid_until_ms: Option<u64>,
    /// Slices bought so far.
    #[serde(default)]
    pub slices: u64,
    /// Events below this sequence number were not paid for.
    #[serde(default)]
    pub floor_seq: u64,
    /// Payments being settled: payment key -> unix second after which it no
    /// longer counts (its `validBefore` plus skew), so a crashed instance's
    /// settlement cannot block the horizon forever.
    #[serde(default)]
    pub in_flight: BTreeMap<PaymentKey, u64>,
    /// The account (a `batch-settlement` channel) the session's time was bought
    /// from: such a session is metered (paid time runs only while its socket is
    /// open; see [`stop_meter`](Self::stop_meter)). `None`: bought by `exact`.
    #[serde(default)]
    pub account: Option<String>,
    /// Paid milliseconds cut off so far by [`stop_meter`](Self::stop_meter).
    #[serde(default)]
    pub returned_ms: u64,
    /// Connections made so far; the latest one holds the session. Not part
    /// of the serialized form: a store keeps it as its own atomic counter.
    #[serde(skip)]
    pub connections: u64,
}

impl SessionState {
    /// End of paid time in unix seconds (0 if never paid).
    pub fn expires_at(&self) -> u64 {
        self.paid_until_ms.map_or(0, |ms| ms.div_ceil(1000))
    }

    /// Whether paid time remains at `now_ms`.
    pub fn is_paid(&self, now_ms: u64) -> bool {
        self.paid_until_ms.is_some_and(|p| p > now_ms)
    }

    /// Unix second until which a store must keep this state.
    pub fn retain_until(&self, unix: u64, linger_secs: u64) -> u64 {
        let last_flight = self.in_flight.values().copied().max().unwrap_or(0);
        self.expires_at()
            .max(last_flight)
            .max(unix)
            .saturating_add(linger_secs)
    }

    /// The horizon rule: admits payment `key` when paid time left plus every
    /// slice being settled plus this one stays within `horizon` slices.
    pub fn admit(
        &mut self,
        key: &PaymentKey,
        deadline: u64,
        now_ms: u64,
        slice_seconds: u64,
        horizon: u64,
    ) -> Result<(), Refusal> {
        let unix = now_ms / 1000;
        self.in_flight.retain(|_, d| *d >= unix);
        let remaining = u128::from(self.paid_until_ms.map_or(0, |p| p.saturating_sub(now_ms)));
        let slice_ms = u128::from(slice_seconds) * 1000;
        let flying = self.in_flight.len() as u128;
        let horizon = horizon.max(1);
        if remaining + slice_ms * (flying + 1) > slice_ms * u128::from(horizon) {
            return Err(Refusal::new(
                ErrorCode::HorizonExceeded,
                format!("prepaid horizon of {horizon} slices reached; renew later"),
            ));
        }
        self.in_flight.insert(key.clone(), deadline);
        Ok(())
    }

    /// A settlement for `key` ended without credit.
    pub fn release(&mut self, key: &PaymentKey) {
        self.in_flight.remove(key);
    }

    /// Admits a payment drawing on `account` (`None`: `exact`) at `now_ms`: while
    /// paid time runs or a payment settles, a session's time comes from one place
    /// (one channel, or `exact` transfers), so that what a metered session's close
    /// gives back goes where it was paid from. A session with neither takes the
    /// payment's account as its own.
    pub fn admit_account(&mut self, account: Option<&str>, now_ms: u64) -> Result<(), Refusal> {
        let unix = now_ms / 1000;
        self.in_flight.retain(|_, d| *d >= unix);
        if self.in_flight.is_empty() && !self.is_paid(now_ms) {
            self.account = account.map(str::to_string);
            return Ok(());
        }
        if self.account.as_deref() == account {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::PaymentInvalid,
            match (&self.account, account) {
                (Some(_), None) => "this session is paid from a batch-settlement channel: pay it with a voucher of that channel, or buy a new session".to_string(),
                (None, Some(_)) => "this session is paid by exact transfers: pay it with exact, or buy a new session for the channel".to_string(),
                (Some(a), Some(b)) => format!("this session is paid from channel {a}, not {b}: buy a new session for that channel"),
                (None, None) => String::new(),
            },
        ))
    }

    /// A metered session's socket closed at `now_ms`: paid time ends now, and
    /// the milliseconds cut off are returned (0: nothing left, or not metered).
    /// Delivered time is what the session was credited minus what was cut.
    pub fn stop_meter(&mut self, now_ms: u64) -> u64 {
        let Some(p) = self.paid_until_ms else {
            return 0;
        };
        if self.account.is_none() || p <= now_ms {
            return 0;
        }
        self.paid_until_ms = Some(now_ms);
        self.returned_ms = self.returned_ms.saturating_add(p - now_ms);
        p - now_ms
    }

    /// Milliseconds of paid time this session used (credited minus cut off).
    pub fn delivered_ms(&self, slice_seconds: u64) -> u64 {
        self.slices
            .saturating_mul(slice_seconds)
            .saturating_mul(1000)
            .saturating_sub(self.returned_ms)
    }

    /// What the cut of `unused_ms` (just made by [`stop_meter`](Self::stop_meter))
    /// gives back, in atomic units, under `meter`: the session's metered charge
    /// before the cut minus after it. The charge is rounded once, on the
    /// session's cumulative delivered time, so cuts never add up rounding.
    pub fn meter_return(
        &self,
        unused_ms: u64,
        slice_seconds: u64,
        meter: &crate::channel::Meter,
    ) -> u128 {
        let after = self.delivered_ms(slice_seconds);
        let before = after.saturating_add(unused_ms);
        meter
            .charge_ms(before)
            .saturating_sub(meter.charge_ms(after))
    }

    /// Credits one settled slice for `key` (drawn on `account`, if any): paid
    /// time grows by a slice from the later of now and the current end. When
    /// paid time had lapsed, events published before `head` are not bought
    /// (the floor moves).
    pub fn credit(
        &mut self,
        key: &PaymentKey,
        account: Option<&str>,
        now_ms: u64,
        slice_seconds: u64,
        head: u64,
    ) {
        self.in_flight.remove(key);
        // Set when the payment was admitted; a record taken over from another
        // instance may bring it first.
        if self.account.is_none() {
            self.account = account.map(str::to_string);
        }
        let lapsed = !self.is_paid(now_ms);
        let base = self.paid_until_ms.map_or(now_ms, |p| p.max(now_ms));
        self.paid_until_ms = Some(base.saturating_add(slice_seconds.saturating_mul(1000)));
        self.slices += 1;
        if lapsed && head > self.floor_seq {
            self.floor_seq = head;
        }
    }
}

/// Where a payment's settlement stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// The first attempt is under way.
    Settling,
    /// An earlier attempt's answer was pending or lost; settling again.
    Retrying,
    /// Settled and credited: the recorded answer.
    Credited(Credit),
    /// Refused, or unresolved ([`ErrorCode::SettlementUnknown`]): the recorded answer.
    Refused(Refusal),
}

impl PaymentStatus {
    /// Still waiting for a final answer.
    pub fn is_settling(&self) -> bool {
        matches!(self, PaymentStatus::Settling | PaymentStatus::Retrying)
    }
}

impl PaymentRecord {
    /// Whether its first attempt (verify, then settle) is still under way:
    /// it may yet fail verification, so its claims are not proof of use.
    pub fn is_first_attempt(&self) -> bool {
        self.attempts == 0 && self.status == PaymentStatus::Settling
    }

    /// Whether the record holds its authorization `(payer, nonce)` and its
    /// payment identifier. A definitely refused payload moved nothing: it
    /// holds neither (a junk copy of a genuine authorization must not block
    /// it), though its record stays so the same bytes get the same answer.
    /// Unresolved outcomes keep the claim: the money may have moved.
    pub fn holds_claim(&self) -> bool {
        match &self.status {
            PaymentStatus::Refused(r) => r.code == ErrorCode::SettlementUnknown,
            _ => true,
        }
    }
}

/// A payload's record: its claim and its settlement's outcome. Serializable,
/// so a store can share it between instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The x402 scheme that pays (records stored before schemes were named: `exact`).
    #[serde(default = "exact")]
    pub scheme: String,
    /// The session it pays for.
    pub session: String,
    /// The authorizer.
    pub payer: Address,
    /// The authorization nonce.
    pub nonce: Nonce,
    /// The amount authorized.
    pub amount: Amount,
    /// `validBefore` (unix seconds).
    pub valid_before: u64,
    /// The x402 `payment-identifier`, if any.
    pub payment_id: Option<String>,
    /// The account it draws on (a channel id; `None`: a one-off transfer).
    #[serde(default)]
    pub account: Option<String>,
    /// Where the settlement stands.
    pub status: PaymentStatus,
    /// Settlement attempts whose answer was pending or lost.
    pub attempts: u32,
    /// Forgotten after this unix second.
    pub expires: u64,
    /// Seconds one payment buys in its session (an instance that takes the
    /// settlement over may not know the session's quote).
    #[serde(default)]
    pub slice_seconds: u64,
    /// The session's stream (for the same reason).
    #[serde(default)]
    pub stream: String,
}

/// What a settlement's outcome does, computed by
/// [`ServerEndpoint::plan_settled`] without changing the endpoint, so that a
/// shared store can commit it before [`ServerEndpoint::apply_settled`] makes
/// it visible.
///
/// [`ServerEndpoint::plan_settled`]: super::ServerEndpoint::plan_settled
/// [`ServerEndpoint::apply_settled`]: super::ServerEndpoint::apply_settled
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledPlan {
    /// The payload.
    pub key: PaymentKey,
    /// The record afterwards; `None`: forget it (nothing moved, a retry starts over).
    pub record: Option<PaymentRecord>,
    /// The session afterwards; `None`: unchanged.
    pub session: Option<SessionState>,
    /// Why the outcome could not be established (for operators), if so.
    pub unresolved: Option<String>,
}

impl SettledPlan {
    /// Whether the store must commit this plan (a retry changes nothing shared).
    pub fn is_final(&self) -> bool {
        self.record.as_ref().is_none_or(|r| !r.status.is_settling())
    }
}

fn exact() -> String {
    super::EXACT.into()
}
