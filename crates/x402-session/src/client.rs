//! The client role: buy a stream by the slice, renew, reconnect, resume.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use x402_types::x402::headers;
use x402_types::{
    CloseCode, EndpointKind, ErrorBody, ErrorCode, Event, Hello, Offer, PathVersion,
    PaymentPayload, PaymentRequiredV2, RenewResponse, ResourceInfo, Schema, ServerMessage,
    SettleResponse, UrlContext, x402::decode_header,
};

use crate::error::UsageError;
use crate::rng::Jitter;

/// Identifies an HTTP request the session asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Identifies a WebSocket connection the session asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// Something the driver must send. Its `Debug` shows header names only: a
/// payment header is a spendable authorization.
#[derive(Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Perform an HTTP request and report with `handle_http_response` or `handle_http_error`.
    Http {
        /// Request id.
        id: RequestId,
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Open a WebSocket and report with `handle_ws_upgrade`.
    WsConnect {
        /// Connection id.
        conn: ConnId,
        /// URL.
        url: String,
        /// Upgrade request headers.
        headers: Vec<(String, String)>,
    },
    /// Send a text frame.
    WsSend {
        /// Connection.
        conn: ConnId,
        /// JSON text.
        text: String,
    },
    /// Close a WebSocket with a code.
    WsClose {
        /// Connection.
        conn: ConnId,
        /// Close code.
        code: CloseCode,
    },
}

impl std::fmt::Debug for Transmit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |h: &[(String, String)]| -> Vec<String> {
            h.iter().map(|(k, _)| format!("{k}: <redacted>")).collect()
        };
        match self {
            Transmit::Http {
                id,
                method,
                url,
                headers,
            } => f
                .debug_struct("Http")
                .field("id", id)
                .field("method", method)
                .field("url", url)
                .field("headers", &names(headers))
                .finish(),
            Transmit::WsConnect { conn, url, headers } => f
                .debug_struct("WsConnect")
                .field("conn", conn)
                .field("url", url)
                .field("headers", &names(headers))
                .finish(),
            Transmit::WsSend { conn, text } => f
                .debug_struct("WsSend")
                .field("conn", conn)
                .field("text", text)
                .finish(),
            Transmit::WsClose { conn, code } => f
                .debug_struct("WsClose")
                .field("conn", conn)
                .field("code", code)
                .finish(),
        }
    }
}

/// An HTTP answer handed to the session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names compared case-insensitively).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an HTTP exchange or upgrade produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The application stopped it.
    Stopped,
    /// The stream itself ended (`end` message).
    StreamEnded {
        /// The server's reason.
        reason: String,
    },
    /// The spending policy (or payer) refused the next slice; the paid time was used up.
    PaymentDeclined {
        /// Why.
        message: String,
        /// Whether it was the spending policy (as opposed to the signer failing).
        policy: bool,
    },
    /// The configured number of slices was bought and used.
    SliceLimit,
    /// The server definitely refused payment.
    PaymentRefused {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: ErrorCode,
        /// Message from the body.
        message: String,
    },
    /// Another connection took over the token (4409).
    Superseded,
    /// The server rejected the token (401 / 4401) or the quote expired (410).
    TokenRejected {
        /// Status or close code.
        code: u16,
    },
    /// The connection could not be restored.
    ConnectionLost {
        /// Attempts made.
        attempts: u32,
    },
    /// The server broke the protocol (bad schema, URL mismatch, malformed frames).
    ProtocolViolation(String),
}

/// What the session reports to the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Sign a payment for this slice (after checking the spending policy) and
    /// hand it back with `handle_payment`, or refuse with `handle_payment_declined`.
    PaymentNeeded {
        /// Slice number (1 = first).
        slice: u64,
        /// What to pay.
        offer: Offer,
    },
    /// The server accepted the payment for `slice`: commit its reservation.
    PaymentAccepted {
        /// Slice.
        slice: u64,
        /// The settlement header, if any.
        settlement: Option<SettleResponse>,
    },
    /// The server definitely refused the payment for `slice`: release its
    /// reservation unless `maybe_spent`.
    PaymentRefused {
        /// Slice.
        slice: u64,
        /// HTTP status.
        status: u16,
        /// Error code.
        code: ErrorCode,
        /// Whether the money may have moved (nonce reported used, outcome
        /// unknown): keep it counted as spent.
        maybe_spent: bool,
    },
    /// A connection said hello.
    Hello(Hello),
    /// A reconnection resumed the paid session; `missed` events were lost.
    Resumed {
        /// Events the server could no longer replay.
        missed: u64,
    },
    /// A live event.
    Data(Event),
    /// Paid time was extended.
    Renewed {
        /// New end of paid time (server unix seconds).
        expires_at: u64,
        /// Slices bought so far.
        slices: u64,
    },
    /// Paid time runs out soon (server advisory).
    Expiring {
        /// Seconds left.
        seconds_left: u64,
    },
    /// Paid time ran out (server message).
    Expired,
    /// The server said events were lost (evicted from its replay buffer).
    EventsLost {
        /// How many.
        count: u64,
    },
    /// The server skipped events published while the session was not paid.
    EventsSkipped {
        /// How many.
        count: u64,
    },
    /// The server is still settling the payment for `slice`; the same signed
    /// payload is sent again after `retry_after`.
    PaymentPending {
        /// Slice.
        slice: u64,
        /// Wait before retrying.
        retry_after: Duration,
    },
    /// A duplicate or out-of-order event was dropped.
    Duplicate {
        /// Its seq.
        seq: u64,
    },
    /// The connection dropped; reconnecting after `delay`.
    Reconnecting {
        /// Attempt number (1 = first).
        attempt: u32,
        /// Delay before it.
        delay: Duration,
    },
    /// The session ended; nothing more will happen.
    Ended(EndReason),
}

