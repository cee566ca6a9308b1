//! The server role: one [`ServerEndpoint`] owning every quote's session, the
//! nonce claims, the payment pipeline with its recorded settlement outcomes,
//! and resume planning. Sans I/O: the reference server (`x402-server`) and
//! the simulation in this crate's tests drive the same code.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use x402_types::{
    Address, Amount, CloseCode, ErrorCode, Hello, Nonce, PathVersion, PaymentPayload,
    RenewResponse, ServerMessage,
};

pub use crate::client::ConnId;

/// A definite answer refusing a request, in the shared vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The code (its [`ErrorCode::status`] is the HTTP status).
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// Identifies one payload for idempotency: its authorization nonce and signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentKey(String);

/// Identifies one settlement the driver runs for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SettleId(pub u64);

/// What the endpoint needs of a payment (read from an `exact` EVM payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIn {
    /// Idempotency key of the payload.
    pub key: PaymentKey,
    /// The authorizer (`from`).
    pub payer: Address,
    /// The authorization nonce.
    pub nonce: Nonce,
    /// The amount authorized.
    pub amount: Amount,
    /// `validBefore` (unix seconds, saturated).
    pub valid_before: u64,
    /// The x402 `payment-identifier`, if the client sent one.
    pub payment_id: Option<String>,
}

impl PaymentIn {
    /// Reads a payload; only the `exact` EVM scheme is sold.
    pub fn from_payload(p: &PaymentPayload) -> Result<Self, Refusal> {
        let evm = p.exact_evm().ok_or_else(|| {
            Refusal::new(
                ErrorCode::PaymentInvalid,
                "only the exact EVM scheme is accepted",
            )
        })?;
        let payment_id = p
            .payment_identifier()
            .map_err(|e| Refusal::new(ErrorCode::PaymentInvalid, e.to_string()))?
            .map(str::to_string);
        let a = &evm.authorization;
        Ok(PaymentIn {
            key: PaymentKey(format!("{}:{}", a.nonce, evm.signature)),
            payer: a.from,
            nonce: a.nonce,
            amount: a.value,
            valid_before: a.valid_before.to_u64().unwrap_or(u64::MAX),
            payment_id,
        })
    }
}

/// A verified token's claims: the quote a session is bought under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Quote id; it is also the session id.
    pub id: String,
    /// Stream.
    pub stream_id: String,
    /// Path version.
    pub version: PathVersion,
    /// Unpaid quote expiry (unix seconds).
    pub expires: u64,
    /// Seconds one payment buys.
    pub slice_seconds: u64,
    /// Renew URL of the session (for `hello`).
    pub renew_url: String,
}

/// The endpoint's rules.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Most sessions held at once.
    pub max_sessions: usize,
    /// Most slices that may be paid ahead of now.
    pub horizon_slices: u64,
    /// Wait this long after expiry for an in-flight renewal before closing 4402.
    pub grace: Duration,
    /// Send `expiring` at most this long before expiry (and at most a third of a slice).
    pub expiring_lead: Duration,
    /// Allowed clock skew: records outlive `validBefore` by this much.
    pub skew_secs: u64,
    /// Sessions are kept this long after their paid time ends.
    pub linger_secs: u64,
    /// `Retry-After` of a pending answer (seconds).
    pub pending_retry_after: u64,
    /// Delay before asking the facilitator again about a pending or unknown settlement.
    pub settle_retry: Duration,
    /// How often idle sessions and expired records are swept.
    pub sweep_interval: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_sessions: 100_000,
            horizon_slices: 2,
            grace: Duration::from_secs(5),
            expiring_lead: Duration::from_secs(10),
            skew_secs: 60,
            linger_secs: 600,
            pending_retry_after: 2,
            settle_retry: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// A credited payment's answer, recorded so that a retry gets it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// The renew answer.
    pub response: RenewResponse,
    /// The x402 settlement response header value, if the facilitator gave one.
    pub settlement: Option<String>,
}

/// What [`ServerEndpoint::handle_payment`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentDecision {
    /// A new payment: verify and settle it, then report with
    /// [`ServerEndpoint::handle_settled`].
    Settle(SettleId),
    /// Its settlement is under way: wait for it, or answer 202
    /// `payment_pending` with `Retry-After: retry_after`.
    Pending {
        /// The settlement.
        id: SettleId,
        /// Seconds.
        retry_after: u64,
    },
    /// Settled and credited (now or before): the recorded answer.
    Credited(Credit),
    /// Refused.
    Refused(Refusal),
}

