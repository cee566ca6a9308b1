//! The server role: one [`ServerEndpoint`] owning every quote's session, the
//! nonce claims, the payment pipeline with its recorded settlement outcomes,
//! and resume planning. Sans I/O: the reference server (`x402-server`) and
//! the simulation in this crate's tests drive the same code.

// The endpoint lives here (construction, outputs, timers and the sweep); its
// inputs and outputs in `types`, the shared state in `state`, and its
// methods by concern in `payments`, `shared` and `sockets`.
mod payments;
mod shared;
mod sockets;
mod state;
mod types;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use x402_types::{Address, ErrorCode, FacilitatorRequest, Nonce};

pub use crate::client::ConnId;
pub use state::{PaymentRecord, PaymentStatus, SessionState, SettledPlan};
pub use types::{
    Connected, Credit, EXACT, EndpointConfig, EndpointStats, PaymentDecision, PaymentIn,
    PaymentKey, Quote, Refusal, ServerEvent, ServerTransmit, SettleId, SettleJob, SettleOutcome,
    StreamHead,
};

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
    /// The facilitator request, held until the settlement is final.
    request: Option<FacilitatorRequest>,
    /// Its first attempt was queued ([`ServerEndpoint::start_settlement`] is idempotent).
    started: bool,
}

/// The server's protocol, sans I/O: quotes and sessions, nonce claims, the
/// payment pipeline, paid time, expiry and resume planning.
///
/// Driving it:
/// 1. A payment arrives (upgrade or renew): [`handle_payment`](Self::handle_payment).
///    On [`PaymentDecision::Settle`] call
///    [`start_settlement`](Self::start_settlement) (once the decision is
///    committed, when sharing a store); run each attempt
///    [`poll_settle`](Self::poll_settle) gives, verify and settle (outside any
///    lock), and report with [`handle_settled`](Self::handle_settled); the
///    settlement keeps going when the request that started it gives up.
///    Answer the request with [`answer`](Self::answer) once it is not
///    pending, or with 202 `payment_pending` when the wait is over.
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
    /// Settlements this endpoint runs, by session (`import_session` reads one
    /// session's without a walk over every record).
    settling: BTreeSet<(String, PaymentKey)>,
    transmits: VecDeque<ServerTransmit>,
    jobs: VecDeque<SettleJob>,
    events: VecDeque<ServerEvent>,
    last_now: Instant,
}

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
            settling: BTreeSet::new(),
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
            settling: self.settling.len(),
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

    // ----- outputs and time -----

    /// The next socket output.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.transmits.pop_front()
    }

    /// The next settlement attempt to run: a first attempt once
    /// [`start_settlement`](Self::start_settlement) started it, retries of
    /// pending or unknown outcomes, and settlements [`adopt`](Self::adopt)ed.
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
            if self
                .by_id
                .get(&id)
                .and_then(|k| self.records.get(k))
                .is_some_and(|r| r.rec.status == PaymentStatus::Retrying)
            {
                self.queue_attempt(id);
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

    /// The stream a session buys ("" once it is gone).
    fn stream_of(&self, session: &str) -> String {
        self.sessions
            .get(session)
            .map(|s| s.quote.stream_id.clone())
            .unwrap_or_default()
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