/// Reconnect backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts before giving up.
    pub max_attempts: u32,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            max_attempts: 10,
        }
    }
}

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// HTTP base URL (`https://x402.atomicstream.net`).
    pub http_base: String,
    /// Path version of every URL of the session.
    pub version: PathVersion,
    /// Stream to buy.
    pub stream_id: String,
    /// Renew when this much paid time is left; `None` uses the protocol default
    /// (20% of the slice clamped to 10..60 s, at most half the slice).
    pub renew_margin: Option<Duration>,
    /// Reconnect backoff.
    pub reconnect: ReconnectPolicy,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
    /// Stop after this many slices.
    pub max_slices: Option<u64>,
}

impl ClientConfig {
    /// A configuration with defaults.
    pub fn new(
        http_base: impl Into<String>,
        version: PathVersion,
        stream_id: impl Into<String>,
    ) -> Self {
        ClientConfig {
            http_base: http_base.into(),
            version,
            stream_id: stream_id.into(),
            renew_margin: None,
            reconnect: ReconnectPolicy::default(),
            jitter_seed: 0x5eed,
            max_slices: None,
        }
    }
}

/// The protocol's default renew margin for a slice length.
pub fn default_renew_margin(slice_seconds: u64) -> Duration {
    let fifth = Duration::from_millis(slice_seconds.saturating_mul(200));
    let clamped = fifth.clamp(Duration::from_secs(10), Duration::from_secs(60));
    clamped.min(Duration::from_millis(slice_seconds.saturating_mul(500)))
}

/// How long after local expiry a session without further payments gives up waiting for the server.
const END_SLACK: Duration = Duration::from_secs(7);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Attach to the WebSocket upgrade.
    Upgrade,
    /// POST to the renew endpoint.
    Renew,
}

#[derive(Clone)]
struct Pending {
    slice: u64,
    header: String,
}

impl std::fmt::Debug for Pending {
    // The header is a spendable authorization: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("slice", &self.slice)
            .field("header", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    FetchingSchema(RequestId),
    /// Waiting for the first payment.
    Paying,
    Connecting {
        conn: ConnId,
        paid_slice: Option<u64>,
    },
    Live {
        conn: ConnId,
        hello: bool,
    },
    /// Disconnected, waiting to reconnect (or to pay first).
    Down,
    Ended,
}

/// Counters the session keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Slices the server confirmed.
    pub slices: u64,
    /// Events delivered.
    pub events: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events reported lost.
    pub lost: u64,
    /// Events skipped because they were published while unpaid.
    pub skipped: u64,
    /// Answers saying a payment's settlement was still under way.
    pub pending_answers: u64,
    /// Renewal HTTP attempts (including retries).
    pub renew_attempts: u64,
    /// Renewal retries with the same payload.
    pub renew_retries: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Signatures asked for.
    pub payments_requested: u64,
}

/// The client role of the protocol, sans I/O.
///
/// # Driving it
///
/// 1. Create it with [`ClientSession::new`] and call [`open`](Self::open).
/// 2. After **every** input (`open`, `handle_*`, `stop`), drain
///    [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event)
///    until both return `None`. An input given while outputs are queued is
///    refused with [`UsageError::NotDrained`].
/// 3. Perform each transmit and feed its outcome back (`handle_http_response` /
///    `handle_http_error`, `handle_ws_upgrade`, `handle_ws_message`,
///    `handle_ws_closed`).
/// 4. On [`ClientEvent::PaymentNeeded`], check the spending policy, sign, and
///    call [`handle_payment`](Self::handle_payment) or
///    [`handle_payment_declined`](Self::handle_payment_declined).
/// 5. Sleep until [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout).
///
/// The machine never reads a clock: `now` comes with every input, and wall
/// time is derived from the anchor given to `new`.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    schema_url: String,
    ctx: Option<UrlContext>,
    phase: Phase,
    ws_url: Option<x402_types::Url>,
    renew_url: Option<String>,
    offer: Option<Offer>,
    slice_seconds: Option<u64>,
    slices: u64,
    paid_until: Option<Instant>,
    expires_at: u64,
    server_offset_ms: i64,
    pending: Option<Pending>,
    asking: Option<(u64, Purpose)>,
    resigns: u32,
    renew_req: Option<RequestId>,
    /// The slice whose payment the renew request in flight carries.
    renew_slice: Option<u64>,
    renew_at: Option<Instant>,
    renew_retry_at: Option<Instant>,
    renew_attempt: u32,
    reconnect_at: Option<Instant>,
    reconnect_attempt: u32,
    end_at: Option<Instant>,
    next_seq: Option<u64>,
    no_more: Option<EndReason>,
    next_id: u64,
    jitter: Jitter,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
    anchor: (Instant, u64),
    last_now: Instant,
    stats: ClientStats,
}