/// The facilitator's answer about a settlement, as the driver read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// The facilitator could not be asked or verification could not run:
    /// nothing can have moved (only valid on a first attempt).
    NotAttempted {
        /// Why.
        reason: String,
    },
    /// A definite refusal.
    Refused {
        /// Usually [`ErrorCode::PaymentInvalid`] or [`ErrorCode::PaymentUsed`].
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// Settled.
    Settled {
        /// The x402 settlement response header value.
        header: Option<String>,
        /// The payer the facilitator reports, if any.
        payer: Option<Address>,
        /// The amount the facilitator reports, if any.
        amount: Option<Amount>,
    },
    /// Broadcast but not final (`settlement_pending`): settle again with the same payload.
    Pending,
    /// The answer was lost (timeout, garbage, connection cut after sending):
    /// money may have moved. Settle again with the same payload.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// A settlement the driver must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleJob {
    /// The settlement.
    pub id: SettleId,
    /// 0 for the first attempt (verify, then settle); later attempts settle the same payload again.
    pub attempt: u32,
}

/// Something the driver must send on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerTransmit {
    /// Send a message.
    Message {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: ServerMessage,
    },
    /// Events before `seq` were published while the session was unpaid: skip
    /// them and tell the client how many (`events_skipped`).
    Skip {
        /// Connection.
        conn: ConnId,
        /// First paid sequence number.
        seq: u64,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
        /// Code.
        code: CloseCode,
    },
}

/// Something operators want to know (logs, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A settled payment was credited to a session.
    Credited {
        /// Session.
        session: String,
        /// Its stream.
        stream: String,
        /// Amount.
        amount: Amount,
        /// Slices bought by the session so far.
        slices: u64,
    },
    /// A payment was definitely refused.
    Refused {
        /// Session.
        session: String,
        /// Its stream.
        stream: String,
        /// Code.
        code: ErrorCode,
    },
    /// A settlement's outcome could not be established: money may have moved,
    /// nothing was credited. An operator must reconcile it.
    Unresolved {
        /// Session.
        session: String,
        /// Payer.
        payer: Address,
        /// Nonce.
        nonce: Nonce,
        /// Why.
        reason: String,
    },
}

/// Where a stream's replay buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    /// Sequence number the next event will get.
    pub next_seq: u64,
    /// Oldest sequence number still in the replay buffer.
    pub oldest_seq: u64,
}

/// A connection that was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The first message.
    pub hello: Hello,
    /// Deliver from this sequence number.
    pub start: u64,
    /// Events the client asked for that the replay buffer no longer holds (`events_lost`).
    pub lost: u64,
    /// Events the client asked for that were published while it had not paid (`events_skipped`).
    pub skipped: u64,
}

/// Counts, for health checks, tests and the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Sessions held.
    pub sessions: usize,
    /// Live connections.
    pub connections: usize,
    /// Payment records held.
    pub records: usize,
    /// Nonce claims held.
    pub claims: usize,
    /// Settlements in flight.
    pub settling: usize,
}

