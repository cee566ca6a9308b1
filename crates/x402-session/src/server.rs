//! The server role: one paid session (one token), its paid horizon, expiry and socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use x402_types::{CloseCode, Hello, PathVersion, RenewResponse, ServerMessage};

pub use crate::client::ConnId;

/// Identifies a payment for idempotency: derived from its nonce and signature.
pub type PaymentKey = String;

/// Why the server refuses a request on a session (mapped to HTTP statuses by the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The token failed the server's check (401).
    #[error("token invalid: {0}")]
    TokenInvalid(String),
    /// No paid time: a payment is needed (402).
    #[error("payment required")]
    PaymentRequired,
    /// Buying this slice would exceed the prepaid horizon (409).
    #[error("prepaid horizon of {slices} slices exceeded")]
    HorizonExceeded {
        /// The horizon in slices.
        slices: u64,
    },
    /// The same payment is being processed right now (409, retry).
    #[error("this payment is already being processed")]
    InFlight,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::TokenInvalid(_) => 401,
            Refusal::PaymentRequired => 402,
            Refusal::HorizonExceeded { .. } | Refusal::InFlight => 409,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TokenInvalid(_) => "token_invalid",
            Refusal::PaymentRequired => "payment_required",
            Refusal::HorizonExceeded { .. } => "horizon_exceeded",
            Refusal::InFlight => "payment_in_flight",
        }
    }
}

/// The server's token check, supplied by the server.
pub type TokenCheck = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Server session configuration.
#[derive(Clone)]
pub struct ServerConfig {
    /// Seconds one payment buys.
    pub slice_seconds: u64,
    /// Most slices that may be paid ahead of now.
    pub horizon_slices: u64,
    /// Wait this long after expiry for an in-flight renewal before closing 4402.
    pub grace: Duration,
    /// Send `expiring` this long before expiry.
    pub expiring_lead: Duration,
    /// Stream id (for `hello`).
    pub stream_id: String,
    /// Path version (for `hello`).
    pub version: PathVersion,
    /// Renew URL of this session (for `hello`).
    pub renew_url: String,
    /// The token check.
    pub token_check: TokenCheck,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("slice_seconds", &self.slice_seconds)
            .field("horizon_slices", &self.horizon_slices)
            .field("grace", &self.grace)
            .field("stream_id", &self.stream_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults: two slices of horizon, 5 s grace, `expiring` at min(10 s, slice / 3) before the end.
    pub fn new(
        stream_id: impl Into<String>,
        version: PathVersion,
        slice_seconds: u64,
        renew_url: impl Into<String>,
        token_check: TokenCheck,
    ) -> Self {
        ServerConfig {
            slice_seconds,
            horizon_slices: 2,
            grace: Duration::from_secs(5),
            expiring_lead: Duration::from_secs(10)
                .min(Duration::from_millis(slice_seconds.saturating_mul(333))),
            stream_id: stream_id.into(),
            version,
            renew_url: renew_url.into(),
            token_check,
        }
    }
}

/// Something the server must send on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerTransmit {
    /// Send a message.
    Message {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: ServerMessage,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
        /// Code.
        code: CloseCode,
    },
}

/// What `begin_payment` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStart {
    /// This exact payment was already accepted: answer the first result again.
    Duplicate(RenewResponse),
    /// Verify and settle it, then call `complete_payment` or `abort_payment`.
    Proceed,
}

/// One paid session of the reference server, sans I/O.
///
/// Drive it like the client: every input takes `now`; after each, drain
/// [`poll_transmit`](Self::poll_transmit); call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout).
/// Payments go `begin_payment` -> (verify, settle) -> `complete_payment` or
/// `abort_payment`, so the horizon check happens before money moves and a
/// repeated payload is answered with its first result.
#[derive(Debug)]
pub struct ServerSession {
    cfg: ServerConfig,
    session_id: String,
    anchor: (Instant, u64),
    paid_until_ms: Option<u128>,
    slices: u64,
    in_flight: HashSet<PaymentKey>,
    accepted: HashMap<PaymentKey, RenewResponse>,
    conn: Option<ConnId>,
    connected_before: bool,
    expiring_sent: bool,
    expired_sent: bool,
    transmits: VecDeque<ServerTransmit>,
    last_now: Instant,
}

impl ServerSession {
    /// A new session with no paid time; `unix_now` is the wall time at `now`.
    pub fn new(
        cfg: ServerConfig,
        session_id: impl Into<String>,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        ServerSession {
            cfg,
            session_id: session_id.into(),
            anchor: (now, unix_now),
            paid_until_ms: None,
            slices: 0,
            in_flight: HashSet::new(),
            accepted: HashMap::new(),
            conn: None,
            connected_before: false,
            expiring_sent: false,
            expired_sent: false,
            transmits: VecDeque::new(),
            last_now: now,
        }
    }

    fn unix_ms(&self, now: Instant) -> u128 {
        let (base, unix) = self.anchor;
        u128::from(unix) * 1000 + now.saturating_duration_since(base).as_millis()
    }

    fn at(&self, unix_ms: u128) -> Instant {
        let (base, unix) = self.anchor;
        base + Duration::from_millis(unix_ms.saturating_sub(u128::from(unix) * 1000) as u64)
    }

