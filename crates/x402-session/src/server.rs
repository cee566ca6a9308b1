//! The server role: one [`ServerEndpoint`] owning every quote's session, the
//! nonce claims, the payment pipeline with its recorded settlement outcomes,
//! and resume planning. Sans I/O: the reference server (`x402-server`) and
//! the simulation in this crate's tests drive the same code.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use x402_types::{
    Address, Amount, CloseCode, ErrorCode, Hello, Nonce, PathVersion, PaymentPayload,
    RenewResponse, ServerMessage,
};

pub use crate::client::ConnId;

/// A definite answer refusing a request, in the shared vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentKey(String);

impl PaymentKey {
    /// The key as text (a store's key material).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from a store.
    pub fn from_stored(s: String) -> Self {
        PaymentKey(s)
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    /// Credits one settled slice for `key`: paid time grows by a slice from
    /// the later of now and the current end. When paid time had lapsed,
    /// events published before `head` are not bought (the floor moves).
    pub fn credit(&mut self, key: &PaymentKey, now_ms: u64, slice_seconds: u64, head: u64) {
        self.in_flight.remove(key);
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

/// A payload's record: its claim and its settlement's outcome. Serializable,
/// so a store can share it between instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
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
    /// Where the settlement stands.
    pub status: PaymentStatus,
    /// Settlement attempts whose answer was pending or lost.
    pub attempts: u32,
    /// Forgotten after this unix second.
    pub expires: u64,
}

/// What a settlement's outcome does, computed by
/// [`ServerEndpoint::plan_settled`] without changing the endpoint, so that a
/// shared store can commit it before [`ServerEndpoint::apply_settled`] makes
/// it visible.
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

#[derive(Debug)]
struct Session {
    quote: Quote,
    state: SessionState,
    conn: Option<ConnId>,
    /// `state.connections` when `conn` connected.
    conn_gen: u64,
    expiring_sent: bool,
    expired_sent: bool,
    timer: Option<Instant>,
}

#[derive(Debug)]
struct Record {
    id: SettleId,
    rec: PaymentRecord,
    /// This endpoint runs its settlement (else another instance does).
    local: bool,
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
/// Several instances sharing a store: before deciding, load the shared
/// [`SessionState`] and [`PaymentRecord`]s and
/// [`import_session`](Self::import_session) /
/// [`import_record`](Self::import_record) them; commit what
/// [`export_session`](Self::export_session) / [`export_record`](Self::export_record)
/// give after [`handle_payment`](Self::handle_payment) (or
/// [`abandon`](Self::abandon) on a conflict); split settlement outcomes into
/// [`plan_settled`](Self::plan_settled), a commit, and
/// [`apply_settled`](Self::apply_settled). The rules stay here either way.
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
        Self::with_unix_ms(cfg, now, unix_now.saturating_mul(1000))
    }

    /// A new endpoint; `unix_ms` is the wall time (unix milliseconds) at
    /// `now`. Instances sharing a store anchor with milliseconds: paid time
    /// is compared across them.
    pub fn with_unix_ms(cfg: EndpointConfig, now: Instant, unix_ms: u64) -> Self {
        ServerEndpoint {
            next_sweep: now + cfg.sweep_interval,
            cfg,
            anchor: (now, unix_ms),
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
        self.unix_ms(now) / 1000
    }

    /// Wall time (unix milliseconds) at `now`, on the endpoint's anchor.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let (base, anchor_ms) = self.anchor;
        let since = u64::try_from(now.saturating_duration_since(base).as_millis()).unwrap_or(0);
        anchor_ms.saturating_add(since)
    }

    fn at(&self, unix_ms: u64) -> Instant {
        let (base, anchor_ms) = self.anchor;
        let ms = unix_ms.saturating_sub(anchor_ms);
        base + Duration::from_millis(ms.min(u64::MAX / 4))
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
        self.sessions.get(session).map_or(0, |s| s.state.slices)
    }

    /// End of a session's paid time in unix seconds (0 if never paid).
    pub fn expires_at(&self, session: &str) -> u64 {
        self.sessions
            .get(session)
            .map_or(0, |s| s.state.expires_at())
    }

    // ----- shared state -----

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
        if state.slices < s.state.slices {
            // An older copy (a load that raced a newer commit): paid time
            // never goes back; only the connection count is news.
            let mut newer = s.state.clone();
            newer.connections = state.connections;
            state = newer;
        }
        let old = std::mem::replace(&mut s.state, state);
        // Settlements this instance runs count even if the store lags.
        for (k, r) in &self.records {
            if r.local && r.rec.status.is_settling() && r.rec.session == session {
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
            if !(r.local && r.rec.status.is_settling()) {
                r.rec.status = rec.status;
            }
            return;
        }
        self.next_id += 1;
        let id = SettleId(self.next_id);
        self.by_id.insert(id, key.clone());
        self.claims.insert((rec.payer, rec.nonce), key.clone());
        if let Some(pid) = &rec.payment_id {
            self.payment_ids.insert(pid.clone(), key.clone());
        }
        self.record_expiry.insert((rec.expires, key.clone()));
        self.records.insert(
            key.clone(),
            Record {
                id,
                rec,
                local: false,
            },
        );
    }

    /// Takes over a record whose settling instance died: this endpoint
    /// settles the same payload again (as a retry: the first attempt's fate
    /// is unknown) and returns the settlement to run.
    pub fn adopt(&mut self, now: Instant, key: &PaymentKey, rec: PaymentRecord) -> SettleId {
        self.touch(now);
        self.forget(key);
        self.import_record(now, key, rec);
        let Some(r) = self.records.get_mut(key) else {
            return SettleId(0);
        };
        r.local = true;
        r.rec.status = PaymentStatus::Retrying;
        r.rec.attempts = r.rec.attempts.max(1);
        self.settling += 1;
        let (id, deadline) = (r.id, r.rec.valid_before.saturating_add(self.cfg.skew_secs));
        if let Some(s) = self.sessions.get_mut(&r.rec.session) {
            s.state.in_flight.insert(key.clone(), deadline);
        }
        id
    }

    /// Forgets a record another instance holds, when the store no longer has it.
    pub fn drop_foreign(&mut self, key: &PaymentKey) {
        if self.records.get(key).is_some_and(|r| !r.local) {
            self.forget(key);
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
        self.settling -= 1;
        let session = r.rec.session.clone();
        if let Some(s) = self.sessions.get_mut(&session) {
            s.state.release(&key);
        }
        self.reschedule(&session);
    }

    // ----- payments -----

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
        let horizon = self.cfg.horizon_slices;
        let deadline = p.valid_before.saturating_add(self.cfg.skew_secs);
        let Some(s) = self.sessions.get_mut(&quote.id) else {
            return PaymentDecision::Refused(quote_expired());
        };
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
            .saturating_add(self.cfg.skew_secs);
        self.records.insert(
            p.key.clone(),
            Record {
                id,
                rec: PaymentRecord {
                    session: quote.id.clone(),
                    payer: p.payer,
                    nonce: p.nonce,
                    amount: p.amount,
                    valid_before: p.valid_before,
                    payment_id: p.payment_id.clone(),
                    status: PaymentStatus::Settling,
                    attempts: 0,
                    expires,
                },
                local: true,
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
            .map_or(0, |s| s.quote.slice_seconds);
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
                        s.credit(&key, now_ms, slice_seconds, head);
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
            self.settling -= 1;
            self.forget(&key);
            self.import_or_release(now, &session, &key, state, true);
            return;
        };
        let status = rec.status.clone();
        let (old_expires, expires) = (r.rec.expires, rec.expires);
        if let Some(r) = self.records.get_mut(&key) {
            r.rec = rec;
        }
        if old_expires != expires {
            self.record_expiry.remove(&(old_expires, key.clone()));
            self.record_expiry.insert((expires, key.clone()));
        }
        if status.is_settling() {
            self.retries.insert((now + self.cfg.settle_retry, id));
            return;
        }
        self.settling -= 1;
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

    fn forget(&mut self, key: &PaymentKey) {
        if let Some(r) = self.records.remove(key) {
            self.by_id.remove(&r.id);
            self.record_expiry.remove(&(r.rec.expires, key.clone()));
            if self.claims.get(&(r.rec.payer, r.rec.nonce)) == Some(key) {
                self.claims.remove(&(r.rec.payer, r.rec.nonce));
            }
            if let Some(pid) = r.rec.payment_id
                && self.payment_ids.get(&pid) == Some(key)
            {
                self.payment_ids.remove(&pid);
            }
        }
    }

    // ----- sockets -----

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
        (s.conn == Some(conn)).then(|| self.at(s.state.paid_until_ms.unwrap_or(0)))
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
            .is_some_and(|r| r.local && r.rec.status.is_settling())
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
                && r.local
                && r.rec.status == PaymentStatus::Retrying
            {
                self.jobs.push_back(SettleJob {
                    id,
                    attempt: r.rec.attempts,
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

    fn reschedule(&mut self, session: &str) {
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
                    && s.state.in_flight.values().all(|d| *d < unix)
                    && !s.state.is_paid(now_ms);
                let end = s
                    .quote
                    .expires
                    .max(s.state.expires_at().saturating_add(linger));
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
                .is_some_and(|r| r.local && r.rec.status.is_settling());
            if settling {
                // Resolved by its own deadline; look again later.
                if let Some(r) = self.records.get_mut(&key) {
                    r.rec.expires = unix + self.cfg.skew_secs;
                }
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
        state: SessionState::default(),
        conn: None,
        conn_gen: 0,
        expiring_sent: false,
        expired_sent: false,
        timer: None,
    }
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