#[derive(Debug)]
struct Session {
    quote: Quote,
    paid_until_ms: Option<u128>,
    slices: u64,
    /// Events below this were not paid for.
    floor_seq: u64,
    in_flight: u32,
    conn: Option<ConnId>,
    connected_before: bool,
    expiring_sent: bool,
    expired_sent: bool,
    timer: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordState {
    Settling,
    Retrying,
    Credited(Credit),
    Refused(Refusal),
}

#[derive(Debug)]
struct Record {
    id: SettleId,
    session: String,
    payer: Address,
    nonce: Nonce,
    amount: Amount,
    valid_before: u64,
    payment_id: Option<String>,
    state: RecordState,
    attempts: u32,
    expires: u64,
}

/// The server's protocol, sans I/O: quotes and sessions, nonce claims, the
/// payment pipeline, paid time, expiry and resume planning.
///
/// Driving it:
/// 1. A payment arrives (upgrade or renew): [`handle_payment`](Self::handle_payment).
///    On [`PaymentDecision::Settle`] run verify and settle (outside any lock)
///    and report with [`handle_settled`](Self::handle_settled); the settlement
///    keeps going when the request that started it gives up. Answer the
///    request with [`answer`](Self::answer) once it is not pending, or with
///    202 `payment_pending` when the wait is over.
/// 2. A socket upgrade: [`check_connect`](Self::check_connect) before the 101,
///    [`connect`](Self::connect) after it, [`disconnect`](Self::disconnect)
///    when it ends. Deliver events only before
///    [`deliver_until`](Self::deliver_until).
/// 3. After every input drain [`poll_transmit`](Self::poll_transmit),
///    [`poll_settle`](Self::poll_settle) and [`poll_event`](Self::poll_event);
///    call [`handle_timeout`](Self::handle_timeout) at
///    [`poll_timeout`](Self::poll_timeout).
///
/// The endpoint never reads a clock: wall time is derived from the anchor
/// given to [`new`](Self::new).
#[derive(Debug)]
pub struct ServerEndpoint {
    cfg: EndpointConfig,
    anchor: (Instant, u64),
    sessions: HashMap<String, Session>,
    conns: HashMap<ConnId, String>,
    records: HashMap<PaymentKey, Record>,
    by_id: HashMap<SettleId, PaymentKey>,
    claims: HashMap<(Address, Nonce), PaymentKey>,
    payment_ids: HashMap<String, PaymentKey>,
    record_expiry: BTreeSet<(u64, PaymentKey)>,
    timers: BTreeSet<(Instant, String)>,
    retries: BTreeSet<(Instant, SettleId)>,
    next_sweep: Instant,
    next_id: u64,
    settling: usize,
    transmits: VecDeque<ServerTransmit>,
    jobs: VecDeque<SettleJob>,
    events: VecDeque<ServerEvent>,
    last_now: Instant,
}

/// Records of refused payloads are kept this long, so a retry gets the same answer.
const REFUSED_RETENTION_SECS: u64 = 120;
/// No record outlives this, whatever `validBefore` says.
const MAX_RETENTION_SECS: u64 = 24 * 3600;

impl ServerEndpoint {
    /// A new endpoint; `unix_now` is the wall time (unix seconds) at `now`.
    pub fn new(cfg: EndpointConfig, now: Instant, unix_now: u64) -> Self {
        ServerEndpoint {
            next_sweep: now + cfg.sweep_interval,
            cfg,
            anchor: (now, unix_now),
            sessions: HashMap::new(),
            conns: HashMap::new(),
            records: HashMap::new(),
            by_id: HashMap::new(),
            claims: HashMap::new(),
            payment_ids: HashMap::new(),
            record_expiry: BTreeSet::new(),
            timers: BTreeSet::new(),
            retries: BTreeSet::new(),
            next_id: 0,
            settling: 0,
            transmits: VecDeque::new(),
            jobs: VecDeque::new(),
            events: VecDeque::new(),
            last_now: now,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// Wall time (unix seconds) at `now`, on the endpoint's anchor.
    pub fn unix_now(&self, now: Instant) -> u64 {
        (self.unix_ms(now) / 1000) as u64
    }

    fn unix_ms(&self, now: Instant) -> u128 {
        let (base, unix) = self.anchor;
        u128::from(unix) * 1000 + now.saturating_duration_since(base).as_millis()
    }

    fn at(&self, unix_ms: u128) -> Instant {
        let (base, unix) = self.anchor;
        let ms = unix_ms.saturating_sub(u128::from(unix) * 1000);
        base + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX / 4))
    }

    fn touch(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// Counts.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            sessions: self.sessions.len(),
            connections: self.conns.len(),
            records: self.records.len(),
            claims: self.claims.len(),
            settling: self.settling,
        }
    }

    /// Slices bought by a session (0 if unknown).
    pub fn slices(&self, session: &str) -> u64 {
        self.sessions.get(session).map_or(0, |s| s.slices)
    }

    /// End of a session's paid time in unix seconds (0 if never paid).
    pub fn expires_at(&self, session: &str) -> u64 {
        self.sessions.get(session).map_or(0, expires_at)
    }

    fn response(s: &Session) -> RenewResponse {
        RenewResponse {
            session_id: s.quote.id.clone(),
            expires_at: expires_at(s),
            slice_seconds: s.quote.slice_seconds,
            slices: s.slices,
        }
    }

    // ----- payments -----