impl ClientSession {
    /// A new session. `unix_now` is the wall time (unix seconds) at `now`.
    pub fn new(cfg: ClientConfig, now: Instant, unix_now: u64) -> Result<Self, UsageError> {
        let schema_url =
            x402_types::version::schema_url(&cfg.http_base, cfg.version, &cfg.stream_id)
                .map_err(|e| UsageError::Config(e.to_string()))?
                .to_string();
        let ctx = UrlContext::from_schema_url(&schema_url)
            .map_err(|e| UsageError::Config(e.to_string()))?;
        Ok(ClientSession {
            jitter: Jitter::new(cfg.jitter_seed),
            cfg,
            schema_url,
            ctx: Some(ctx),
            phase: Phase::Idle,
            ws_url: None,
            renew_url: None,
            offer: None,
            slice_seconds: None,
            slices: 0,
            paid_until: None,
            expires_at: 0,
            server_offset_ms: 0,
            pending: None,
            asking: None,
            resigns: 0,
            renew_req: None,
            renew_slice: None,
            renew_at: None,
            renew_retry_at: None,
            renew_attempt: 0,
            reconnect_at: None,
            reconnect_attempt: 0,
            end_at: None,
            next_seq: None,
            no_more: None,
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            anchor: (now, unix_now),
            last_now: now,
            stats: ClientStats::default(),
        })
    }

    // ----- outputs -----

