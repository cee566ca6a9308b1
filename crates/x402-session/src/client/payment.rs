//! Paying: the one payment's life ([`PaymentState`]), asking the payer for a
//! slice, carrying the signed payload on a renewal or an upgrade, and reading
//! the server's verdict (accept, refuse, retry).

use std::time::{Duration, Instant};

use x402_types::batch::reasons::CUMULATIVE_AMOUNT_MISMATCH;
use x402_types::x402::{decode_header, headers};
use x402_types::{CloseCode, ErrorBody, ErrorCode, RenewResponse, SettleResponse};

use super::timer::Timer;
use super::{
    ClientEvent, ClientSession, EndReason, HttpResponse, Method, Phase, RequestId, Transmit,
};

/// Where a signed payment is to be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Attach to the WebSocket upgrade.
    Upgrade,
    /// POST to the renew endpoint.
    Renew,
}

/// The life of one payment: at most one slice is being bought at a time, so
/// the combinations that must never exist (two signatures asked for, a
/// payload both asked for and signed, a retry of nothing) cannot be written.
///
/// `Idle` → `Asking` (a [`ClientEvent::PaymentNeeded`] is out) → `Signed`
/// (the payer answered) → back to `Idle` once the server accepted the
/// payload ([`ClientEvent::PaymentAccepted`]), or to `Asking` for the same
/// slice once after a definite refusal. A signed payload is never signed
/// again while its fate is unknown: every retry (202, 503, a lost answer, a
/// dropped socket) sends the same bytes.
///
/// A channel of the `batch-settlement` scheme (issue "Channels": deposit
/// once, then cumulative vouchers in-band) plugs in beside this one, not into
/// it: a `channel: Option<ChannelState>` on the session holding the deposit,
/// the signed maximum and the charged total, with `Asking`'s purpose gaining a
/// `Voucher` (answer the server's `voucher-needed` on the socket) and
/// `Signed` carrying either payload. The timers (`Renew`, `RenewRetry`) and
/// the refusal rule below stay the channel's too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum PaymentState {
    /// No payment under way: nothing asked of the payer, nothing unconfirmed.
    #[default]
    Idle,
    /// The payer was asked to sign for `slice`.
    Asking {
        /// The slice asked for.
        slice: u64,
        /// Where the payload goes once signed.
        purpose: Purpose,
        /// Definite refusals of earlier payloads for this slice.
        refused: u32,
    },
    /// Signed, not yet confirmed by the server.
    Signed(Signed),
}

/// A signed payload whose fate the server has not told yet.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Signed {
    /// The slice it pays for.
    pub(super) slice: u64,
    /// The payment header's value: a spendable authorization.
    pub(super) header: String,
    /// Definite refusals of earlier payloads for this slice.
    pub(super) refused: u32,
    /// Renewals of this payload that got no definite answer (the backoff's exponent).
    pub(super) attempt: u32,
    /// It was sent in-band once (a channel's voucher): later tries use the renew URL.
    pub(super) in_band: bool,
    /// Where the payload is on the renew endpoint.
    pub(super) step: Step,
}

/// Where a signed payload is on the renew endpoint. (An upgrade carrying it
/// is [`Phase::Connecting`]'s `paid_slice`: both may hold the same bytes, and
/// the first answer decides.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Not being POSTed: waiting for a connection (it rides the upgrade) or
    /// for a `hello` (which gives the renew URL).
    Held,
    /// POSTed to the renew URL as this request; its answer is awaited.
    Renewing(RequestId),
    /// The last answer was no verdict (pending, busy, horizon, lost): the
    /// same payload goes again when [`Timer::RenewRetry`] fires.
    RetryWait,
    /// Sent in-band on the socket (a channel's voucher); without a verdict by
    /// [`Timer::RenewRetry`] it goes to the renew URL.
    InBand,
}

impl std::fmt::Debug for Signed {
    // The header is a spendable authorization: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("slice", &self.slice)
            .field("header", &"<redacted>")
            .field("refused", &self.refused)
            .field("attempt", &self.attempt)
            .field("in_band", &self.in_band)
            .field("step", &self.step)
            .finish()
    }
}

impl PaymentState {
    /// Whether no payment is under way.
    pub(super) fn is_idle(&self) -> bool {
        matches!(self, PaymentState::Idle)
    }

    /// The slice and purpose asked of the payer, if asking.
    pub(super) fn asking(&self) -> Option<(u64, Purpose)> {
        match self {
            PaymentState::Asking { slice, purpose, .. } => Some((*slice, *purpose)),
            _ => None,
        }
    }

    /// The unconfirmed payload, if any.
    pub(super) fn signed(&self) -> Option<&Signed> {
        match self {
            PaymentState::Signed(s) => Some(s),
            _ => None,
        }
    }

    /// The renew request carrying the unconfirmed payload, if one is in flight.
    pub(super) fn renewing(&self) -> Option<RequestId> {
        match self.signed()?.step {
            Step::Renewing(id) => Some(id),
            _ => None,
        }
    }
}

