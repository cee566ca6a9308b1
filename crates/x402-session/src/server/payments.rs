//! Payments: the decision, the settlement's attempts and outcome, the
//! recorded answer, and the claims a record holds.

use std::time::Instant;

use x402_types::{ErrorCode, RenewResponse};

use super::{
    Credit, PaymentDecision, PaymentIn, PaymentKey, PaymentRecord, PaymentStatus, Quote, Record,
    Refusal, ServerEndpoint, ServerEvent, SessionState, SettleId, SettleJob, SettleOutcome,
    SettledPlan, new_session, quote_expired,
};

/// Records of refused payloads are kept this long, so a retry gets the same answer.
const REFUSED_RETENTION_SECS: u64 = 120;
/// No record outlives this, whatever `validBefore` says.
const MAX_RETENTION_SECS: u64 = 24 * 3600;
/// A settling record outlives its deadline (`validBefore` + skew) by this
/// much, so that its unresolved or late outcome is still committed against
/// it; the final outcome sets the record's real expiry.
const SETTLING_TAIL_SECS: u64 = 600;
/// An unresolved record (money may have moved, nothing credited) keeps
/// answering `settlement_unknown` and holding its authorization this long:
/// a payer retrying it must never hear "invalid" (which would let it sign
/// again and pay twice).
const UNRESOLVED_RETENTION_SECS: u64 = 24 * 3600;
/// A credited record answers retries of its payload at least this long
/// after its outcome, even when its authorization has expired.
const CREDITED_RETENTION_SECS: u64 = 600;

