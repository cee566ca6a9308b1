//! Sockets: upgrades, delivery bounds, and the session timers (`expiring`,
//! `expired`, the 4402 close).

use std::time::{Duration, Instant};

use x402_types::{CloseCode, Hello, ServerMessage};

use super::{
    ConnId, Connected, Quote, Refusal, ServerEndpoint, ServerEvent, ServerTransmit, Session,
    StreamHead, payment_required, quote_expired,
};

impl ServerEndpoint {
    /// Whether a socket upgrade for `quote` may proceed (checked before the
    /// 101 is written; [`connect`](Self::connect) follows once it is).
    pub fn check_connect(&self, now: Instant, quote: &Quote) -> Result<(), Refusal> {
        let now_ms = self.unix_ms(now);
        match self.sessions.get(&quote.id) {
            Some(s) if s.state.is_paid(now_ms) => Ok(()),
            Some(_) => Err(payment_required("no paid time left: pay for a slice")),
            None if self.unix_now(now) > quote.expires => Err(quote_expired()),
            None => Err(payment_required("a payment is required")),
        }
    }

    /// A socket upgrade for `quote` completed. The session must hold paid
    /// time; a previous socket is closed with 4409. `from` is the client's
    /// resume point; delivery starts no earlier than the session's first paid
    /// event and no earlier than the replay buffer's oldest.
    ///
    /// The session's `connections` count grows by one; an instance sharing a
    /// store commits it (its socket elsewhere is then superseded).
    pub fn connect(
        &mut self,
        now: Instant,
        quote: &Quote,
        conn: ConnId,
        from: Option<u64>,
        head: StreamHead,
    ) -> Result<Connected, Refusal> {
        self.touch(now);
        self.check_connect(now, quote)?;
        let server_time = self.unix_now(now);
        let Some(s) = self.sessions.get_mut(&quote.id) else {
            return Err(payment_required("a payment is required"));
        };
        if let Some(old) = s.conn.replace(conn)
            && old != conn
        {
            self.conns.remove(&old);
            self.transmits.push_back(ServerTransmit::Close {
                conn: old,
                code: CloseCode::Superseded,
            });
        }
        let resumed = s.state.connections > 0;
        s.state.connections += 1;
        s.conn_gen = s.state.connections;
        // Without a resume point a first connection gets what was published
        // since its first paid moment (a slow settlement does not cost events);
        // a later one starts live.
        let floor = s.state.floor_seq;
        let default = if resumed { head.next_seq } else { floor };
        let mut start = from.unwrap_or(default).min(head.next_seq);
        let mut skipped = 0;
        if start < floor {
            skipped = floor - start;
            start = floor;
        }
        let mut lost = 0;
        if start < head.oldest_seq {
            lost = head.oldest_seq - start;
            start = head.oldest_seq;
        }
        let hello = Hello {
            session_id: s.quote.id.clone(),
            stream_id: s.quote.stream_id.clone(),
            version: s.quote.version,
            slice_seconds: s.quote.slice_seconds,
            expires_at: s.state.expires_at(),
            server_time,
            renew_url: s.quote.renew_url.clone(),
            resumed,
            next_seq: start,
        };
        self.conns.insert(conn, quote.id.clone());
        self.reschedule(&quote.id);
        Ok(Connected {
            hello,
            start,
            lost,
            skipped,
        })
    }

    /// The socket `conn` went away.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.touch(now);
        let Some(session) = self.conns.remove(&conn) else {
            return;
        };
        let now_ms = self.unix_ms(now);
        if let Some(s) = self.sessions.get_mut(&session)
            && s.conn == Some(conn)
        {
            s.conn = None;
            // A metered session pays only while its socket is open. The cut is made
            // on the shared state by the driver (compare-and-set, only if no newer
            // socket holds the session), then imported here: never locally alone.
            let unused_ms = s
                .state
                .paid_until_ms
                .map_or(0, |p| p.saturating_sub(now_ms));
            if unused_ms > 0
                && let Some(account) = s.state.account.clone()
            {
                self.events.push_back(ServerEvent::MeterStopped {
                    session: session.clone(),
                    stream: s.quote.stream_id.clone(),
                    account,
                    unused_ms,
                    at_ms: now_ms,
                    connection: s.conn_gen,
                });
            }
        }
        self.reschedule(&session);
    }

    /// Events may be sent on `conn` until this instant (the end of paid time), if it is live.
    pub fn deliver_until(&self, conn: ConnId) -> Option<Instant> {
        let s = self.sessions.get(self.conns.get(&conn)?)?;
        (s.conn == Some(conn)).then(|| self.at(s.state.paid_until_ms.unwrap_or(0)))
    }

    // ----- session timers -----

    /// How long before the end of paid time `expiring` is sent: the configured
    /// lead, at most a third of a slice.
    fn expiring_lead(&self, s: &Session) -> Duration {
        self.cfg.expiring_lead.min(Duration::from_millis(
            s.quote.slice_seconds.saturating_mul(333),
        ))
    }

    pub(super) fn session_timeout(&mut self, now: Instant, session: &str) {
        let grace = self.cfg.grace;
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let (Some(conn), Some(p)) = (s.conn, s.state.paid_until_ms) else {
            return;
        };
        let lead = self.expiring_lead(s);
        let until = self.at(p);
        let unix = self.unix_now(now);
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let exp = s.state.expires_at();
        if !s.expiring_sent && now + lead >= until {
            s.expiring_sent = true;
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Expiring {
                    expires_at: exp,
                    seconds_left: until.saturating_duration_since(now).as_secs(),
                },
            });
        }
        if !s.expired_sent && now >= until {
            s.expired_sent = true;
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Expired { expires_at: exp },
            });
        }
        let flying = s.state.in_flight.values().any(|d| *d >= unix);
        if s.expired_sent && now >= until + grace && !flying {
            s.conn = None;
            self.conns.remove(&conn);
            self.transmits.push_back(ServerTransmit::Close {
                conn,
                code: CloseCode::PaymentExpired,
            });
        }
    }

    pub(super) fn reschedule(&mut self, session: &str) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let lead = self.expiring_lead(s);
        let next = match (s.conn, s.state.paid_until_ms) {
            (Some(_), Some(p)) => {
                let until = self.at(p);
                Some(if !s.expiring_sent {
                    until.checked_sub(lead).unwrap_or(until)
                } else if !s.expired_sent {
                    until
                } else {
                    // The 4402 close waits for payments in flight; if none
                    // settles, until the last one's deadline (never a timer
                    // in the past: that would fire again at once).
                    let last_flight = s.state.in_flight.values().copied().max();
                    let close = until + self.cfg.grace;
                    last_flight.map_or(close, |d| {
                        close.max(self.at(d.saturating_add(1).saturating_mul(1000)))
                    })
                })
            }
            _ => None,
        };
        let old = s.timer;
        if old == next {
            return;
        }
        if let Some(t) = old {
            self.timers.remove(&(t, session.to_string()));
        }
        if let Some(t) = next {
            self.timers.insert((t, session.to_string()));
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.timer = next;
        }
    }
}