impl ClientSession {
    /// Pays for the next slice on `purpose`: reuses the unconfirmed payload
    /// if there is one, else asks the payer (unless no more payments are wanted).
    pub(super) fn need_payment(&mut self, now: Instant, purpose: Purpose) {
        self.ask_payer(now, purpose, 0);
    }

    /// [`need_payment`](Self::need_payment), `refused` payloads for this slice later.
    fn ask_payer(&mut self, now: Instant, purpose: Purpose, refused: u32) {
        if self.phase == Phase::Ended || self.no_more.is_some() {
            return;
        }
        match self.payment {
            PaymentState::Asking { .. } => return,
            // An unconfirmed payment is reused, even past its validBefore: the
            // server answers a payload it accepted with its first result, and
            // refuses one it did not. Only that definite answer lets us sign
            // again for the slice.
            PaymentState::Signed(_) => {
                match purpose {
                    Purpose::Renew => self.send_renew(now),
                    Purpose::Upgrade => self.connect(now),
                }
                return;
            }
            PaymentState::Idle => {}
        }
        if let Some(max) = self.cfg.max_slices
            && self.slices >= max
        {
            self.stop_paying(now, EndReason::SliceLimit);
            if purpose == Purpose::Upgrade && !self.has_paid_time(now) {
                self.end(EndReason::SliceLimit, Some(CloseCode::Normal));
            }
            return;
        }
        let Some(offer) = self.correction.take().or_else(|| self.offer.clone()) else {
            return;
        };
        let slice = self.slices + 1;
        self.payment = PaymentState::Asking {
            slice,
            purpose,
            refused,
        };
        self.stats.payments_requested += 1;
        self.events
            .push_back(ClientEvent::PaymentNeeded { slice, offer });
    }

    /// The payment header carrying the unconfirmed payload.
    pub(super) fn payment_header(&self) -> Option<(String, String)> {
        self.payment.signed().map(|s| {
            (
                self.cfg.version.payment_header().to_string(),
                s.header.clone(),
            )
        })
    }