    /// The next thing to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout), if ever. Never
    /// earlier than the latest `now` given.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Ended {
            return None;
        }
        [
            self.renew_at,
            self.renew_retry_at,
            self.reconnect_at,
            self.end_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(self.last_now))
    }

    // ----- queries -----

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Slice length announced by the server.
    pub fn slice_seconds(&self) -> Option<u64> {
        self.slice_seconds
    }

    /// Paid time left at `now`.
    pub fn paid_remaining(&self, now: Instant) -> Duration {
        self.paid_until
            .map(|p| p.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// The offer being paid.
    pub fn offer(&self) -> Option<&Offer> {
        self.offer.as_ref()
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// The renew margin in effect.
    pub fn renew_margin(&self) -> Duration {
        match (self.cfg.renew_margin, self.slice_seconds) {
            (Some(m), Some(s)) => m.min(Duration::from_millis(s.saturating_mul(500))),
            (Some(m), None) => m,
            (None, Some(s)) => default_renew_margin(s),
            (None, None) => Duration::from_secs(10),
        }
    }

    // ----- inputs -----

    fn input(&mut self, now: Instant) -> Result<(), UsageError> {
        if !self.transmits.is_empty() || !self.events.is_empty() {
            return Err(UsageError::NotDrained {
                transmits: self.transmits.len(),
                events: self.events.len(),
            });
        }
        self.last_now = self.last_now.max(now);
        Ok(())
    }

    /// Starts the session: fetches the schema.
    pub fn open(&mut self, now: Instant) -> Result<(), UsageError> {
        self.input(now)?;
        if self.phase != Phase::Idle {
            return Err(UsageError::AlreadyOpen);
        }
        let id = self.request_id();
        self.phase = Phase::FetchingSchema(id);
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Get,
            url: self.schema_url.clone(),
            headers: Vec::new(),
        });
        Ok(())
    }

    /// Stops the session: closes the socket and ends with [`EndReason::Stopped`].
    pub fn stop(&mut self, now: Instant) -> Result<(), UsageError> {
        self.input(now)?;
        self.end(EndReason::Stopped, Some(CloseCode::Normal));
        Ok(())
    }

    /// The payer signed the payment asked for `slice`.
    pub fn handle_payment(
        &mut self,
        now: Instant,
        slice: u64,
        payload: PaymentPayload,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        let Some((asked, purpose)) = self.asking else {
            return Err(UsageError::UnexpectedPayment { slice });
        };
        if asked != slice {
            return Err(UsageError::UnexpectedPayment { slice });
        }
        if payload.version() != self.cfg.version {
            return Err(UsageError::WrongPaymentVersion);
        }
        self.asking = None;
        if self.phase == Phase::Ended {
            return Ok(());
        }
        let header = payload.to_header();
        self.pending = Some(Pending { slice, header });
        match purpose {
            Purpose::Renew => self.send_renew(now),
            Purpose::Upgrade => self.connect(now),
        }
        Ok(())
    }

    /// The payer (or the spending policy) declined to pay for `slice`.
    /// The session keeps streaming what is paid, then ends with the reason.
    pub fn handle_payment_declined(
        &mut self,
        now: Instant,
        slice: u64,
        message: String,
        policy: bool,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        if self.asking.map(|(s, _)| s) != Some(slice) {
            return Err(UsageError::UnexpectedPayment { slice });
        }
        let purpose = self.asking.map(|(_, p)| p);
        self.asking = None;
        self.stop_paying(now, EndReason::PaymentDeclined { message, policy });
        if purpose == Some(Purpose::Upgrade) && !self.has_paid_time(now) {
            let reason = self.no_more.clone().unwrap_or(EndReason::Stopped);
            self.end(reason, Some(CloseCode::Normal));
        }
        Ok(())
    }

    /// An HTTP answer arrived.
    pub fn handle_http_response(
        &mut self,
        now: Instant,
        id: RequestId,
        resp: HttpResponse,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        if self.phase == Phase::FetchingSchema(id) {
            self.on_schema(now, resp);
        } else if self.renew_req == Some(id) {
            self.renew_req = None;
            self.on_renew_response(now, resp);
        }
        Ok(())
    }

    /// An HTTP request failed without an answer.
    pub fn handle_http_error(
        &mut self,
        now: Instant,
        id: RequestId,
        _failure: TransportFailure,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        if self.phase == Phase::FetchingSchema(id) {
            // Nothing was paid yet: retry the schema with backoff.
            self.reconnect_attempt += 1;
            if self.reconnect_attempt > self.cfg.reconnect.max_attempts {
                self.end(
                    EndReason::ConnectionLost {
                        attempts: self.reconnect_attempt - 1,
                    },
                    Some(CloseCode::Normal),
                );
            } else {
                self.phase = Phase::Idle;
                let d = self.backoff(self.reconnect_attempt);
                self.reconnect_at = Some(now + d);
            }
        } else if self.renew_req == Some(id) {
            self.renew_req = None;
            self.retry_renew(now);
        }
        Ok(())
    }

    /// The WebSocket upgrade of `conn` completed (`Ok`: 101 with its headers) or was refused.
    pub fn handle_ws_upgrade(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<HttpResponse, Option<HttpResponse>>,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        let Phase::Connecting {
            conn: c,
            paid_slice,
        } = self.phase
        else {
            return Ok(());
        };
        if c != conn {
            return Ok(());
        }
        match result {
            Ok(resp) => {
                if let Some(slice) = paid_slice {
                    let settlement = self.settlement(&resp);
                    self.accept_payment(slice, settlement);
                }
                self.phase = Phase::Live { conn, hello: false };
            }
            Err(None) => self.connection_lost(now),
            Err(Some(resp)) => self.on_upgrade_refused(now, paid_slice, resp),
        }
        Ok(())
    }

    /// A text frame arrived on `conn`.
    pub fn handle_ws_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        text: &str,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        let Phase::Live { conn: c, hello } = self.phase else {
            return Ok(());
        };
        if c != conn {
            return Ok(());
        }
        let msg = match ServerMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.end(
                    EndReason::ProtocolViolation(format!("bad frame: {e}")),
                    Some(CloseCode::Policy),
                );
                return Ok(());
            }
        };
        if !hello && !matches!(msg, ServerMessage::Hello(_) | ServerMessage::Unknown { .. }) {
            self.end(
                EndReason::ProtocolViolation("first message was not hello".into()),
                Some(CloseCode::Policy),
            );
            return Ok(());
        }
        match msg {
            ServerMessage::Hello(h) => self.on_hello(now, conn, h),
            ServerMessage::Event(e) => self.on_event(e),
            ServerMessage::Renewed { expires_at, slices } => {
                self.on_renewed(now, expires_at, slices)
            }
            ServerMessage::Expiring {
                seconds_left,
                expires_at,
            } => {
                // A notice about an end that a renewal already moved is stale.
                if expires_at < self.expires_at {
                    return Ok(());
                }
                self.events
                    .push_back(ClientEvent::Expiring { seconds_left });
                let within_margin = Duration::from_secs(seconds_left) <= self.renew_margin();
                if within_margin
                    && self.pending.is_none()
                    && self.asking.is_none()
                    && self.renew_req.is_none()
                {
                    self.need_payment(now, Purpose::Renew);
                }
            }
            ServerMessage::Expired { expires_at } => {
                if expires_at < self.expires_at {
                    return Ok(());
                }
                self.events.push_back(ClientEvent::Expired);
                if let Some(reason) = self.no_more.clone() {
                    self.end(reason, Some(CloseCode::Normal));
                } else if self.pending.is_none() && self.asking.is_none() {
                    self.need_payment(now, Purpose::Renew);
                }
            }
            ServerMessage::End { reason } => {
                self.end(EndReason::StreamEnded { reason }, Some(CloseCode::Normal))
            }
            ServerMessage::Error {
                code: ErrorCode::EventsLost,
                count,
                ..
            } => {
                let n = count.unwrap_or(0);
                self.stats.lost += n;
                self.events.push_back(ClientEvent::EventsLost { count: n });
            }
            ServerMessage::Error {
                code: ErrorCode::EventsSkipped,
                count,
                ..
            } => {
                let n = count.unwrap_or(0);
                self.stats.skipped += n;
                self.events
                    .push_back(ClientEvent::EventsSkipped { count: n });
            }
            ServerMessage::Pong | ServerMessage::Unknown { .. } => {}
            _ => {}
        }
        Ok(())
    }

    /// `conn` closed (with the peer's close code, if any) or dropped.
    pub fn handle_ws_closed(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: Option<CloseCode>,
    ) -> Result<(), UsageError> {
        self.input(now)?;
        let live = match self.phase {
            Phase::Live { conn: c, .. } | Phase::Connecting { conn: c, .. } => c == conn,
            _ => false,
        };
        if !live {
            return Ok(());
        }
        match code {
            Some(CloseCode::Superseded) => self.end(EndReason::Superseded, None),
            Some(CloseCode::TokenInvalid) => {
                self.end(EndReason::TokenRejected { code: 4401 }, None)
            }
            Some(c @ (CloseCode::Policy | CloseCode::TooBig)) => self.end(
                EndReason::ProtocolViolation(format!("server closed with {}", c.code())),
                None,
            ),
            Some(CloseCode::PaymentExpired) => {
                self.paid_until = Some(now.min(self.paid_until.unwrap_or(now)));
                if let Some(reason) = self.no_more.clone() {
                    self.end(reason, None);
                } else {
                    self.phase = Phase::Down;
                    if self.renew_req.is_none() && self.asking.is_none() {
                        self.reconnect_at = Some(now);
                    }
                }
            }
            _ => self.connection_lost(now),
        }
        Ok(())
    }

    /// A deadline from [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), UsageError> {
        self.input(now)?;
        if self.phase == Phase::Ended {
            return Ok(());
        }
        if self.end_at.is_some_and(|t| t <= now) {
            self.end_at = None;
            let reason = self.no_more.clone().unwrap_or(EndReason::Stopped);
            self.end(reason, Some(CloseCode::Normal));
            return Ok(());
        }
        if self.renew_retry_at.is_some_and(|t| t <= now) {
            self.renew_retry_at = None;
            if self.pending.is_some() && self.renew_req.is_none() {
                self.send_renew(now);
            }
        }
        if self.renew_at.is_some_and(|t| t <= now) {
            self.renew_at = None;
            if self.pending.is_none() && self.asking.is_none() && self.renew_req.is_none() {
                self.need_payment(now, Purpose::Renew);
            }
        }
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            match self.phase {
                Phase::Idle => self.open_again(now),
                Phase::Down => self.reconnect(now),
                _ => {}
            }
        }
        Ok(())
    }

    // ----- internals -----

    fn request_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn unix_ms(&self, now: Instant) -> i128 {
        let (base, unix) = self.anchor;
        let delta = if now >= base {
            now.duration_since(base).as_millis() as i128
        } else {
            -(base.duration_since(now).as_millis() as i128)
        };
        i128::from(unix) * 1000 + delta
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let p = &self.cfg.reconnect;
        let exp = p
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(p.max);
        // Full jitter in [50%, 100%] of the capped delay.
        capped.mul_f64(0.5 + 0.5 * self.jitter.next_f64())
    }

    fn has_paid_time(&self, now: Instant) -> bool {
        self.paid_until.is_some_and(|p| p > now)
    }

    fn open_again(&mut self, now: Instant) {
        let id = self.request_id();
        self.phase = Phase::FetchingSchema(id);
        let _ = now;
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Get,
            url: self.schema_url.clone(),
            headers: Vec::new(),
        });
    }

    fn end(&mut self, reason: EndReason, close: Option<CloseCode>) {
        if self.phase == Phase::Ended {
            return;
        }
        if let Some(code) = close
            && let Phase::Live { conn, .. } | Phase::Connecting { conn, .. } = self.phase
        {
            self.transmits.push_back(Transmit::WsClose { conn, code });
        }
        self.phase = Phase::Ended;
        self.renew_at = None;
        self.renew_retry_at = None;
        self.reconnect_at = None;
        self.end_at = None;
        self.asking = None;
        self.events.push_back(ClientEvent::Ended(reason));
    }

    fn stop_paying(&mut self, now: Instant, reason: EndReason) {
        if self.no_more.is_none() {
            self.no_more = Some(reason);
        }
        self.renew_at = None;
        // End once the paid time is used up (the server also says `expired`).
        self.end_at = Some(self.paid_until.map_or(now, |p| p.max(now)) + END_SLACK);
    }

    fn protocol_violation(&mut self, msg: String) {
        self.end(EndReason::ProtocolViolation(msg), Some(CloseCode::Policy));
    }

    fn on_schema(&mut self, now: Instant, resp: HttpResponse) {
        if resp.status == 404 {
            let body = ErrorBody::from_json(&resp.body).ok();
            self.end(
                EndReason::ProtocolViolation(format!(
                    "unknown stream: {}",
                    body.map(|b| b.message).unwrap_or_default()
                )),
                None,
            );
            return;
        }
        if resp.status >= 500 || resp.status == 429 {
            self.phase = Phase::Idle;
            self.reconnect_attempt += 1;
            if self.reconnect_attempt > self.cfg.reconnect.max_attempts {
                self.end(
                    EndReason::ConnectionLost {
                        attempts: self.reconnect_attempt - 1,
                    },
                    None,
                );
            } else {
                let d = self.backoff(self.reconnect_attempt);
                self.reconnect_at = Some(now + d);
            }
            return;
        }
        if resp.status != 402 && resp.status != 200 {
            self.protocol_violation(format!("schema request answered {}", resp.status));
            return;
        }
        match self.read_schema(&resp) {
            Ok((ws, offer)) => {
                self.reconnect_attempt = 0;
                self.ws_url = Some(ws);
                self.offer = Some(offer);
                self.phase = Phase::Paying;
                self.need_payment(now, Purpose::Upgrade);
            }
            Err(msg) => self.protocol_violation(msg),
        }
    }

    fn read_schema(&self, resp: &HttpResponse) -> Result<(x402_types::Url, Offer), String> {
        let ctx = self.ctx.as_ref().ok_or("no URL context")?;
        read_schema(ctx, self.cfg.version, resp)
            .map(|r| (r.websocket, r.offer))
            .map_err(|e| e.to_string())
    }

    fn need_payment(&mut self, now: Instant, purpose: Purpose) {
        if self.phase == Phase::Ended || self.no_more.is_some() || self.asking.is_some() {
            return;
        }
        // An unconfirmed payment is reused, even past its validBefore: the server
        // answers a payload it accepted with its first result, and refuses one it
        // did not. Only that definite answer lets us sign again for the slice.
        if self.pending.is_some() {
            match purpose {
                Purpose::Renew => self.send_renew(now),
                Purpose::Upgrade => self.connect(now),
            }
            return;
        }
        if let Some(max) = self.cfg.max_slices
            && self.slices >= max
        {
            self.stop_paying(now, EndReason::SliceLimit);
            if purpose == Purpose::Upgrade && !self.has_paid_time(now) {
                self.end(EndReason::SliceLimit, Some(CloseCode::Normal));
            }
            return;
        }
        let Some(offer) = self.offer.clone() else {
            return;
        };
        let slice = self.slices + 1;
        self.asking = Some((slice, purpose));
        self.stats.payments_requested += 1;
        self.events
            .push_back(ClientEvent::PaymentNeeded { slice, offer });
    }

    fn payment_header(&self) -> Option<(String, String)> {
        self.pending.as_ref().map(|p| {
            (
                self.cfg.version.payment_header().to_string(),
                p.header.clone(),
            )
        })
    }

    fn send_renew(&mut self, now: Instant) {
        let Some(url) = self.renew_url.clone() else {
            // No hello yet: pay on the upgrade instead.
            self.connect(now);
            return;
        };
        let Some(h) = self.payment_header() else {
            return;
        };
        let id = self.request_id();
        self.renew_req = Some(id);
        self.renew_slice = self.pending.as_ref().map(|p| p.slice);
        self.stats.renew_attempts += 1;
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Post,
            url,
            headers: vec![h],
        });
    }

    fn retry_renew(&mut self, now: Instant) {
        if self.pending.is_none() {
            return;
        }
        self.renew_attempt += 1;
        let delay = self.backoff(self.renew_attempt);
        self.stats.renew_retries += 1;
        self.renew_retry_at = Some(now + delay);
    }

    fn settlement(&self, resp: &HttpResponse) -> Option<SettleResponse> {
        let name = self.cfg.version.payment_response_header();
        resp.header(name)
            .and_then(|v| decode_header(headers::X_PAYMENT_RESPONSE, v).ok())
    }

    fn accept_payment(&mut self, slice: u64, settlement: Option<SettleResponse>) {
        if self.pending.as_ref().is_some_and(|p| p.slice == slice) {
            self.pending = None;
            self.resigns = 0;
            self.renew_attempt = 0;
            self.renew_retry_at = None;
            self.slices = self.slices.max(slice);
            self.stats.slices = self.slices;
            self.events
                .push_back(ClientEvent::PaymentAccepted { slice, settlement });
        }
    }

    fn refuse_payment(&mut self, now: Instant, status: u16, body: &[u8], purpose: Purpose) {
        let Some(p) = self.pending.take() else { return };
        let eb = ErrorBody::from_json(body).ok();
        let code = eb
            .as_ref()
            .map(|b| b.error.clone())
            .unwrap_or_else(|| ErrorCode::Other(format!("http_{status}")));
        let message = eb.map(|b| b.message).unwrap_or_default();
        let maybe_spent = code.maybe_spent();
        self.events.push_back(ClientEvent::PaymentRefused {
            slice: p.slice,
            status,
            code: code.clone(),
            maybe_spent,
        });
        self.resigns += 1;
        if self.resigns > 1 || maybe_spent {
            // A second definite refusal: stop paying rather than loop.
            let reason = EndReason::PaymentRefused {
                status,
                code,
                message,
            };
            self.no_more = Some(reason.clone());
            if !self.has_paid_time(now)
                || purpose == Purpose::Upgrade && !matches!(self.phase, Phase::Live { .. })
            {
                self.end(reason, Some(CloseCode::Normal));
            } else {
                self.stop_paying(now, reason);
            }
        } else {
            self.need_payment(now, purpose);
        }
    }

    fn on_renew_response(&mut self, now: Instant, resp: HttpResponse) {
        let carried = self.renew_slice.take();
        if carried.is_some() && carried != self.pending.as_ref().map(|p| p.slice) {
            // The answer about a payment already settled otherwise (its
            // acceptance came through an upgrade); it says nothing about the
            // payment now pending. Only the paid time it reports counts.
            if resp.status == 200
                && let Ok(r) = RenewResponse::from_json(&resp.body)
            {
                self.update_expiry(now, r.expires_at, None, r.slices);
            }
            return;
        }
        match resp.status {
            200 => match RenewResponse::from_json(&resp.body) {
                Ok(r) => {
                    let slice = self.pending.as_ref().map(|p| p.slice).unwrap_or(r.slices);
                    let settlement = self.settlement(&resp);
                    self.accept_payment(slice, settlement);
                    self.update_expiry(now, r.expires_at, None, r.slices);
                    self.events.push_back(ClientEvent::Renewed {
                        expires_at: r.expires_at,
                        slices: r.slices,
                    });
                    if self.phase == Phase::Down && self.reconnect_at.is_none() {
                        self.reconnect_at = Some(now);
                    }
                }
                Err(e) => self.protocol_violation(format!("renew answer: {e}")),
            },
            401 | 410 => self.end(
                EndReason::TokenRejected { code: resp.status },
                Some(CloseCode::Normal),
            ),
            s => match retry_kind(&resp) {
                Retry::HorizonLater => {
                    // Bought far enough ahead: keep the payload, try again later.
                    self.renew_retry_at =
                        Some(now + self.renew_margin() / 2 + Duration::from_millis(500));
                }
                Retry::Pending(after) => {
                    self.on_pending(after);
                    self.renew_retry_at = Some(now + after);
                }
                Retry::Backoff => self.retry_renew(now),
                Retry::No => self.refuse_payment(now, s, &resp.body, Purpose::Renew),
            },
        }
    }

    fn on_upgrade_refused(&mut self, now: Instant, paid_slice: Option<u64>, resp: HttpResponse) {
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
    fn paid_time_gone(&mut self, now: Instant) {
        self.paid_until = Some(now);
        if let Some(reason) = self.no_more.clone() {
            self.end(reason, None);
        } else {
            self.need_payment(now, Purpose::Upgrade);
        }
    }

    fn connect(&mut self, now: Instant) {
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

    fn reconnect(&mut self, now: Instant) {
        if self.has_paid_time(now) || self.pending.is_some() {
            self.connect(now);
        } else if let Some(reason) = self.no_more.clone() {
            self.end(reason, None);
        } else {
            self.need_payment(now, Purpose::Upgrade);
        }
    }

    fn connection_lost(&mut self, now: Instant) {
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

    fn update_expiry(
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
            self.end_at = Some(until + END_SLACK);
            return;
        }
        let margin = self.renew_margin();
        self.renew_at = Some(until.checked_sub(margin).unwrap_or(now).max(now));
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, h: Hello) {
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
        self.phase = Phase::Live { conn, hello: true };
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
        if self.renew_at.is_some_and(|t| t <= now) && self.pending.is_none() {
            self.renew_at = None;
            self.need_payment(now, Purpose::Renew);
        } else if self.pending.is_some() && self.renew_req.is_none() && self.asking.is_none() {
            // A renewal was interrupted by the drop: retry it with the same payload.
            self.send_renew(now);
        }
    }

    fn on_event(&mut self, e: Event) {
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

    fn on_pending(&mut self, retry_after: Duration) {
        if let Some(p) = &self.pending {
            self.stats.pending_answers += 1;
            self.events.push_back(ClientEvent::PaymentPending {
                slice: p.slice,
                retry_after,
            });
        }
    }

    fn on_renewed(&mut self, now: Instant, expires_at: u64, slices: u64) {
        if let Some(p) = &self.pending
            && slices >= p.slice
        {
            let slice = p.slice;
            self.renew_req = None;
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

/// How a non-success answer to a payment is treated (the one retry rule,
/// [`ErrorCode::is_retryable`] and [`x402_types::is_retryable_status`]).
enum Retry {
    /// Definite refusal.
    No,
    /// Same payload again, with backoff.
    Backoff,
    /// Same payload again after the server's `Retry-After` (pending settlement).
    Pending(Duration),
    /// Prepaid horizon reached: same payload, later.
    HorizonLater,
}

/// Longest `Retry-After` honoured (a server cannot park a client forever).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

fn retry_kind(resp: &HttpResponse) -> Retry {
    let body = ErrorBody::from_json(&resp.body).ok();
    let code = body.as_ref().map(|b| &b.error);
    let after = resp
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(body.as_ref().and_then(|b| b.retry_after))
        .map_or(Duration::from_secs(2), Duration::from_secs)
        .clamp(Duration::from_millis(200), MAX_RETRY_AFTER);
    match code {
        Some(ErrorCode::PaymentPending) => Retry::Pending(after),
        Some(ErrorCode::HorizonExceeded) => Retry::HorizonLater,
        Some(c) if c.is_retryable() => Retry::Backoff,
        Some(ErrorCode::SettlementUnknown) => Retry::No,
        _ if resp.status == 202 => Retry::Pending(after),
        _ if x402_types::is_retryable_status(resp.status) => Retry::Backoff,
        _ => Retry::No,
    }
}

/// A schema answer that passed every check a client makes before paying.
#[derive(Debug, Clone)]
pub struct CheckedSchema {
    /// The document.
    pub schema: Schema,
    /// `websocketEndpoint`, pinned to the schema request (scheme, host, port,
    /// path prefix, version, stream) and carrying a token.
    pub websocket: x402_types::Url,
    /// What to sign: the x402 requirement, agreeing with `paymentDetails`.
    pub offer: Offer,
}

/// The one schema reader (session, facade and command line): parses the 402
/// answer, checks its version and its `websocketEndpoint` against the schema
/// request (`ctx`), reads the x402 offer (v1 `accepts`, v2 `PAYMENT-REQUIRED`)
/// and refuses an offer that disagrees with `paymentDetails`.
pub fn read_schema(
    ctx: &UrlContext,
    version: PathVersion,
    resp: &HttpResponse,
) -> Result<CheckedSchema, x402_types::Error> {
    let bad = |m: &str| x402_types::Error::Protocol(m.to_string());
    let schema = Schema::from_json(&resp.body)?;
    schema.check_version(version)?;
    let (ws, token) = ctx.check(&schema.websocket_endpoint, EndpointKind::Stream)?;
    if token.is_none() {
        return Err(bad("websocketEndpoint has no token"));
    }
    let req = schema.payment_details.requirement();
    let resource = {
        let mut u = ws.clone();
        u.set_query(None);
        u.to_string()
    };
    let offer = match version {
        PathVersion::V1 => match schema.accepts.as_ref().and_then(|a| a.first()) {
            Some(r) => Offer::V1(r.clone()),
            None => Offer::from_requirement(
                PathVersion::V1,
                &req,
                &resource,
                &schema.stream.description,
            ),
        },
        PathVersion::V2 => match resp.header(headers::PAYMENT_REQUIRED) {
            Some(h) => {
                let pr = PaymentRequiredV2::from_header(h)?;
                match pr
                    .into_offer()
                    .ok_or_else(|| bad("PAYMENT-REQUIRED has no accepts"))?
                {
                    Offer::V2 {
                        accepted,
                        resource: None,
                    } => Offer::V2 {
                        accepted,
                        resource: Some(ResourceInfo {
                            url: resource,
                            description: None,
                            mime_type: None,
                        }),
                    },
                    offer => offer,
                }
            }
            None => Offer::from_requirement(
                PathVersion::V2,
                &req,
                &resource,
                &schema.stream.description,
            ),
        },
    };
    // The x402 part must agree with paymentDetails: no bait and switch.
    let r = offer.requirement();
    if r.amount != req.amount
        || r.network != req.network
        || !r.pay_to.eq_ignore_ascii_case(&req.pay_to)
        || !r.asset.eq_ignore_ascii_case(&req.asset)
        || r.scheme != req.scheme
    {
        return Err(bad("x402 requirement disagrees with paymentDetails"));
    }
    Ok(CheckedSchema {
        schema,
        websocket: ws,
        offer,
    })
}
