//! Paying: asking the payer for a slice, carrying the signed payload on a
//! renewal or an upgrade, and reading the server's verdict (accept, refuse, retry).

use std::time::{Duration, Instant};

use x402_types::x402::{decode_header, headers};
use x402_types::{CloseCode, ErrorBody, ErrorCode, RenewResponse, SettleResponse};

use super::{ClientEvent, ClientSession, EndReason, HttpResponse, Method, Phase, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Attach to the WebSocket upgrade.
    Upgrade,
    /// POST to the renew endpoint.
    Renew,
}

#[derive(Clone)]
pub(super) struct Pending {
    pub(super) slice: u64,
    pub(super) header: String,
}

impl std::fmt::Debug for Pending {
    // The header is a spendable authorization: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("slice", &self.slice)
            .field("header", &"<redacted>")
            .finish()
    }
}

impl ClientSession {
    pub(super) fn need_payment(&mut self, now: Instant, purpose: Purpose) {
        if self.phase == Phase::Ended || self.no_more.is_some() || self.asking.is_some() {
            return;
        }
        // An unconfirmed payment is reused, even past its validBefore: the server
        // answers a payload it accepted with its first result, and refuses one it
        // did not. Only that definite answer lets us sign again for the slice.
        if self.pending.is_some() {
            match purpose {
                Purpose::Renew => self.send_renew(now),
                Purpose::Upgrade => self.connect(now),
            }
            return;
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
        let Some(offer) = self.offer.clone() else {
            return;
        };
        let slice = self.slices + 1;
        self.asking = Some((slice, purpose));
        self.stats.payments_requested += 1;
        self.events
            .push_back(ClientEvent::PaymentNeeded { slice, offer });
    }

    pub(super) fn payment_header(&self) -> Option<(String, String)> {
        self.pending.as_ref().map(|p| {
            (
                self.cfg.version.payment_header().to_string(),
                p.header.clone(),
            )
        })
    }

    pub(super) fn send_renew(&mut self, now: Instant) {
        let Some(url) = self.renew_url.clone() else {
            // No hello yet: pay on the upgrade instead.
            self.connect(now);
            return;
        };
        let Some(h) = self.payment_header() else {
            return;
        };
        let id = self.request_id();
        self.renew_req = Some(id);
        self.renew_slice = self.pending.as_ref().map(|p| p.slice);
        self.stats.renew_attempts += 1;
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Post,
            url,
            headers: vec![h],
        });
    }

    pub(super) fn retry_renew(&mut self, now: Instant) {
        if self.pending.is_none() {
            return;
        }
        self.renew_attempt += 1;
        let delay = self.backoff(self.renew_attempt);
        self.stats.renew_retries += 1;
        self.renew_retry_at = Some(now + delay);
    }

    pub(super) fn settlement(&self, resp: &HttpResponse) -> Option<SettleResponse> {
        let name = self.cfg.version.payment_response_header();
        resp.header(name)
            .and_then(|v| decode_header(headers::X_PAYMENT_RESPONSE, v).ok())
    }

    pub(super) fn accept_payment(&mut self, slice: u64, settlement: Option<SettleResponse>) {
        if self.pending.as_ref().is_some_and(|p| p.slice == slice) {
            self.pending = None;
            self.resigns = 0;
            self.renew_attempt = 0;
            self.renew_retry_at = None;
            self.slices = self.slices.max(slice);
            self.stats.slices = self.slices;
            self.events
                .push_back(ClientEvent::PaymentAccepted { slice, settlement });
        }
    }

    pub(super) fn refuse_payment(
        &mut self,
        now: Instant,
        status: u16,
        body: &[u8],
        purpose: Purpose,
    ) {
        let Some(p) = self.pending.take() else { return };
        let eb = ErrorBody::from_json(body).ok();
        let code = eb
            .as_ref()
            .map(|b| b.error.clone())
            .unwrap_or_else(|| ErrorCode::Other(format!("http_{status}")));
        let message = eb.map(|b| b.message).unwrap_or_default();
        let maybe_spent = code.maybe_spent();
        self.events.push_back(ClientEvent::PaymentRefused {
            slice: p.slice,
            status,
            code: code.clone(),
            maybe_spent,
        });
        self.resigns += 1;
        if self.resigns > 1 || maybe_spent {
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
            self.need_payment(now, purpose);
        }
    }

    pub(super) fn on_renew_response(&mut self, now: Instant, resp: HttpResponse) {
        let carried = self.renew_slice.take();
        if carried.is_some() && carried != self.pending.as_ref().map(|p| p.slice) {
            // The answer about a payment already settled otherwise (its
            // acceptance came through an upgrade); it says nothing about the
            // payment now pending. Only the paid time it reports counts.
            if resp.status == 200
                && let Ok(r) = RenewResponse::from_json(&resp.body)
            {
                self.update_expiry(now, r.expires_at, None, r.slices);
            }
            return;
        }
        match resp.status {
            200 => match RenewResponse::from_json(&resp.body) {
                Ok(r) => {
                    let slice = self.pending.as_ref().map(|p| p.slice).unwrap_or(r.slices);
                    let settlement = self.settlement(&resp);
                    self.accept_payment(slice, settlement);
                    self.update_expiry(now, r.expires_at, None, r.slices);
                    self.events.push_back(ClientEvent::Renewed {
                        expires_at: r.expires_at,
                        slices: r.slices,
                    });
                    if self.phase == Phase::Down && self.reconnect_at.is_none() {
                        self.reconnect_at = Some(now);
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
                    self.renew_retry_at =
                        Some(now + self.renew_margin() / 2 + Duration::from_millis(500));
                }
                Retry::Pending(after) => {
                    self.on_pending(after);
                    self.renew_retry_at = Some(now + after);
                }
                Retry::Backoff => self.retry_renew(now),
                Retry::No => self.refuse_payment(now, s, &resp.body, Purpose::Renew),
            },
        }
    }

    pub(super) fn on_pending(&mut self, retry_after: Duration) {
        if let Some(p) = &self.pending {
            self.stats.pending_answers += 1;
            self.events.push_back(ClientEvent::PaymentPending {
                slice: p.slice,
                retry_after,
            });
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