    /// POSTs the unconfirmed payload to the renew URL (or, before any
    /// `hello`, carries it on an upgrade).
    pub(super) fn send_renew(&mut self, now: Instant) {
        if self.send_in_band(now) {
            return;
        }
        let Some(url) = self.renew_url.clone() else {
            // No hello yet: pay on the upgrade instead.
            self.connect(now);
            return;
        };
        let Some(h) = self.payment_header() else {
            return;
        };
        let id = self.request_id();
        if let PaymentState::Signed(s) = &mut self.payment {
            // The in-band copy got no verdict: this is the same payload again.
            if s.step == Step::InBand {
                self.stats.renew_retries += 1;
            }
            s.step = Step::Renewing(id);
        }
        self.timers.stop(Timer::RenewRetry);
        self.stats.renew_attempts += 1;
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Post,
            url,
            headers: vec![h],
        });
    }

    /// The renewal got no answer (or a busy one): the same payload again after backoff.
    pub(super) fn retry_renew(&mut self, now: Instant) {
        let PaymentState::Signed(s) = &mut self.payment else {
            return;
        };
        s.attempt += 1;
        let attempt = s.attempt;
        let delay = self.backoff(attempt);
        self.stats.renew_retries += 1;
        self.retry_renew_at(now + delay);
    }

    /// Parks the unconfirmed payload until `at`, when it is sent again.
    fn retry_renew_at(&mut self, at: Instant) {
        if let PaymentState::Signed(s) = &mut self.payment {
            s.step = Step::RetryWait;
            self.timers.set(Timer::RenewRetry, at);
        }
    }

    pub(super) fn settlement(&self, resp: &HttpResponse) -> Option<SettleResponse> {
        let name = self.cfg.version.payment_response_header();
        resp.header(name)
            .and_then(|v| decode_header(headers::X_PAYMENT_RESPONSE, v).ok())
    }

    /// The server accepted the payload for `slice` (if it is the one unconfirmed).
    pub(super) fn accept_payment(&mut self, slice: u64, settlement: Option<SettleResponse>) {
        if self.payment.signed().is_some_and(|s| s.slice == slice) {
            self.payment = PaymentState::Idle;
            self.timers.stop(Timer::RenewRetry);
            self.slices = self.slices.max(slice);
            self.stats.slices = self.slices;
            self.events
                .push_back(ClientEvent::PaymentAccepted { slice, settlement });
        }
    }

    /// The server definitely refused the unconfirmed payload: sign once more
    /// for the slice, or stop paying after a second refusal (or at once if
    /// the money may have moved).
    pub(super) fn refuse_payment(
        &mut self,
        now: Instant,
        status: u16,
        body: &[u8],
        purpose: Purpose,
    ) {
        let s = match std::mem::take(&mut self.payment) {
            PaymentState::Signed(s) => s,
            other => {
                self.payment = other;
                return;
            }
        };
        self.timers.stop(Timer::RenewRetry);
        let eb = ErrorBody::from_json(body).ok();
        let code = eb
            .as_ref()
            .map(|b| b.error.clone())
            .unwrap_or_else(|| ErrorCode::Other(format!("http_{status}")));
        let message = eb.map(|b| b.message).unwrap_or_default();
        let maybe_spent = code.maybe_spent();
        self.events.push_back(ClientEvent::PaymentRefused {
            slice: s.slice,
            status,
            code: code.clone(),
            maybe_spent,
        });
        // A channel's corrective 402: the server's charged total differs from ours
        // (a metered session that stopped early gave charge back). The payer checks
        // the restated offer's `channelState` before signing again; a second
        // refusal still stops.
        if code.as_str() == CUMULATIVE_AMOUNT_MISMATCH {
            self.correction = self.offer.as_ref().and_then(|o| o.corrected(body));
        }
        let refused = s.refused + 1;
        if refused > 1 || maybe_spent {
            // A second definite refusal: stop paying rather than loop.
            let reason = EndReason::PaymentRefused {
                status,
                code,
                message,
            };
            self.no_more = Some(reason.clone());
            if !self.has_paid_time(now)
                || purpose == Purpose::Upgrade && !matches!(self.phase, Phase::Live { .. })
            {
                self.end(reason, Some(CloseCode::Normal));
            } else {
                self.stop_paying(now, reason);
            }
        } else {
            self.ask_payer(now, purpose, refused);
        }
    }

    /// The answer to the renew request that carried the unconfirmed payload.
    pub(super) fn on_renew_response(&mut self, now: Instant, resp: HttpResponse) {
        match resp.status {
            200 => match RenewResponse::from_json(&resp.body) {
                Ok(r) => {
                    let slice = self.payment.signed().map_or(r.slices, |s| s.slice);
                    let settlement = self.settlement(&resp);
                    self.accept_payment(slice, settlement);
                    self.update_expiry(now, r.expires_at, None, r.slices);
                    self.events.push_back(ClientEvent::Renewed {
                        expires_at: r.expires_at,
                        slices: r.slices,
                    });
                    if self.phase == Phase::Down && !self.timers.is_set(Timer::Reconnect) {
                        self.timers.set(Timer::Reconnect, now);
                    }
                }
                Err(e) => self.protocol_violation(format!("renew answer: {e}")),
            },
            401 | 410 => self.end(
                EndReason::TokenRejected { code: resp.status },
                Some(CloseCode::Normal),
            ),
            s => match retry_kind(&resp) {
                Retry::HorizonLater => {
                    // Bought far enough ahead: keep the payload, try again later.
                    let later = now + self.renew_margin() / 2 + Duration::from_millis(500);
                    self.retry_renew_at(later);
                }
                Retry::Pending(after) => {
                    self.on_pending(after);
                    self.retry_renew_at(now + after);
                }
                Retry::Backoff => self.retry_renew(now),
                Retry::No => self.refuse_payment(now, s, &resp.body, Purpose::Renew),
            },
        }
    }

    pub(super) fn on_pending(&mut self, retry_after: Duration) {
        if let Some(s) = self.payment.signed() {
            let slice = s.slice;
            self.stats.pending_answers += 1;
            self.events
                .push_back(ClientEvent::PaymentPending { slice, retry_after });
        }
    }
}

/// How a non-success answer to a payment is treated (the one retry rule,
/// [`ErrorCode::is_retryable`] and [`x402_types::is_retryable_status`]).
pub(super) enum Retry {
    /// Definite refusal.
    No,
    /// Same payload again, with backoff.
    Backoff,
    /// Same payload again after the server's `Retry-After` (pending settlement).
    Pending(Duration),
    /// Prepaid horizon reached: same payload, later.
    HorizonLater,
}

/// Longest `Retry-After` honoured (a server cannot park a client forever).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

pub(super) fn retry_kind(resp: &HttpResponse) -> Retry {
    let body = ErrorBody::from_json(&resp.body).ok();
    let code = body.as_ref().map(|b| &b.error);
    let after = resp
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(body.as_ref().and_then(|b| b.retry_after))
        .map_or(Duration::from_secs(2), Duration::from_secs)
        .clamp(Duration::from_millis(200), MAX_RETRY_AFTER);
    match code {
        Some(ErrorCode::PaymentPending) => Retry::Pending(after),
        Some(ErrorCode::HorizonExceeded) => Retry::HorizonLater,
        Some(c) if c.is_retryable() => Retry::Backoff,
        Some(ErrorCode::SettlementUnknown) => Retry::No,
        _ if resp.status == 202 => Retry::Pending(after),
        _ if x402_types::is_retryable_status(resp.status) => Retry::Backoff,
        _ => Retry::No,
    }
}
