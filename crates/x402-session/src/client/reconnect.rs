//! Losing and restoring the connection: upgrade refusals, (re)connecting with
//! the resume point and any pending payment, the one reconnect escalation,
//! and the socket's own rules (keep-alive pings, a silent peer is dead).

use std::time::Instant;

use x402_types::{ClientMessage, CloseCode, ErrorBody, ErrorCode};

use super::payment::{Purpose, Retry, retry_kind};
use super::timer::Timer;
use super::{ClientEvent, ClientSession, ConnId, EndReason, HttpResponse, Phase, Transmit};

impl ClientSession {
    pub(super) fn on_upgrade_refused(
        &mut self,
        now: Instant,
        paid_slice: Option<u64>,
        resp: HttpResponse,
    ) {
        self.set_phase(Phase::Down);
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
                    self.timers.set(Timer::Reconnect, now + after);
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

    /// Opens the stream socket: without a payment while paid time remains,
    /// else carrying the unconfirmed payload (or asking for one first).
    pub(super) fn connect(&mut self, now: Instant) {
        let Some(mut url) = self.ws_url.clone() else {
            return;
        };
        if let Some(from) = self.next_seq {
            url.append_pair("from", &from.to_string());
        }
        let paid = self.has_paid_time(now);
        let carried = self.payment.signed().map(|s| s.slice).filter(|_| !paid);
        if !paid && carried.is_none() {
            self.need_payment(now, Purpose::Upgrade);
            return;
        }
        let headers = if carried.is_some() {
            self.payment_header().into_iter().collect()
        } else {
            Vec::new()
        };
        self.open_socket(url, headers, carried);
    }

    /// Asks for a socket to `url`; `paid_slice` is the slice whose payload
    /// the upgrade carries.
    pub(super) fn open_socket(
        &mut self,
        url: x402_types::Url,
        headers: Vec<(String, String)>,
        paid_slice: Option<u64>,
    ) {
        self.next_id += 1;
        let conn = ConnId(self.next_id);
        self.set_phase(Phase::Connecting { conn, paid_slice });
        self.transmits.push_back(Transmit::WsConnect {
            conn,
            url: url.to_string(),
            headers,
        });
    }

    /// [`Timer::Reconnect`] fired: the schema again if it was never read,
    /// else the socket (paying first if no paid time is left).
    pub(super) fn reconnect(&mut self, now: Instant) {
        if self.offer.is_none() {
            self.request_schema();
        } else if self.has_paid_time(now) || self.payment.signed().is_some() {
            self.connect(now);
        } else if let Some(reason) = self.no_more.clone() {
            self.end(reason, None);
        } else {
            self.need_payment(now, Purpose::Upgrade);
        }
    }

    /// The connection (or the schema request) failed: the one reconnect
    /// escalation. Counts the attempt, gives up after the policy's
    /// `max_attempts`, ends if nothing is paid and nothing more will be,
    /// else waits a jittered exponential backoff ([`Timer::Reconnect`]).
    pub(super) fn connection_lost(&mut self, now: Instant) {
        self.set_phase(Phase::Down);
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
        self.timers.set(Timer::Reconnect, now + delay);
        self.events.push_back(ClientEvent::Reconnecting {
            attempt: self.reconnect_attempt,
            delay,
        });
    }

    /// The socket `conn` became usable: pings are due every `keep_alive`,
    /// and silence for `idle_timeout` means the peer is gone.
    pub(super) fn socket_up(&mut self, now: Instant) {
        self.timers.set(Timer::KeepAlive, now + self.cfg.keep_alive);
        self.heard(now);
    }

    /// Something arrived on the live socket.
    pub(super) fn heard(&mut self, now: Instant) {
        self.timers.set(Timer::Idle, now + self.cfg.idle_timeout);
    }

    /// [`Timer::KeepAlive`] fired: ping the live socket (the server answers
    /// `pong`, which counts as heard), then again one period later.
    pub(super) fn keep_alive(&mut self, now: Instant) {
        if let Phase::Live { conn, .. } = self.phase {
            self.transmits.push_back(Transmit::WsSend {
                conn,
                text: ClientMessage::PING.to_string(),
            });
            self.timers.set(Timer::KeepAlive, now + self.cfg.keep_alive);
        }
    }

    /// [`Timer::Idle`] fired: nothing heard for `idle_timeout`, the socket is
    /// half-open or the peer dead. It is closed, and the connection counts
    /// as lost (as a drop without a close code would).
    pub(super) fn peer_silent(&mut self, now: Instant) {
        if let Phase::Live { conn, .. } = self.phase {
            self.transmits.push_back(Transmit::WsClose {
                conn,
                code: CloseCode::Normal,
            });
            self.connection_lost(now);
        }
    }
}
