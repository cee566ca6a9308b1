#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

pub use driver::{FailedRequest, Progress};
pub use x402_payer::{
    self as payer, Budget, BudgetScope, ClientChannel, EvmChannelPayer, EvmExactPayer, LocalSigner,
    Payer, PolicyError, SpendPolicy,
};
pub use x402_session::{self as session, ClientEvent, EndReason, ReconnectPolicy};
pub use x402_transport::{
    self as transport, HttpTransport, ReqwestTransport, TransportError, TransportErrorKind,
    TungsteniteConnector, WsConnector,
};
pub use x402_types::{
    self as types, Amount, Event, EventData, Hello, PathVersion, Requirement, Schema,
};

use driver::Driver;
use x402_transport::Method;

mod channel;
pub mod driver;
mod ticket;

pub use channel::ChannelRefund;
pub use ticket::{SessionTicket, TICKET_FORMAT};

/// Everything that can go wrong, classified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spending policy or the payer declined to pay a slice; nothing was
    /// signed or spent. `message` says it for a person (a policy refusal in
    /// USDC, naming `--max-per-slice` or `--budget`); `source`, when the
    /// session knows it, is the typed refusal (for a policy's,
    /// [`x402_payer::PolicyError`]: which limit, and by how much).
    #[error("{}: {message}", if *.policy { "spending policy refused" } else { "payer failed" })]
    Declined {
        /// A spending-policy refusal ([`is_policy`](Self::is_policy)).
        policy: bool,
        /// What was declined and why.
        message: String,
        /// The payer's own error.
        #[source]
        source: Option<x402_payer::Error>,
    },
    /// The signer failed or refused (outside a session: building a payer).
    #[error("payer failed: {0}")]
    Payer(#[from] x402_payer::Error),
    /// The server definitely refused the payment.
    #[error("payment refused by the server ({status} {code}): {message}")]
    PaymentRefused {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: x402_types::ErrorCode,
        /// Message.
        message: String,
    },
    /// The server broke the protocol (bad schema, URL mismatch, malformed frames) or refused the token.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The HTTP or WebSocket transport could not be built or used.
    #[error("transport failure: {0}")]
    Transport(#[from] TransportError),
    /// The connection could not be restored while paid time remained
    /// (`last` is the last failure seen, with its URL).
    #[error("connection lost after {attempts} attempts{}", last.as_ref().map(|f| format!(" (last: {f})")).unwrap_or_default())]
    ConnectionLost {
        /// Reconnection attempts made.
        attempts: u32,
        /// The last request or connection that failed, if one did.
        last: Option<FailedRequest>,
    },
    /// Another connection took over the session's token (4409).
    #[error("another connection took over the session (4409)")]
    Superseded,
    /// The server could not be reached at the start, before anything was paid
    /// (refused, name not resolved, TLS, timeout: see the source's
    /// `is_refused()`, `is_dns()`, `is_tls()`, `is_timeout()`). Nothing was
    /// retried: nothing was paid, so there was nothing to protect.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL asked for, without its query (a session token).
        url: String,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// The server refused the session's token (401: not valid there; 410: its
    /// quote expired unpaid, or a saved session is no longer known).
    #[error("the server refused the session's token ({code})")]
    TokenRejected {
        /// HTTP status or close code.
        code: u16,
    },
    /// Before anything was paid, the server said it cannot sell the stream
    /// now (its source failed, its store is down, it is full).
    #[error("the server cannot sell this stream now ({status} {code}): {message}")]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The server's code (`source_unavailable`, `store_unavailable`, ...).
        code: x402_types::ErrorCode,
        /// The server's words.
        message: String,
    },
    /// A bad configuration or argument.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The server sells no stream by this id (nothing was paid).
    #[error("unknown stream: {0}")]
    UnknownStream(String),
    /// A wire-format error.
    #[error(transparent)]
    Types(#[from] x402_types::Error),
}

impl Error {
    /// A spending-policy refusal.
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            Error::Declined { policy: true, .. } | Error::Payer(x402_payer::Error::Policy(_))
        )
    }

    /// The server refused the payment.
    pub fn is_payment_refused(&self) -> bool {
        matches!(self, Error::PaymentRefused { .. })
    }

    /// The server could not be reached at the start ([`Error::Unreachable`]);
    /// [`transport_error`](Self::transport_error) says why.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// The classified transport failure behind this error, if there is one
    /// (`is_refused()`, `is_dns()`, `is_tls()`, `is_timeout()`, `is_connect()`).
    pub fn transport_error(&self) -> Option<&TransportError> {
        match self {
            Error::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Trying again later may succeed (network trouble, server busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_)
            | Error::Unreachable { .. }
            | Error::ConnectionLost { .. }
            | Error::Unavailable { .. } => true,
            Error::PaymentRefused { status, code, .. } => {
                code.is_retryable() || x402_types::is_retryable_status(*status)
            }
            _ => false,
        }
    }

    /// From a session's end reason (for sessions that ended before streaming).
    /// `declined` is the payer's typed refusal behind a
    /// [`EndReason::PaymentDeclined`] ([`Progress::declined`]), if known.
    fn from_end(reason: &EndReason, declined: Option<x402_payer::Error>) -> Option<Error> {
        Some(match reason {
            EndReason::Stopped | EndReason::SliceLimit | EndReason::StreamEnded { .. } => {
                return None;
            }
            EndReason::PaymentDeclined { message, policy } => Error::Declined {
                policy: *policy,
                message: message.clone(),
                source: declined,
            },
            EndReason::PaymentRefused {
                status,
                code,
                message,
            } => Error::PaymentRefused {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            EndReason::Superseded => Error::Superseded,
            EndReason::TokenRejected { code } => Error::TokenRejected { code: *code },
            EndReason::ConnectionLost { attempts } => Error::ConnectionLost {
                attempts: *attempts,
                last: None,
            },
            EndReason::ProtocolViolation(m) => Error::Protocol(m.clone()),
            EndReason::UnknownStream { message } => Error::UnknownStream(message.clone()),
            EndReason::Unavailable {
                status,
                code,
                message,
            } => Error::Unavailable {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            other => Error::Protocol(other.to_string()),
        })
    }
}

/// What is wrong with a client's configuration or its arguments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`ClientBuilder::payer`] was not called.
    #[error("no payer configured")]
    NoPayer,
    /// [`ClientBuilder::policy`] was not called.
    #[error("no spending policy configured")]
    NoPolicy,
    /// The base URL does not parse.
    #[error("base URL: {0}")]
    BaseUrl(#[source] x402_types::Error),
    /// The session machine refused the configuration.
    #[error(transparent)]
    Session(#[from] x402_session::UsageError),
    /// A saved session ticket is unreadable or inconsistent.
    #[error("session ticket: {0}")]
    Ticket(String),
    /// No channel is held with the seller (a refund needs the channel).
    #[error("no channel is held with the seller of {stream} (scheme {scheme})")]
    NoChannel {
        /// The stream named.
        stream: String,
        /// The client's scheme.
        scheme: String,
    },
}

/// `Result` with the facade [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a [`Client`].
pub struct ClientBuilder {
    http_base: String,
    version: PathVersion,
    payer: Option<Arc<dyn Payer>>,
    policy: Option<SpendPolicy>,
    session_budget: Option<Amount>,
    renew_margin: Option<Duration>,
    reconnect: ReconnectPolicy,
    max_slices: Option<u64>,
    scheme: String,
    http: Option<Arc<dyn HttpTransport>>,
    ws: Option<Arc<dyn WsConnector>>,
}

impl ClientBuilder {
    /// HTTP base URL (default `https://x402.atomicstream.net`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.http_base = url.into();
        self
    }
    /// Path version (default v2).
    pub fn version(mut self, v: PathVersion) -> Self {
        self.version = v;
        self
    }
    /// The payer (required to open streams).
    pub fn payer(mut self, p: Arc<dyn Payer>) -> Self {
        self.payer = Some(p);
        self
    }
    /// The spending policy (required to open streams).
    pub fn policy(mut self, p: SpendPolicy) -> Self {
        self.policy = Some(p);
        self
    }
    /// A budget for each session opened (on top of the policy's lifetime budget).
    pub fn session_budget(mut self, a: Amount) -> Self {
        self.session_budget = Some(a);
        self
    }
    /// Renew margin (default: the protocol's rule).
    pub fn renew_margin(mut self, d: Duration) -> Self {
        self.renew_margin = Some(d);
        self
    }
    /// Reconnect backoff.
    pub fn reconnect(mut self, r: ReconnectPolicy) -> Self {
        self.reconnect = r;
        self
    }
    /// The x402 scheme to pay with: `"exact"` (the default: one transfer per
    /// slice) or `"batch-settlement"` (a channel: one deposit, then a voucher per
    /// slice; pay with an [`EvmChannelPayer`]).
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Stop after this many slices per session.
    pub fn max_slices(mut self, n: u64) -> Self {
        self.max_slices = Some(n);
        self
    }
    /// Replaces the HTTP transport.
    pub fn http_transport(mut self, t: Arc<dyn HttpTransport>) -> Self {
        self.http = Some(t);
        self
    }
    /// Replaces the WebSocket transport.
    pub fn ws_transport(mut self, t: Arc<dyn WsConnector>) -> Self {
        self.ws = Some(t);
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        x402_types::Url::parse(&self.http_base)
            .map_err(|e| Error::Config(ConfigError::BaseUrl(e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http: match self.http.clone() {
                    Some(h) => h,
                    None => Arc::new(ReqwestTransport::standard()?),
                },
                ws: self
                    .ws
                    .clone()
                    .unwrap_or_else(|| Arc::new(TungsteniteConnector::default())),
                b: self,
            }),
        })
    }
}

