//! Losing and restoring the connection: upgrade refusals, (re)connecting with
//! the resume point and any pending payment, and the reconnect backoff.

use std::time::Instant;

use x402_types::{ErrorBody, ErrorCode};

use super::payment::{Purpose, Retry, retry_kind};
use super::{ClientEvent, ClientSession, ConnId, EndReason, HttpResponse, Phase, Transmit};

impl ClientSession {
    pub(super) fn on_upgrade_refused(
        &mut self,
        now: Instant,
        paid_slice: Option<u64>,
        resp: HttpResponse,
    ) {
        self.phase = Phase::Down;
        match resp.status {
            401 | 410 => self.end(EndReason::TokenRejected { code: resp.status }, None),
            404 => self.protocol_violation("stream no longer exists".into()),
            402 if let Some(slice) = paid_slice
                && ErrorBody::from_json(&resp.body)
                    .is_ok_and(|b| b.error == ErrorCode::PaymentRequired) =>
            {
                // Not a refusal of our payment: the server had already accepted it
                // (an earlier attempt whose answer was lost) and the time it bought
                // has run out. Count it, then pay for the next slice.
                self.accept_payment(slice, None);
                self.paid_time_gone(now);
            }
            402 if paid_slice.is_some() => {
                self.refuse_payment(now, 402, &resp.body, Purpose::Upgrade)
            }
            402 => {
                // No paid time left on the server's clock: pay on the next upgrade.
                self.paid_time_gone(now);
            }
            _ if paid_slice.is_some() => match retry_kind(&resp) {
                Retry::Pending(after) => {
                    // Settlement under way: come back with the same payload.
                    self.on_pending(after);
                    self.reconnect_at = Some(now + after);
                }
                Retry::Backoff | Retry::HorizonLater => self.connection_lost(now),
                Retry::No => self.refuse_payment(now, resp.status, &resp.body, Purpose::Upgrade),
            },
            _ => self.connection_lost(now),
        }
    }

    /// The server says no paid time is left: end if no more payments are
    /// wanted, otherwise pay for the next slice on the next upgrade.
    pub(super) fn paid_time_gone(&mut self, now: Instant) {
        self.paid_until = Some(now);
        if let Some(reason) = self.no_more.clone() {
            self.end(reason, None);
        } else {
            self.need_payment(now, Purpose::Upgrade);
        }
    }

    pub(super) fn connect(&mut self, now: Instant) {
        let Some(mut url) = self.ws_url.clone() else {
            return;
        };
        if let Some(from) = self.next_seq {
            url.append_pair("from", &from.to_string());
        }
        let attach = !self.has_paid_time(now) && self.pending.is_some();
        if !attach && !self.has_paid_time(now) {
            self.need_payment(now, Purpose::Upgrade);
            return;
        }
        let headers = if attach {
            self.payment_header().into_iter().collect()
        } else {
            Vec::new()
        };
        let paid_slice = if attach {
            self.pending.as_ref().map(|p| p.slice)
        } else {
            None
        };
        self.next_id += 1;
        let conn = ConnId(self.next_id);
        self.phase = Phase::Connecting { conn, paid_slice };
        self.transmits.push_back(Transmit::WsConnect {
            conn,
            url: url.to_string(),
            headers,
        });
    }

    pub(super) fn reconnect(&mut self, now: Instant) {
        if self.has_paid_time(now) || self.pending.is_some() {
            self.connect(now);
        } else if let Some(reason) = self.no_more.clone() {
            self.end(reason, None);
        } else {
            self.need_payment(now, Purpose::Upgrade);
        }
    }

    pub(super) fn connection_lost(&mut self, now: Instant) {
        self.phase = Phase::Down;
        self.reconnect_attempt += 1;
        if self.reconnect_attempt > self.cfg.reconnect.max_attempts {
            self.end(
                EndReason::ConnectionLost {
                    attempts: self.reconnect_attempt - 1,
                },
                None,
            );
            return;
        }
        if self.no_more.is_some() && !self.has_paid_time(now) {
            let reason = self.no_more.clone().unwrap_or(EndReason::Stopped);
            self.end(reason, None);
            return;
        }
        let delay = self.backoff(self.reconnect_attempt);
        self.stats.reconnects += 1;
        self.reconnect_at = Some(now + delay);
        self.events.push_back(ClientEvent::Reconnecting {
            attempt: self.reconnect_attempt,
            delay,
        });
    }
}
