//! The client role's vocabulary: ids, transmits, answers, events, configuration and counters.

use std::time::Duration;

use x402_types::{CloseCode, ErrorCode, Event, Hello, Offer, PathVersion, SettleResponse};

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
    /// Send a text frame (the session's only one is the keep-alive `ping`).
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
    /// The server sells no stream by this id (404 on the schema): nothing
    /// was paid; ask the catalog (`GET /streams`) for the ids it sells.
    UnknownStream {
        /// The server's words.
        message: String,
    },
    /// Before anything was paid, the server said it cannot sell the stream
    /// now (a 5xx or 429 with a reason: `source_unavailable`,
    /// `store_unavailable`, ...). Nothing to protect, so no retries.
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The server's code.
        code: ErrorCode,
        /// The server's words.
        message: String,
    },
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
    /// The server said the stream's source failed: events stopped (paid time
    /// keeps running; events resume if the source does).
    SourceUnavailable {
        /// The server's words.
        message: String,
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
    /// The connection dropped (or went silent, or the schema request
    /// failed); trying again after `delay`.
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
    /// While a socket is open, a `ping` is sent this often (default 15 s).
    pub keep_alive: Duration,
    /// A socket on which nothing was heard for this long is dead: it is
    /// closed and the session reconnects, without paying while paid time
    /// remains (default 45 s, three pings unanswered). Longer than `keep_alive`.
    pub idle_timeout: Duration,
    /// The x402 scheme to pay with: `"exact"` (default: one transfer per slice) or
    /// `"batch-settlement"` (a channel: one deposit, a voucher per slice).
    pub scheme: String,
}

/// Default [`ClientConfig::keep_alive`].
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Default [`ClientConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

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
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            scheme: "exact".into(),
        }
    }
}

/// The protocol's default renew margin for a slice length.
pub fn default_renew_margin(slice_seconds: u64) -> Duration {
    let fifth = Duration::from_millis(slice_seconds.saturating_mul(200));
    let clamped = fifth.clamp(Duration::from_secs(10), Duration::from_secs(60));
    clamped.min(Duration::from_millis(slice_seconds.saturating_mul(500)))
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
    /// Payloads sent in-band on the socket (a channel's vouchers).
    pub in_band_payments: u64,
}
