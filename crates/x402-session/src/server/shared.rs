//! Several instances sharing one store: what an endpoint exports to commit,
//! what it imports from the store, and settlements taken over or given up.

use std::time::Instant;

use x402_types::{CloseCode, FacilitatorRequest, ServerMessage};

use super::{
    PaymentIn, PaymentKey, PaymentRecord, PaymentStatus, Quote, Record, ServerEndpoint,
    ServerTransmit, SessionState, SettleId, new_session,
};

impl ServerEndpoint {
    /// A session's shared state, to commit to a store.
    pub fn export_session(&self, session: &str) -> Option<SessionState> {
        self.sessions.get(session).map(|s| s.state.clone())
    }

    /// A payload's record, to commit to a store.
    pub fn export_record(&self, key: &PaymentKey) -> Option<PaymentRecord> {
        self.records.get(key).map(|r| r.rec.clone())
    }

    /// The session with a live socket here, for each of these ids (a store's
    /// notice that a session changed concerns only those).
    pub fn has_connection(&self, session: &str) -> bool {
        self.sessions.get(session).is_some_and(|s| s.conn.is_some())
    }

    /// Sessions with a socket here whose timer is due by `now`: a driver
    /// sharing a store refreshes them before [`handle_timeout`](Self::handle_timeout)
    /// so that time paid on another instance is seen before `expired`.
    pub fn due_sessions(&self, now: Instant) -> Vec<String> {
        self.timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Takes a session's shared state from a store. A renewal made elsewhere
    /// reaches this instance's socket (`renewed`, and `events_skipped` when
    /// the floor moved); a connection made elsewhere supersedes the socket
    /// here (4409). `quote` creates the session when this instance has not
    /// seen it; `None` updates only a known one.
    pub fn import_session(
        &mut self,
        now: Instant,
        session: &str,
        quote: Option<&Quote>,
        state: SessionState,
    ) {
        self.touch(now);
        if !self.sessions.contains_key(session) {
            let Some(q) = quote else { return };
            self.sessions
                .insert(session.to_string(), new_session(q.clone()));
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let mut state = state;
        state.connections = state.connections.max(s.state.connections);
        let older = state.slices < s.state.slices
            || (state.slices == s.state.slices && state.returned_ms < s.state.returned_ms);
        if older {
            // An older copy (a load that raced a newer commit): paid time
            // never grows back (a metered session's cut stands); only the
            // connection count is news.
            let mut newer = s.state.clone();
            newer.connections = state.connections;
            state = newer;
        }
        let old = std::mem::replace(&mut s.state, state);
        // Settlements this instance runs count even if the store lags.
        let from = (session.to_string(), PaymentKey::from_stored(String::new()));
        for (_, k) in self
            .settling
            .range(from..)
            .take_while(|(s, _)| s == session)
        {
            if let Some(r) = self.records.get(k)
                && r.local
                && r.rec.status.is_settling()
            {
                s.state
                    .in_flight
                    .entry(k.clone())
                    .or_insert(r.rec.valid_before.saturating_add(self.cfg.skew_secs));
            }
        }
        let renewed = s.state.slices > old.slices;
        if renewed {
            s.expiring_sent = false;
            s.expired_sent = false;
        }
        if let Some(conn) = s.conn {
            if s.state.connections > s.conn_gen {
                s.conn = None;
                self.conns.remove(&conn);
                self.transmits.push_back(ServerTransmit::Close {
                    conn,
                    code: CloseCode::Superseded,
                });
            } else if renewed {
                if s.state.floor_seq > old.floor_seq {
                    self.transmits.push_back(ServerTransmit::Skip {
                        conn,
                        seq: s.state.floor_seq,
                    });
                }
                self.transmits.push_back(ServerTransmit::Message {
                    conn,
                    msg: ServerMessage::Renewed {
                        expires_at: s.state.expires_at(),
                        slices: s.state.slices,
                    },
                });
            }
        }
        self.reschedule(session);
    }

    /// Takes a payload's record from a store (another instance claimed it).
    /// A record this endpoint is settling itself is kept as it is.
    pub fn import_record(&mut self, now: Instant, key: &PaymentKey, rec: PaymentRecord) {
        self.touch(now);
        if let Some(r) = self.records.get_mut(key) {
            // Monotonic: a settling copy (a load that raced the outcome)
            // never replaces a final answer; a settlement replaces an
            // unresolved one (it is the fact that answer lacked).
            let stale = !r.rec.status.is_settling()
                && (rec.status.is_settling()
                    || !matches!(
                        (&r.rec.status, &rec.status),
                        (PaymentStatus::Refused(u), PaymentStatus::Credited(_))
                            if u.code == x402_types::ErrorCode::SettlementUnknown
                    ));
            let running_here = r.local && r.rec.status.is_settling();
            if !(stale || running_here) {
                r.rec.status = rec.status;
                // Definitely refused elsewhere: its claims are free here too.
                if !r.rec.holds_claim() {
                    self.release_claims(key);
                }
            }
            return;
        }
        self.next_id += 1;
        let id = SettleId(self.next_id);
        self.by_id.insert(id, key.clone());
        if rec.holds_claim() {
            self.claims.insert((rec.payer, rec.nonce), key.clone());
            if let Some(pid) = &rec.payment_id {
                self.payment_ids.insert(pid.clone(), key.clone());
            }
        }
        self.record_expiry.insert((rec.expires, key.clone()));
        self.records.insert(
            key.clone(),
            Record {
                id,
                rec,
                local: false,
                request: None,
                started: false,
            },
        );
    }

    /// Takes over a record whose settling instance died: this endpoint
    /// settles the same payload again (as a retry: the first attempt's fate
    /// is unknown) and returns the settlement, whose attempt
    /// [`poll_settle`](Self::poll_settle) gives with `request`.
    pub fn adopt(
        &mut self,
        now: Instant,
        key: &PaymentKey,
        rec: PaymentRecord,
        request: Option<FacilitatorRequest>,
    ) -> SettleId {
        self.touch(now);
        if let Some(r) = self.records.get(key)
            && r.local
            && r.rec.status.is_settling()
        {
            // Already settling here: one task per settlement.
            return r.id;
        }
        self.forget(key);
        self.import_record(now, key, rec);
        let Some(r) = self.records.get_mut(key) else {
            return SettleId(0);
        };
        r.local = true;
        r.started = true;
        r.request = request;
        r.rec.status = PaymentStatus::Retrying;
        r.rec.attempts = r.rec.attempts.max(1);
        self.settling.insert((r.rec.session.clone(), key.clone()));
        let (id, deadline) = (r.id, r.rec.valid_before.saturating_add(self.cfg.skew_secs));
        if let Some(s) = self.sessions.get_mut(&r.rec.session) {
            s.state.in_flight.insert(key.clone(), deadline);
        }
        self.queue_attempt(id);
        id
    }

    /// Forgets a record another instance holds, when the store no longer has it.
    pub fn drop_foreign(&mut self, key: &PaymentKey) {
        if self.records.get(key).is_some_and(|r| !r.local) {
            self.forget(key);
        }
    }

    /// Forgets records of other instances that hold `p`'s authorization or
    /// payment identifier here but that the store no longer names as
    /// holders (`holders`: the records it returned). A junk copy cached
    /// while it was verified elsewhere, then refused, must not block the
    /// genuine payload on this instance.
    pub fn drop_stale_holders(&mut self, p: &PaymentIn, holders: &[PaymentKey]) {
        let mut stale: Vec<PaymentKey> = Vec::new();
        if let Some(k) = self.claims.get(&(p.payer, p.nonce)) {
            stale.push(k.clone());
        }
        if let Some(k) = p.payment_id.as_ref().and_then(|i| self.payment_ids.get(i)) {
            stale.push(k.clone());
        }
        for k in stale {
            if k != p.key && !holders.contains(&k) {
                self.drop_foreign(&k);
            }
        }
    }

    /// Another instance took over settlement `id` (this one was thought
    /// dead): stop treating it as this endpoint's; its outcome arrives
    /// through the store.
    pub fn disown(&mut self, now: Instant, id: SettleId) {
        self.touch(now);
        let Some(key) = self.by_id.get(&id).cloned() else {
            return;
        };
        let Some(r) = self.records.get_mut(&key) else {
            return;
        };
        if !(r.local && r.rec.status.is_settling()) {
            return;
        }
        r.local = false;
        let session = r.rec.session.clone();
        self.settling.remove(&(session.clone(), key.clone()));
        if let Some(s) = self.sessions.get_mut(&session) {
            s.state.release(&key);
        }
        self.reschedule(&session);
    }
}