impl ServerEndpoint {
    /// A payment for the session of `quote` arrived.
    pub fn handle_payment(&mut self, now: Instant, quote: &Quote, p: PaymentIn) -> PaymentDecision {
        self.touch(now);
        if let Some(r) = self.records.get(&p.key) {
            if r.rec.session != quote.id {
                return PaymentDecision::Refused(Refusal::new(
                    ErrorCode::PaymentUsed,
                    "this payment was made for another session",
                ));
            }
            return self.decision(&p.key);
        }
        if let Some(id) = &p.payment_id
            && let Some(holder) = self.payment_ids.get(id)
        {
            if self.verifying(holder) {
                return PaymentDecision::Refused(being_verified());
            }
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::PaymentIdConflict,
                "this payment-identifier was used with another payload",
            ));
        }
        if let Some(holder) = self.claims.get(&(p.payer, p.nonce)) {
            // A payload still in its first attempt may yet fail verification
            // (a junk copy of this authorization, sent first): its claim is
            // not proof of use. Retry the same payload shortly.
            if self.verifying(holder) {
                return PaymentDecision::Refused(being_verified());
            }
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::PaymentUsed,
                "this authorization's nonce was already used",
            ));
        }
        let unix = self.unix_now(now);
        let window = unix
            .saturating_add(quote.max_timeout_seconds)
            .saturating_add(self.cfg.skew_secs);
        if p.valid_before > window {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::ValidityTooLong,
                format!(
                    "validBefore {} is more than maxTimeoutSeconds ({} s) ahead; sign with a shorter window",
                    p.valid_before, quote.max_timeout_seconds
                ),
            ));
        }
        if !self.sessions.contains_key(&quote.id) {
            if unix > quote.expires {
                return PaymentDecision::Refused(quote_expired());
            }
            if self.sessions.len() >= self.cfg.max_sessions {
                return PaymentDecision::Refused(Refusal::new(
                    ErrorCode::TooManySessions,
                    "session limit reached",
                ));
            }
            self.sessions
                .insert(quote.id.clone(), new_session(quote.clone()));
        }
        // An expired authorization can only be refused; claiming it would
        // hold a record whose every deadline has passed.
        if p.valid_before <= unix {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::PaymentInvalid,
                format!("the authorization expired (validBefore {})", p.valid_before),
            ));
        }
        let now_ms = self.unix_ms(now);
        let horizon = self.cfg.horizon_slices;
        let deadline = p.valid_before.saturating_add(self.cfg.skew_secs);
        let Some(s) = self.sessions.get_mut(&quote.id) else {
            return PaymentDecision::Refused(quote_expired());
        };
        if let Err(r) = s.state.admit_account(p.account.as_deref(), now_ms) {
            return PaymentDecision::Refused(r);
        }
        if let Err(r) = s
            .state
            .admit(&p.key, deadline, now_ms, s.quote.slice_seconds, horizon)
        {
            return PaymentDecision::Refused(r);
        }
        self.next_id += 1;
        let id = SettleId(self.next_id);
        let expires = p
            .valid_before
            .min(unix.saturating_add(MAX_RETENTION_SECS))
            .saturating_add(self.cfg.skew_secs)
            .saturating_add(SETTLING_TAIL_SECS);
        self.records.insert(
            p.key.clone(),
            Record {
                id,
                rec: PaymentRecord {
                    scheme: p.scheme.clone(),
                    session: quote.id.clone(),
                    payer: p.payer,
                    nonce: p.nonce,
                    amount: p.amount,
                    valid_before: p.valid_before,
                    payment_id: p.payment_id.clone(),
                    account: p.account.clone(),
                    status: PaymentStatus::Settling,
                    attempts: 0,
                    expires,
                    slice_seconds: quote.slice_seconds,
                    stream: quote.stream_id.clone(),
                },
                local: true,
                request: p.request,
                started: false,
            },
        );
        self.by_id.insert(id, p.key.clone());
        self.claims.insert((p.payer, p.nonce), p.key.clone());
        if let Some(pid) = p.payment_id {
            self.payment_ids.insert(pid, p.key.clone());
        }
        self.settling.insert((quote.id.clone(), p.key.clone()));
        self.record_expiry.insert((expires, p.key));
        PaymentDecision::Settle(id)
    }

    fn decision(&self, key: &PaymentKey) -> PaymentDecision {
        let Some(r) = self.records.get(key) else {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::FacilitatorUnavailable,
                "the facilitator could not be asked; nothing moved; retry the same payment",
            ));
        };
        match &r.rec.status {
            PaymentStatus::Settling | PaymentStatus::Retrying => PaymentDecision::Pending {
                id: r.id,
                retry_after: self.cfg.pending_retry_after,
            },
            PaymentStatus::Credited(c) => PaymentDecision::Credited(c.clone()),
            PaymentStatus::Refused(f) => PaymentDecision::Refused(f.clone()),
        }
    }

    /// The current answer for a payload (after waiting on its settlement).
    pub fn answer(&self, payment: &PaymentIn) -> PaymentDecision {
        self.decision(&payment.key)
    }

    /// Starts the first attempt of settlement `id` (decided by
    /// [`handle_payment`](Self::handle_payment)): call it once the decision
    /// is durable (committed to the store); the attempt leaves through
    /// [`poll_settle`](Self::poll_settle).
    pub fn start_settlement(&mut self, now: Instant, id: SettleId) {
        self.touch(now);
        let Some(r) = self.by_id.get(&id).and_then(|k| self.records.get_mut(k)) else {
            return;
        };
        if r.local && !r.started && r.rec.is_first_attempt() {
            r.started = true;
            self.queue_attempt(id);
        }
    }

    /// Whether `key` is a payload still in its first attempt: it may yet
    /// fail verification, so its claims are not proof of use.
    fn verifying(&self, key: &PaymentKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| r.rec.is_first_attempt())
    }

    /// Whether this endpoint runs the settlement of `key` now (a record in
    /// the store owned by this instance that it does not run has lost its
    /// task: the driver restarts it).
    pub fn runs(&self, key: &PaymentKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| r.local && r.rec.status.is_settling())
    }

    /// Queues the next attempt of a settlement this endpoint runs.
    pub(super) fn queue_attempt(&mut self, id: SettleId) {
        let Some(r) = self.by_id.get(&id).and_then(|k| self.records.get(k)) else {
            return;
        };
        if !(r.local && r.rec.status.is_settling()) {
            return;
        }
        let job = SettleJob {
            id,
            scheme: r.rec.scheme.clone(),
            attempt: r.rec.attempts,
            session: r.rec.session.clone(),
            stream: match self.stream_of(&r.rec.session) {
                s if s.is_empty() => r.rec.stream.clone(),
                s => s,
            },
            request: r.request.clone(),
        };
        self.jobs.push_back(job);
    }

    /// Gives up settlement `id` before anything was asked of the facilitator
    /// (its claim could not be committed to a shared store): as if never seen.
    pub fn abandon(&mut self, now: Instant, id: SettleId) {
        self.handle_settled(
            now,
            id,
            SettleOutcome::NotAttempted {
                reason: "abandoned before settling".into(),
            },
            0,
        );
    }

    /// The facilitator answered (or failed to) about settlement `id`.
    /// `head` is the session's stream's next sequence number now: paid time
    /// that starts now buys the events from there on.
    pub fn handle_settled(
        &mut self,
        now: Instant,
        id: SettleId,
        outcome: SettleOutcome,
        head: u64,
    ) {
        let state = self
            .by_id
            .get(&id)
            .and_then(|k| self.records.get(k))
            .and_then(|r| self.sessions.get(&r.rec.session))
            .map(|s| s.state.clone());
        if let Some(plan) = self.plan_settled(now, id, outcome, head, state) {
            self.apply_settled(now, id, plan);
        }
    }

    /// What the outcome of settlement `id` does to its record and to the
    /// session `state` (the store's copy when sharing one, else the local
    /// one), without changing anything. `None` when `id` is not settling here.
    pub fn plan_settled(
        &self,
        now: Instant,
        id: SettleId,
        outcome: SettleOutcome,
        head: u64,
        state: Option<SessionState>,
    ) -> Option<SettledPlan> {
        let key = self.by_id.get(&id)?.clone();
        let r = self.records.get(&key)?;
        if !r.local || !r.rec.status.is_settling() {
            return None;
        }
        let unix = self.unix_now(now);
        let now_ms = self.unix_ms(now);
        let slice_seconds = self
            .sessions
            .get(&r.rec.session)
            .map_or(r.rec.slice_seconds, |s| s.quote.slice_seconds);
        let mut rec = r.rec.clone();
        let mut session = state;
        let first = rec.attempts == 0;
        let mut unresolved = None;
        let outcome = match outcome {
            SettleOutcome::NotAttempted { reason } if !first => SettleOutcome::Unknown { reason },
            // An earlier attempt's fate is unknown: "nonce used" or "expired"
            // now does not say whether that attempt moved the money.
            SettleOutcome::Refused { message, .. } if !first => {
                unresolved = Some(format!("refused on retry: {message}"));
                SettleOutcome::Unknown { reason: message }
            }
            SettleOutcome::Settled { payer: Some(p), .. } if p != rec.payer => {
                unresolved = Some(format!("facilitator settled for payer {p}"));
                SettleOutcome::Unknown {
                    reason: p.to_string(),
                }
            }
            SettleOutcome::Settled {
                amount: Some(a), ..
            } if a != rec.amount => {
                unresolved = Some(format!("facilitator settled amount {a}"));
                SettleOutcome::Unknown {
                    reason: a.to_string(),
                }
            }
            o => o,
        };
        if unresolved.is_none()
            && matches!(
                outcome,
                SettleOutcome::Pending | SettleOutcome::Unknown { .. }
            )
            && unix > rec.valid_before.saturating_add(self.cfg.skew_secs)
        {
            unresolved = Some("no final answer before validBefore passed".into());
        }
        if unresolved.is_some() {
            // Nothing credited, claim kept. The client hears what it needs; the
            // facilitator's own words (which may name its infrastructure) go
            // to the operator.
            rec.expires = unix.saturating_add(UNRESOLVED_RETENTION_SECS);
            rec.status = PaymentStatus::Refused(Refusal::new(
                ErrorCode::SettlementUnknown,
                "the settlement's outcome could not be established; nothing was credited; \
                 the money may have moved: keep it counted, the operator reconciles it",
            ));
            if let Some(s) = session.as_mut() {
                s.release(&key);
            }
            return Some(SettledPlan {
                key,
                record: Some(rec),
                session,
                unresolved,
            });
        }
        let record = match outcome {
            SettleOutcome::NotAttempted { .. } => {
                if let Some(s) = session.as_mut() {
                    s.release(&key);
                }
                None
            }
            SettleOutcome::Forged { message } => {
                // Definite at any attempt: a forged payload never moved anything.
                rec.status =
                    PaymentStatus::Refused(Refusal::new(ErrorCode::PaymentInvalid, message));
                rec.expires = rec.expires.min(unix.saturating_add(REFUSED_RETENTION_SECS));
                if let Some(s) = session.as_mut() {
                    s.release(&key);
                }
                Some(rec)
            }
            SettleOutcome::Refused { code, message } => {
                rec.status = PaymentStatus::Refused(Refusal::new(code, message));
                rec.expires = rec.expires.min(unix.saturating_add(REFUSED_RETENTION_SECS));
                if let Some(s) = session.as_mut() {
                    s.release(&key);
                }
                Some(rec)
            }
            SettleOutcome::Settled { header, .. } => {
                let response = match session.as_mut() {
                    Some(s) => {
                        s.credit(&key, rec.account.as_deref(), now_ms, slice_seconds, head);
                        RenewResponse {
                            session_id: rec.session.clone(),
                            expires_at: s.expires_at(),
                            slice_seconds,
                            slices: s.slices,
                        }
                    }
                    // Swept while settling (cannot happen: in-flight sessions are kept).
                    None => RenewResponse {
                        session_id: rec.session.clone(),
                        expires_at: 0,
                        slice_seconds: 0,
                        slices: 0,
                    },
                };
                rec.expires = rec
                    .expires
                    .saturating_sub(SETTLING_TAIL_SECS)
                    .max(unix.saturating_add(CREDITED_RETENTION_SECS));
                rec.status = PaymentStatus::Credited(Credit {
                    response,
                    settlement: header,
                });
                Some(rec)
            }
            SettleOutcome::Pending | SettleOutcome::Unknown { .. } => {
                rec.status = PaymentStatus::Retrying;
                rec.attempts += 1;
                // Nothing shared changes while retrying.
                session = None;
                Some(rec)
            }
        };
        Some(SettledPlan {
            key,
            record,
            session,
            unresolved,
        })
    }

    /// Makes a planned outcome visible: the record's answer, the session's
    /// paid time, socket notices and operator events.
    pub fn apply_settled(&mut self, now: Instant, id: SettleId, plan: SettledPlan) {
        self.touch(now);
        let SettledPlan {
            key,
            record,
            session: state,
            unresolved,
        } = plan;
        let Some(r) = self.records.get(&key) else {
            return;
        };
        if r.id != id || !r.local || !r.rec.status.is_settling() {
            return;
        }
        let session = r.rec.session.clone();
        let (payer, nonce) = (r.rec.payer, r.rec.nonce);
        let Some(rec) = record else {
            // Nothing moved: forget the payload entirely; a retry starts over.
            self.settling.remove(&(session.clone(), key.clone()));
            self.forget(&key);
            self.import_or_release(now, &session, &key, state, true);
            return;
        };
        let status = rec.status.clone();
        let holds_claim = rec.holds_claim();
        let (old_expires, expires) = (r.rec.expires, rec.expires);
        if let Some(r) = self.records.get_mut(&key) {
            if !rec.status.is_settling() {
                r.request = None;
            }
            r.rec = rec;
        }
        if !holds_claim {
            self.release_claims(&key);
        }
        if old_expires != expires {
            self.record_expiry.remove(&(old_expires, key.clone()));
            self.record_expiry.insert((expires, key.clone()));
        }
        if status.is_settling() {
            self.retries.insert((now + self.cfg.settle_retry, id));
            return;
        }
        self.settling.remove(&(session.clone(), key.clone()));
        let stream = self.stream_of(&session);
        match (&status, unresolved) {
            (_, Some(reason)) => {
                self.import_or_release(now, &session, &key, state, false);
                self.events.push_back(ServerEvent::Unresolved {
                    session,
                    payer,
                    nonce,
                    reason,
                });
            }
            (PaymentStatus::Credited(c), None) => {
                let slices = c.response.slices;
                let amount = self.records.get(&key).map(|r| r.rec.amount);
                self.import_or_release(now, &session, &key, state, false);
                self.events.push_back(ServerEvent::Credited {
                    session,
                    stream,
                    amount: amount.unwrap_or_default(),
                    slices,
                });
            }
            (PaymentStatus::Refused(f), None) => {
                let code = f.code.clone();
                self.import_or_release(now, &session, &key, state, true);
                self.events.push_back(ServerEvent::Refused {
                    session,
                    stream,
                    code,
                });
            }
            _ => {}
        }
    }

    /// Applies a planned session state (or, without one, releases the
    /// payment's in-flight slot locally). A failed first payment leaves no
    /// session behind when `drop_unused`.
    fn import_or_release(
        &mut self,
        now: Instant,
        session: &str,
        key: &PaymentKey,
        state: Option<SessionState>,
        drop_unused: bool,
    ) {
        match state {
            Some(st) => self.import_session(now, session, None, st),
            None => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.state.release(key);
                }
            }
        }
        let now_ms = self.unix_ms(now);
        let unused = self.sessions.get(session).is_some_and(|s| {
            s.state.slices == 0
                && s.state.in_flight.is_empty()
                && s.conn.is_none()
                && !s.state.is_paid(now_ms)
        });
        if drop_unused && unused {
            self.remove_session(session);
        }
        self.reschedule(session);
    }

    pub(super) fn forget(&mut self, key: &PaymentKey) {
        self.release_claims(key);
        if let Some(r) = self.records.remove(key) {
            self.settling.remove(&(r.rec.session.clone(), key.clone()));
            self.by_id.remove(&r.id);
            self.record_expiry.remove(&(r.rec.expires, key.clone()));
        }
    }

    /// Frees the authorization and the payment identifier `key` holds.
    pub(super) fn release_claims(&mut self, key: &PaymentKey) {
        let Some(r) = self.records.get(key) else {
            return;
        };
        let claim = (r.rec.payer, r.rec.nonce);
        if self.claims.get(&claim) == Some(key) {
            self.claims.remove(&claim);
        }
        if let Some(pid) = &r.rec.payment_id
            && self.payment_ids.get(pid) == Some(key)
        {
            let pid = pid.clone();
            self.payment_ids.remove(&pid);
        }
    }
}

fn being_verified() -> Refusal {
    Refusal::new(
        ErrorCode::PaymentPending,
        "another payload with this authorization is being verified; \
         send the same payment again shortly",
    )
}