    fn touch(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Slices bought.
    pub fn slices(&self) -> u64 {
        self.slices
    }

    /// End of paid time in unix seconds (0 if never paid).
    pub fn expires_at(&self) -> u64 {
        self.paid_until_ms.map_or(0, |ms| ms.div_ceil(1000) as u64)
    }

    /// Whether paid time remains at `now`.
    pub fn is_paid(&self, now: Instant) -> bool {
        self.paid_until_ms.is_some_and(|p| p > self.unix_ms(now))
    }

    /// Whether an event may be delivered to `conn` at `now`: it is the live
    /// connection and paid time remains.
    pub fn can_deliver(&self, now: Instant, conn: ConnId) -> bool {
        self.conn == Some(conn) && self.is_paid(now)
    }

    /// The live connection.
    pub fn connection(&self) -> Option<ConnId> {
        self.conn
    }

    /// Whether the session holds nothing worth keeping at `now` (no paid time, no socket, no payment in flight).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.conn.is_none() && self.in_flight.is_empty() && !self.is_paid(now)
    }

    /// Checks a token with the server's function.
    pub fn check_token(&self, token: &str) -> Result<(), Refusal> {
        (self.cfg.token_check)(token).map_err(Refusal::TokenInvalid)
    }

    fn response(&self) -> RenewResponse {
        RenewResponse {
            session_id: self.session_id.clone(),
            expires_at: self.expires_at(),
            slice_seconds: self.cfg.slice_seconds,
            slices: self.slices,
        }
    }

    /// A payment arrived: decide before verifying it.
    pub fn begin_payment(&mut self, now: Instant, key: &str) -> Result<PaymentStart, Refusal> {
        self.touch(now);
        if let Some(r) = self.accepted.get(key) {
            return Ok(PaymentStart::Duplicate(r.clone()));
        }
        if self.in_flight.contains(key) {
            return Err(Refusal::InFlight);
        }
        let now_ms = self.unix_ms(now);
        let remaining = self.paid_until_ms.map_or(0, |p| p.saturating_sub(now_ms));
        let slice_ms = u128::from(self.cfg.slice_seconds) * 1000;
        let after = remaining + slice_ms * (self.in_flight.len() as u128 + 1);
        if after > slice_ms * u128::from(self.cfg.horizon_slices) {
            return Err(Refusal::HorizonExceeded {
                slices: self.cfg.horizon_slices,
            });
        }
        self.in_flight.insert(key.to_string());
        Ok(PaymentStart::Proceed)
    }

    /// Verification or settlement failed: forget the payment.
    pub fn abort_payment(&mut self, key: &str) {
        self.in_flight.remove(key);
    }

    /// The payment settled: extend paid time by one slice from the current
    /// end (or from now if it passed) and tell the live socket.
    pub fn complete_payment(&mut self, now: Instant, key: &str) -> RenewResponse {
        self.touch(now);
        if let Some(r) = self.accepted.get(key) {
            return r.clone();
        }
        self.in_flight.remove(key);
        let now_ms = self.unix_ms(now);
        let base = self.paid_until_ms.map_or(now_ms, |p| p.max(now_ms));
        self.paid_until_ms = Some(base + u128::from(self.cfg.slice_seconds) * 1000);
        self.slices += 1;
        self.expiring_sent = false;
        self.expired_sent = false;
        let r = self.response();
        self.accepted.insert(key.to_string(), r.clone());
        if let Some(conn) = self.conn {
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Renewed {
                    expires_at: r.expires_at,
                    slices: r.slices,
                },
            });
        }
        r
    }

    /// A socket upgrade with `token`, checked with the server's function. Needs
    /// paid time (pay first with `begin_payment`/`complete_payment`). A previous
    /// socket is closed with 4409.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        token: &str,
        next_seq: u64,
    ) -> Result<Hello, Refusal> {
        self.touch(now);
        self.check_token(token)?;
        if !self.is_paid(now) {
            return Err(Refusal::PaymentRequired);
        }
        if let Some(old) = self.conn.replace(conn) {
            self.transmits.push_back(ServerTransmit::Close {
                conn: old,
                code: CloseCode::Superseded,
            });
        }
        let resumed = self.connected_before;
        self.connected_before = true;
        Ok(Hello {
            session_id: self.session_id.clone(),
            stream_id: self.cfg.stream_id.clone(),
            version: self.cfg.version,
            slice_seconds: self.cfg.slice_seconds,
            expires_at: self.expires_at(),
            server_time: (self.unix_ms(now) / 1000) as u64,
            renew_url: self.cfg.renew_url.clone(),
            resumed,
            next_seq,
        })
    }

    /// The socket `conn` went away.
    pub fn disconnect(&mut self, conn: ConnId) {
        if self.conn == Some(conn) {
            self.conn = None;
        }
    }

    /// The next socket output.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.transmits.pop_front()
    }

    /// When to call `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self.conn?;
        let _ = conn;
        let until = self.at(self.paid_until_ms?);
        let t = if !self.expiring_sent {
            until.checked_sub(self.cfg.expiring_lead).unwrap_or(until)
        } else if !self.expired_sent {
            until
        } else {
            until + self.cfg.grace
        };
        Some(t.max(self.last_now))
    }

    /// Timers: `expiring`, then `expired`, then close 4402 after the grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let (Some(conn), Some(p)) = (self.conn, self.paid_until_ms) else {
            return;
        };
        let until = self.at(p);
        let expires_at = self.expires_at();
        if !self.expiring_sent && now + self.cfg.expiring_lead >= until {
            self.expiring_sent = true;
            let seconds_left = until.saturating_duration_since(now).as_secs();
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Expiring {
                    expires_at,
                    seconds_left,
                },
            });
        }
        if !self.expired_sent && now >= until {
            self.expired_sent = true;
            self.transmits.push_back(ServerTransmit::Message {
                conn,
                msg: ServerMessage::Expired { expires_at },
            });
        }
        if self.expired_sent && now >= until + self.cfg.grace && self.in_flight.is_empty() {
            self.transmits.push_back(ServerTransmit::Close {
                conn,
                code: CloseCode::PaymentExpired,
            });
            self.conn = None;
        }
    }
}