struct Inner {
    b: ClientBuilder,
    http: Arc<dyn HttpTransport>,
    ws: Arc<dyn WsConnector>,
}

/// Buys live streams by the slice.
///
/// ```no_run
/// use std::sync::Arc;
/// use atomicstream::{Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy, Amount};
/// use futures::StreamExt;
///
/// # async fn run() -> atomicstream::Result<()> {
/// let payer = Arc::new(EvmExactPayer::new(LocalSigner::from_env("X402_PRIVATE_KEY")?));
/// let client = Client::builder()
///     .base_url("http://127.0.0.1:4021")
///     .payer(payer)
///     .policy(SpendPolicy::new(Amount::from_display("0.05", 6)?).with_lifetime_budget(Amount::from_display("1", 6)?))
///     .build()?;
/// let mut session = client.open("btc-usd").await?;
/// while let Some(ev) = session.next().await {
///     if let ClientEvent::Data(e) = ev {
///         println!("{} {}", e.seq, e.data);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A stream's terms, from its schema.
#[derive(Debug, Clone)]
pub struct SchemaInfo {
    /// The schema document.
    pub schema: Schema,
    /// The requirement of one slice.
    pub requirement: Requirement,
    /// Decimals of the asset (6 for USDC; 6 assumed for unknown assets).
    pub decimals: u8,
    /// Price per slice in display units.
    pub price_per_slice: String,
    /// Price per minute in display units.
    pub price_per_minute: String,
    /// Slice length announced in the schema (`hello.sliceSeconds` is authoritative).
    pub estimated_slice_seconds: u64,
    /// The x402 offer of the client's scheme, checked against `paymentDetails`.
    pub offer: x402_types::Offer,
    /// The renew URL with the schema's token (payments and refunds go there).
    pub renew_url: String,
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            http_base: "https://x402.atomicstream.net".into(),
            version: PathVersion::V2,
            payer: None,
            policy: None,
            session_budget: None,
            renew_margin: None,
            reconnect: ReconnectPolicy::default(),
            max_slices: None,
            scheme: "exact".into(),
            http: None,
            ws: None,
        }
    }

    /// The streams the server sells (`GET /streams`), no payment.
    pub async fn catalog(&self) -> Result<x402_types::Catalog> {
        let b = &self.inner.b;
        let url = format!("{}/streams", b.http_base.trim_end_matches('/'));
        let resp = self
            .inner
            .http
            .request(Method::Get, &url, &[])
            .await
            .map_err(|e| unreachable(&url, e))?;
        if resp.status != 200 {
            return Err(Error::Protocol(format!(
                "the catalog request answered {}",
                resp.status
            )));
        }
        Ok(x402_types::Catalog::from_json(&resp.body)?)
    }

    /// Fetches a stream's schema (no payment).
    pub async fn schema(&self, id: &str) -> Result<SchemaInfo> {
        let b = &self.inner.b;
        let url = x402_types::version::schema_url(&b.http_base, b.version, id)?;
        let resp = self
            .inner
            .http
            .request(Method::Get, url.as_str(), &[])
            .await
            .map_err(|e| unreachable(url.as_str(), e))?;
        if resp.status == 404 {
            let body = x402_types::ErrorBody::from_json(&resp.body)
                .map(|b| b.message)
                .unwrap_or_default();
            return Err(Error::UnknownStream(body));
        }
        if resp.status != 402 && resp.status != 200 {
            let body = x402_types::ErrorBody::from_json(&resp.body)
                .map(|b| b.message)
                .unwrap_or_default();
            return Err(Error::Protocol(format!(
                "schema request answered {}: {body}",
                resp.status
            )));
        }
        // The same reader and checks the session applies before paying.
        let ctx = x402_types::UrlContext::from_schema_url(url.as_str())?;
        let checked = x402_session::read_schema_of(
            &ctx,
            b.version,
            &x402_session::HttpResponse {
                status: resp.status,
                headers: resp.headers.clone(),
                body: resp.body.clone(),
            },
            &b.scheme,
        )?;
        let token = checked
            .websocket
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "t")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let renew_url =
            x402_types::version::renew_url(&b.http_base, b.version, id, &token)?.to_string();
        let offer = checked.offer;
        let schema = checked.schema;
        let requirement = schema.payment_details.requirement();
        let decimals = requirement
            .asset
            .parse()
            .ok()
            .and_then(|a| x402_types::known_asset(&requirement.network, &a))
            .map_or(6, |k| k.decimals);
        let slice = schema.pricing.estimated_duration.max(1);
        let per_minute = requirement
            .amount
            .checked_mul(60)
            .and_then(|a| a.atomic().div_rem_u64(slice))
            .map(|(q, _)| Amount(q));
        Ok(SchemaInfo {
            price_per_slice: requirement.amount.to_display(decimals),
            price_per_minute: per_minute
                .map(|a| a.to_display(decimals))
                .unwrap_or_default(),
            estimated_slice_seconds: schema.pricing.estimated_duration,
            offer,
            renew_url,
            requirement,
            decimals,
            schema,
        })
    }

    /// Opens a stream: pays for the first slice and waits for `hello`.
    /// Refusals before streaming are errors; later ends arrive as `Ended` events.
    ///
    /// A server that cannot be reached at the start (the schema request, or
    /// the first connection failing before anything was sent) is
    /// [`Error::Unreachable`] at once, naming the URL and the cause; nothing
    /// was paid. Once a slice is paid, connection failures are retried by the
    /// reconnect policy.
    pub async fn open(&self, id: &str) -> Result<StreamSession> {
        let b = &self.inner.b;
        let cfg = x402_session::ClientConfig::new(&b.http_base, b.version, id);
        self.start(cfg, None).await
    }

    /// Takes up a saved session ([`StreamSession::ticket`], possibly saved by
    /// another process) on the ticket's server, version and stream, with this
    /// client's payer, policy and transports: it reads the schema (the terms,
    /// for renewals), reconnects with the session's token from the ticket's
    /// next event **without paying while the session has paid time**, and
    /// then renews as usual within the spending policy. If the paid time is
    /// over, the server says so and the next slice is bought on the same
    /// session, within the policy (a policy or [`ClientBuilder::max_slices`]
    /// that allows no more ends the session instead). `max_slices` counts the
    /// slices bought after the ticket's.
    ///
    /// Errors as [`open`](Self::open), plus [`Error::TokenRejected`] when the
    /// server no longer knows the session and [`Error::Config`] when the
    /// ticket's stream URL does not belong to its server, version and stream.
    ///
    /// ```no_run
    /// # async fn run(client: atomicstream::Client, saved: &str) -> atomicstream::Result<()> {
    /// use futures::StreamExt;
    /// let ticket = atomicstream::SessionTicket::from_json(saved)?;
    /// let mut session = client.resume(&ticket).await?; // no payment while paid time remains
    /// while let Some(ev) = session.next().await {
    ///     if let atomicstream::ClientEvent::Data(e) = ev {
    ///         println!("{} {}", e.seq, e.data);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, ticket: &SessionTicket) -> Result<StreamSession> {
        let cfg =
            x402_session::ClientConfig::new(&ticket.base_url, ticket.version, &ticket.stream_id);
        let point = ticket.resume_point()?;
        self.start(cfg, Some(point)).await
    }

    async fn start(
        &self,
        mut cfg: x402_session::ClientConfig,
        resume: Option<x402_session::ResumePoint>,
    ) -> Result<StreamSession> {
        let b = &self.inner.b;
        let payer = b.payer.clone().ok_or(Error::Config(ConfigError::NoPayer))?;
        let policy = b
            .policy
            .clone()
            .ok_or(Error::Config(ConfigError::NoPolicy))?;
        let already = resume.as_ref().map_or(0, |p| p.slices);
        cfg.renew_margin = b.renew_margin;
        cfg.reconnect = b.reconnect.clone();
        cfg.max_slices = b.max_slices.map(|n| n.saturating_add(already));
        cfg.scheme = b.scheme.clone();
        let (base_url, version, stream_id) =
            (cfg.http_base.clone(), cfg.version, cfg.stream_id.clone());
        let budget = b
            .session_budget
            .map(|a| Arc::new(Budget::new(BudgetScope::Session, a)));
        let (mut driver, handle) = Driver::new(
            cfg,
            self.inner.http.clone(),
            self.inner.ws.clone(),
            payer,
            policy,
            budget,
        )
        .map_err(ConfigError::from)?;
        if let Some(point) = &resume {
            driver = driver.resume_from(point).map_err(ConfigError::from)?;
        }
        let task = tokio::spawn(driver.run());
        let mut s = StreamSession {
            events: handle.events,
            stop: Some(handle.stop),
            progress: handle.progress,
            pending: None,
            base_url,
            version,
            stream_id,
            _task: AbortOnDrop(task),
        };
        // Wait for hello (or an early end).
        loop {
            match s.events.recv().await {
                Some(ClientEvent::Hello(h)) => {
                    s.pending = Some(ClientEvent::Hello(h));
                    return Ok(s);
                }
                Some(ClientEvent::Ended(r)) => {
                    return Err(s.end_error(&r).unwrap_or_else(|| {
                        Error::Protocol(format!("ended before streaming: {r}"))
                    }));
                }
                Some(_) => continue,
                None => return Err(Error::Protocol("driver stopped".into())),
            }
        }
    }
}

