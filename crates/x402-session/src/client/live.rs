//! The live connection: hello, events, renewals announced on the socket, and
//! the paid-time clock they move.

use std::time::{Duration, Instant};

use x402_types::{EndpointKind, Event, Hello};

use super::payment::{Purpose, Step};
use super::timer::Timer;
use super::{ClientEvent, ClientSession, ConnId, END_SLACK, Phase};

impl ClientSession {
    pub(super) fn update_expiry(
        &mut self,
        now: Instant,
        expires_at: u64,
        server_time: Option<u64>,
        slices: u64,
    ) {
        // Paid time never shrinks: an older end (a hello or answer overtaken
        // by a renewal) is stale.
        let expires_at = expires_at.max(self.expires_at);
        self.expires_at = expires_at;
        if let Some(st) = server_time {
            self.server_offset_ms = (i128::from(st) * 1000 - self.unix_ms(now)) as i64;
        }
        let server_now_ms = self.unix_ms(now) + i128::from(self.server_offset_ms);
        let left_ms = (i128::from(expires_at) * 1000 - server_now_ms).max(0) as u64;
        let until = now + Duration::from_millis(left_ms);
        self.paid_until = Some(until);
        self.slices = self.slices.max(slices);
        self.stats.slices = self.slices;
        if self.no_more.is_some() {
            self.timers.set(Timer::End, until + END_SLACK);
            return;
        }
        let margin = self.renew_margin();
        let renew = until.checked_sub(margin).unwrap_or(now).max(now);
        self.timers.set(Timer::Renew, renew);
    }

    pub(super) fn on_hello(&mut self, now: Instant, conn: ConnId, h: Hello) {
        if h.stream_id != self.cfg.stream_id || h.version != self.cfg.version {
            self.protocol_violation("hello names another stream or version".into());
            return;
        }
        if h.slice_seconds == 0 {
            self.protocol_violation("hello with sliceSeconds 0".into());
            return;
        }
        let Some(ctx) = self.ctx.as_ref() else { return };
        if let Err(e) = ctx.check(&h.renew_url, EndpointKind::Renew) {
            self.protocol_violation(format!("renewUrl refused: {e}"));
            return;
        }
        self.renew_url = Some(h.renew_url.clone());
        self.slice_seconds = Some(h.slice_seconds);
        self.set_phase(Phase::Live { conn, hello: true });
        self.reconnect_attempt = 0;
        let expected = self.next_seq;
        self.update_expiry(now, h.expires_at, Some(h.server_time), 0);
        let resumed = h.resumed;
        let next = h.next_seq;
        self.events.push_back(ClientEvent::Hello(h));
        if resumed {
            let missed = expected.map_or(0, |e| next.saturating_sub(e));
            self.events.push_back(ClientEvent::Resumed { missed });
        }
        if expected.is_none_or(|e| next > e) {
            self.next_seq = Some(next);
        }
        // The paid time may already be short (reconnect near the end).
        match self.payment.signed().map(|s| s.step) {
            None if self.timers.is_expired(Timer::Renew, now) => {
                self.timers.stop(Timer::Renew);
                self.need_payment(now, Purpose::Renew);
            }
            // A renewal was interrupted by the drop: retry it with the same payload.
            Some(Step::Held | Step::RetryWait) => self.send_renew(now),
            _ => {}
        }
    }

    pub(super) fn on_event(&mut self, e: Event) {
        if let Some(expected) = self.next_seq
            && e.seq < expected
        {
            self.stats.duplicates += 1;
            self.events.push_back(ClientEvent::Duplicate { seq: e.seq });
            return;
        }
        self.next_seq = Some(e.seq.saturating_add(1));
        self.stats.events += 1;
        self.events.push_back(ClientEvent::Data(e));
    }

    pub(super) fn on_renewed(&mut self, now: Instant, expires_at: u64, slices: u64) {
        if let Some(slice) = self.payment.signed().map(|s| s.slice)
            && slices >= slice
        {
            // Whatever carried it (a renewal still in flight, an upgrade)
            // is answered: the payment is confirmed.
            self.accept_payment(slice, None);
        }
        if expires_at <= self.expires_at && slices <= self.slices {
            return; // already known from the renew answer
        }
        self.update_expiry(now, expires_at, None, slices);
        self.events
            .push_back(ClientEvent::Renewed { expires_at, slices });
    }
}