    /// A payment for the session of `quote` arrived.
    pub fn handle_payment(&mut self, now: Instant, quote: &Quote, p: PaymentIn) -> PaymentDecision {
        self.touch(now);
        if let Some(r) = self.records.get(&p.key) {
            if r.session != quote.id {
                return PaymentDecision::Refused(Refusal::new(
                    ErrorCode::PaymentUsed,
                    "this payment was made for another session",
                ));
            }
            return self.decision(&p.key);
        }
        if let Some(id) = &p.payment_id
            && self.payment_ids.contains_key(id)
        {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::PaymentIdConflict,
                "this payment-identifier was used with another payload",
            ));
        }
        if self.claims.contains_key(&(p.payer, p.nonce)) {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::PaymentUsed,
                "this authorization's nonce was already used",
            ));
        }
        let unix = self.unix_now(now);
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
        let now_ms = self.unix_ms(now);
        let horizon = self.cfg.horizon_slices.max(1);
        let Some(s) = self.sessions.get_mut(&quote.id) else {
            return PaymentDecision::Refused(quote_expired());
        };
        let remaining = s.paid_until_ms.map_or(0, |p| p.saturating_sub(now_ms));
        let slice_ms = u128::from(s.quote.slice_seconds) * 1000;
        if remaining + slice_ms * (u128::from(s.in_flight) + 1) > slice_ms * u128::from(horizon) {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::HorizonExceeded,
                format!("prepaid horizon of {horizon} slices reached; renew later"),
            ));
        }
        s.in_flight += 1;
        self.next_id += 1;
        let id = SettleId(self.next_id);
        let expires = p
            .valid_before
            .min(unix.saturating_add(MAX_RETENTION_SECS))
            .saturating_add(self.cfg.skew_secs);
        self.records.insert(
            p.key.clone(),
            Record {
                id,
                session: quote.id.clone(),
                payer: p.payer,
                nonce: p.nonce,
                amount: p.amount,
                valid_before: p.valid_before,
                payment_id: p.payment_id.clone(),
                state: RecordState::Settling,
                attempts: 0,
                expires,
            },
        );
        self.by_id.insert(id, p.key.clone());
        self.claims.insert((p.payer, p.nonce), p.key.clone());
        if let Some(pid) = p.payment_id {
            self.payment_ids.insert(pid, p.key.clone());
        }
        self.record_expiry.insert((expires, p.key));
        self.settling += 1;
        PaymentDecision::Settle(id)
    }

    fn decision(&self, key: &PaymentKey) -> PaymentDecision {
        let Some(r) = self.records.get(key) else {
            return PaymentDecision::Refused(Refusal::new(
                ErrorCode::FacilitatorUnavailable,
                "the facilitator could not be asked; nothing moved; retry the same payment",
            ));
        };
        match &r.state {
            RecordState::Settling | RecordState::Retrying => PaymentDecision::Pending {
                id: r.id,
                retry_after: self.cfg.pending_retry_after,
            },
            RecordState::Credited(c) => PaymentDecision::Credited(c.clone()),
            RecordState::Refused(f) => PaymentDecision::Refused(f.clone()),
        }
    }

    /// The current answer for a payload (after waiting on its settlement).
    pub fn answer(&self, payment: &PaymentIn) -> PaymentDecision {
        self.decision(&payment.key)
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
        self.touch(now);
        let Some(key) = self.by_id.get(&id).cloned() else {
            return;
        };
        let unix = self.unix_now(now);
        let Some(r) = self.records.get_mut(&key) else {
            return;
        };
        if !matches!(r.state, RecordState::Settling | RecordState::Retrying) {
            return;
        }
        let first = r.attempts == 0;
        let (payer, amount, valid_before) = (r.payer, r.amount, r.valid_before);
        let unresolved = |why: String| SettleOutcome::Unknown { reason: why };
        let outcome = match outcome {
            SettleOutcome::NotAttempted { reason } if !first => unresolved(reason),
            SettleOutcome::Refused { message, .. } if !first => {
                // An earlier attempt's fate is unknown: "nonce used" or "expired"
                // now does not say whether that attempt moved the money.
                return self.unresolved(now, &key, format!("refused on retry: {message}"));
            }
            SettleOutcome::Settled { payer: Some(p), .. } if p != payer => {
                return self.unresolved(now, &key, format!("facilitator settled for payer {p}"));
            }
            SettleOutcome::Settled {
                amount: Some(a), ..
            } if a != amount => {
                return self.unresolved(now, &key, format!("facilitator settled amount {a}"));
            }
            o => o,
        };
        match outcome {
            SettleOutcome::NotAttempted { .. } => {
                // Nothing moved: forget the payload entirely; a retry starts over.
                let session = r.session.clone();
                self.forget(&key);
                self.settling -= 1;
                self.release_in_flight(now, &session, true);
            }
            SettleOutcome::Refused { code, message } => {
                let session = r.session.clone();
                r.state = RecordState::Refused(Refusal::new(code.clone(), message));
                self.settling -= 1;
                self.shorten(&key, unix.saturating_add(REFUSED_RETENTION_SECS));
                let stream = self.stream_of(&session);
                self.release_in_flight(now, &session, true);
                self.events.push_back(ServerEvent::Refused {
                    session,
                    stream,
                    code,
                });
            }
            SettleOutcome::Settled { header, .. } => {
                let session = r.session.clone();
                self.settling -= 1;
                let credit = self.credit(now, &session, head, header);
                if let Some(r) = self.records.get_mut(&key) {
                    r.state = RecordState::Credited(credit.clone());
                }
                let stream = self.stream_of(&session);
                self.events.push_back(ServerEvent::Credited {
                    session,
                    stream,
                    amount,
                    slices: credit.response.slices,
                });
            }
            SettleOutcome::Pending | SettleOutcome::Unknown { .. } => {
                if unix > valid_before.saturating_add(self.cfg.skew_secs) {
                    return self.unresolved(
                        now,
                        &key,
                        "no final answer before validBefore passed".into(),
                    );
                }
                r.state = RecordState::Retrying;
                r.attempts += 1;
                self.retries.insert((now + self.cfg.settle_retry, id));
            }
        }
    }

    /// Finishes a record as "unknown": nothing credited, claim kept, operators told.
    fn unresolved(&mut self, now: Instant, key: &PaymentKey, reason: String) {
        let Some(r) = self.records.get_mut(key) else {
            return;
        };
        // The client hears what it needs; the facilitator's own words (which may
        // name its infrastructure) go to the operator through the event.
        r.state = RecordState::Refused(Refusal::new(
            ErrorCode::SettlementUnknown,
            "the settlement's outcome could not be established; nothing was credited; \
             the money may have moved: keep it counted, the operator reconciles it",
        ));
        let (session, payer, nonce) = (r.session.clone(), r.payer, r.nonce);
        self.settling -= 1;
        self.release_in_flight(now, &session, false);
        self.events.push_back(ServerEvent::Unresolved {
            session,
            payer,
            nonce,
            reason,
        });
    }

    fn shorten(&mut self, key: &PaymentKey, until: u64) {
        if let Some(r) = self.records.get_mut(key)
            && until < r.expires
        {
            self.record_expiry.remove(&(r.expires, key.clone()));
            r.expires = until;
            self.record_expiry.insert((until, key.clone()));
        }
    }

    fn forget(&mut self, key: &PaymentKey) {
        if let Some(r) = self.records.remove(key) {
            self.by_id.remove(&r.id);
            self.record_expiry.remove(&(r.expires, key.clone()));
            if self.claims.get(&(r.payer, r.nonce)) == Some(key) {
                self.claims.remove(&(r.payer, r.nonce));
            }
            if let Some(pid) = r.payment_id
                && self.payment_ids.get(&pid) == Some(key)
            {
                self.payment_ids.remove(&pid);
            }
        }
    }

    fn release_in_flight(&mut self, now: Instant, session: &str, drop_unused: bool) {
        let session = session.to_string();
        let now_ms = self.unix_ms(now);
        let unused = match self.sessions.get_mut(&session) {
            Some(s) => {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.slices == 0
                    && s.in_flight == 0
                    && s.conn.is_none()
                    && s.paid_until_ms.is_none_or(|p| p <= now_ms)
            }
            None => false,
        };
        // A failed first payment leaves no state behind.
        if drop_unused && unused {
            self.remove_session(&session);
        }
        self.reschedule(&session);
    }

    fn credit(&mut self, now: Instant, session: &str, head: u64, header: Option<String>) -> Credit {
        let now_ms = self.unix_ms(now);
        let Some(s) = self.sessions.get_mut(session) else {
            // Swept while settling (cannot happen: in-flight sessions are kept).
            return Credit {
                response: RenewResponse {
                    session_id: session.to_string(),
                    expires_at: 0,
                    slice_seconds: 0,
                    slices: 0,
                },
                settlement: header,
            };
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        let lapsed = s.paid_until_ms.is_none_or(|p| p <= now_ms);
        let base = s.paid_until_ms.map_or(now_ms, |p| p.max(now_ms));
        s.paid_until_ms = Some(base + u128::from(s.quote.slice_seconds) * 1000);
        s.slices += 1;
        s.expiring_sent = false;
        s.expired_sent = false;
        if lapsed && head > s.floor_seq {
            // Paid time starts now: what was published before is not bought.
            s.floor_seq = head;
            if let Some(conn) = s.conn {
                self.transmits
                    .push_back(ServerTransmit::Skip { conn, seq: head });
            }
        }
        let response = Self::response(s);
        if let Some(conn) = s.conn {
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Renewed {
                    expires_at: response.expires_at,
                    slices: response.slices,
                },
            });
        }
        self.reschedule(session);
        Credit {
            response,
            settlement: header,
        }
    }

    // ----- sockets -----

    /// Whether a socket upgrade for `quote` may proceed (checked before the
    /// 101 is written; [`connect`](Self::connect) follows once it is).
    pub fn check_connect(&self, now: Instant, quote: &Quote) -> Result<(), Refusal> {
        let now_ms = self.unix_ms(now);
        match self.sessions.get(&quote.id) {
            Some(s) if s.paid_until_ms.is_some_and(|p| p > now_ms) => Ok(()),
            Some(_) => Err(payment_required("no paid time left: pay for a slice")),
            None if self.unix_now(now) > quote.expires => Err(quote_expired()),
            None => Err(payment_required("a payment is required")),
        }
    }

    /// A socket upgrade for `quote` completed. The session must hold paid
    /// time; a previous socket is closed with 4409. `from` is the client's
    /// resume point; delivery starts no earlier than the session's first paid
    /// event and no earlier than the replay buffer's oldest.
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
        if let Some(old) = s.conn.replace(conn) {
            self.conns.remove(&old);
            self.transmits.push_back(ServerTransmit::Close {
                conn: old,
                code: CloseCode::Superseded,
            });
        }
        let resumed = s.connected_before;
        s.connected_before = true;
        // Without a resume point a first connection gets what was published
        // since its first paid moment (a slow settlement does not cost events);
        // a later one starts live.
        let default = if resumed { head.next_seq } else { s.floor_seq };
        let mut start = from.unwrap_or(default).min(head.next_seq);
        let mut skipped = 0;
        if start < s.floor_seq {
            skipped = s.floor_seq - start;
            start = s.floor_seq;
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
            expires_at: expires_at(s),
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
        if let Some(s) = self.sessions.get_mut(&session)
            && s.conn == Some(conn)
        {
            s.conn = None;
        }
        self.reschedule(&session);
    }

    /// Events may be sent on `conn` until this instant (the end of paid time), if it is live.
    pub fn deliver_until(&self, conn: ConnId) -> Option<Instant> {
        let s = self.sessions.get(self.conns.get(&conn)?)?;
        (s.conn == Some(conn)).then(|| self.at(s.paid_until_ms.unwrap_or(0)))
    }

    // ----- outputs and time -----

    /// The next socket output.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.transmits.pop_front()
    }

    /// The next settlement to run (retries of pending or unknown outcomes).
    #[must_use]
    pub fn poll_settle(&mut self) -> Option<SettleJob> {
        self.jobs.pop_front()
    }

    /// The next notice for operators.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether settlement `id` still waits for a final answer (the driver
    /// keeps its payload until it does not).
    pub fn is_settling(&self, id: SettleId) -> bool {
        self.by_id
            .get(&id)
            .and_then(|k| self.records.get(k))
            .is_some_and(|r| matches!(r.state, RecordState::Settling | RecordState::Retrying))
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(t, _)| *t),
            self.retries.first().map(|(t, _)| *t),
            Some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(self.last_now))
    }

    /// Timers: `expiring`, `expired` and the 4402 close of sessions;
    /// settlement retries; sweeping idle sessions and expired records.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        while let Some((t, id)) = self.retries.first().cloned()
            && t <= now
        {
            self.retries.remove(&(t, id));
            if let Some(r) = self.by_id.get(&id).and_then(|k| self.records.get(k))
                && r.state == RecordState::Retrying
            {
                self.jobs.push_back(SettleJob {
                    id,
                    attempt: r.attempts,
                });
            }
        }
        while let Some((t, session)) = self.timers.first().cloned()
            && t <= now
        {
            self.timers.remove(&(t, session.clone()));
            if let Some(s) = self.sessions.get_mut(&session) {
                s.timer = None;
            }
            self.session_timeout(now, &session);
            self.reschedule(&session);
        }
        if self.next_sweep <= now {
            self.next_sweep = now + self.cfg.sweep_interval;
            self.sweep(now);
        }
    }

    /// How long before the end of paid time `expiring` is sent: the configured
    /// lead, at most a third of a slice.
    fn expiring_lead(&self, s: &Session) -> Duration {
        self.cfg.expiring_lead.min(Duration::from_millis(
            s.quote.slice_seconds.saturating_mul(333),
        ))
    }

    /// The stream a session buys ("" once it is gone).
    fn stream_of(&self, session: &str) -> String {
        self.sessions
            .get(session)
            .map(|s| s.quote.stream_id.clone())
            .unwrap_or_default()
    }

    fn session_timeout(&mut self, now: Instant, session: &str) {
        let grace = self.cfg.grace;
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let (Some(conn), Some(p)) = (s.conn, s.paid_until_ms) else {
            return;
        };
        let lead = self.expiring_lead(s);
        let until = self.at(p);
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let exp = expires_at(s);
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
        if s.expired_sent && now >= until + grace && s.in_flight == 0 {
            s.conn = None;
            self.conns.remove(&conn);
            self.transmits.push_back(ServerTransmit::Close {
                conn,
                code: CloseCode::PaymentExpired,
            });
        }
    }

    fn reschedule(&mut self, session: &str) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let lead = self.expiring_lead(s);
        let next = match (s.conn, s.paid_until_ms) {
            (Some(_), Some(p)) => {
                let until = self.at(p);
                Some(if !s.expiring_sent {
                    until.checked_sub(lead).unwrap_or(until)
                } else if !s.expired_sent {
                    until
                } else {
                    until + self.cfg.grace
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

    fn remove_session(&mut self, session: &str) {
        if let Some(s) = self.sessions.remove(session) {
            if let Some(t) = s.timer {
                self.timers.remove(&(t, session.to_string()));
            }
            if let Some(c) = s.conn {
                self.conns.remove(&c);
            }
        }
    }

    /// Drops idle sessions past their linger and records past their expiry.
    fn sweep(&mut self, now: Instant) {
        let unix = self.unix_now(now);
        let now_ms = self.unix_ms(now);
        let linger = self.cfg.linger_secs;
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let idle = s.conn.is_none()
                    && s.in_flight == 0
                    && s.paid_until_ms.is_none_or(|p| p <= now_ms);
                let end = s.quote.expires.max(expires_at(s).saturating_add(linger));
                idle && unix > end
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            self.remove_session(&k);
        }
        while let Some((exp, key)) = self.record_expiry.first().cloned()
            && exp < unix
        {
            self.record_expiry.remove(&(exp, key.clone()));
            let settling = self
                .records
                .get(&key)
                .is_some_and(|r| matches!(r.state, RecordState::Settling | RecordState::Retrying));
            if settling {
                // Resolved by its own deadline; look again later.
                self.record_expiry.insert((unix + self.cfg.skew_secs, key));
                break;
            }
            self.forget(&key);
        }
    }
}

fn new_session(quote: Quote) -> Session {
    Session {
        quote,
        paid_until_ms: None,
        slices: 0,
        floor_seq: 0,
        in_flight: 0,
        conn: None,
        connected_before: false,
        expiring_sent: false,
        expired_sent: false,
        timer: None,
    }
}

fn expires_at(s: &Session) -> u64 {
    s.paid_until_ms
        .map_or(0, |ms| u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX))
}

fn quote_expired() -> Refusal {
    Refusal::new(
        ErrorCode::QuoteExpired,
        "the unpaid quote expired; request the schema again",
    )
}

fn payment_required(msg: &str) -> Refusal {
    Refusal::new(ErrorCode::PaymentRequired, msg)
}