/// A transport failure of a request made before anything was paid.
fn unreachable(url: &str, e: TransportError) -> Error {
    let f = FailedRequest::new(url, e);
    Error::Unreachable {
        url: f.url,
        source: f.error,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<EndReason>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        // The driver stops itself when the event receiver is dropped; abort is the backstop.
        if !self.0.is_finished() {
            let h = self.0.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                h.abort();
            });
        }
    }
}

/// An open stream: a `futures::Stream` of [`ClientEvent`]s ending with `Ended`.
pub struct StreamSession {
    events: driver::Events,
    stop: Option<mpsc::Sender<()>>,
    progress: Arc<Mutex<Progress>>,
    pending: Option<ClientEvent>,
    base_url: String,
    version: PathVersion,
    stream_id: String,
    _task: AbortOnDrop,
}

impl StreamSession {
    /// Stops the session cleanly (closes the socket; the stream then yields `Ended(Stopped)`).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.try_send(());
        }
    }

    /// What has been paid and received so far.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Amount paid so far (atomic units).
    pub fn paid(&self) -> Amount {
        self.progress().paid
    }

    /// Paid time left.
    pub fn remaining(&self) -> Duration {
        self.progress().remaining()
    }

    /// The session saved for later ([`Client::resume`]), once a slice is
    /// paid: its server, stream, token, slices, paid time and the next event
    /// the session expects. Save it whenever it changes and when stopping
    /// (`Ctrl-C`, a time limit, the budget) to use the paid time left later;
    /// an application that stops with events received but not used saves
    /// [`SessionTicket::with_next_seq`] the first one it did not use.
    pub fn ticket(&self) -> Option<SessionTicket> {
        let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let point = p.resume.as_ref()?;
        SessionTicket::new(&self.base_url, self.version, &self.stream_id, point)
    }

    /// The error an end amounts to, with what this session knows besides: the
    /// server that could not be reached at the start ([`Error::Unreachable`]),
    /// the last failure behind a lost connection, the payer's typed refusal.
    /// `None` for normal ends.
    pub fn end_error(&self, reason: &EndReason) -> Option<Error> {
        let p = self.progress();
        if let Some(f) = p.unreachable {
            return Some(Error::Unreachable {
                url: f.url,
                source: f.error,
            });
        }
        match (reason, p.last_failure) {
            (EndReason::ConnectionLost { attempts }, Some(f)) => Some(Error::ConnectionLost {
                attempts: *attempts,
                last: Some(f),
            }),
            _ => Error::from_end(reason, p.declined),
        }
    }
}

impl Stream for StreamSession {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        if let Some(e) = self.pending.take() {
            return Poll::Ready(Some(e));
        }
        self.events.poll_recv(cx)
    }
}
