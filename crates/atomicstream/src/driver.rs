//! The async driver: performs the session's transmits, feeds back their
//! outcomes, signs when asked (policy first), and sleeps until `poll_timeout`.
//! It decides no protocol rule: even keep-alive pings and the verdict that a
//! silent socket is dead are the session's (`ClientConfig::keep_alive`,
//! `ClientConfig::idle_timeout`); the driver only sends the ping it is given.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;
use x402_payer::{Budget, Payer, ReservationBook, SpendPolicy};
use x402_session::{
    ClientConfig, ClientEvent, ClientSession, ConnId, EndReason, RequestId, ResumePoint, Transmit,
    TransportFailure,
};
use x402_types::{Amount, Hello};

use x402_transport::{
    ConnectError, HttpResponse, HttpTransport, TransportError, WsConnection, WsConnector, WsFrame,
};

/// What the session has bought and received so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Slices the server accepted.
    pub slices: u64,
    /// Amount the server accepted (atomic units).
    pub paid: Amount,
    /// When paid time ends (local clock), if known.
    pub paid_until: Option<Instant>,
    /// Events delivered.
    pub events: u64,
    /// Renewals accepted.
    pub renewals: u64,
    /// Renewal attempts retried with the same payload.
    pub renew_retries: u64,
    /// Payments carried in-band on the socket (a channel's vouchers).
    pub in_band_payments: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// The latest hello.
    pub hello: Option<Hello>,
    /// Why it ended, once it has.
    pub ended: Option<EndReason>,
    /// Where the session can be taken up later ([`Driver::resume_from`]), once
    /// a slice was paid for: its token-bearing stream URL, slices, paid time and next event.
    pub resume: Option<ResumePoint>,
    /// The latest request or connection that failed without an answer.
    pub last_failure: Option<FailedRequest>,
    /// Set when the session gave up at its start because the server could
    /// not be reached, before anything was paid or sent with a payment; the
    /// session then ends [`EndReason::Stopped`] at once (no retries).
    pub unreachable: Option<FailedRequest>,
    /// The payer's or the spending policy's own refusal, typed, behind an
    /// [`EndReason::PaymentDeclined`] end (the end reason carries its words).
    pub declined: Option<x402_payer::Error>,
}

/// A request or connection that failed without an answer: where to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRequest {
    /// The URL without its query (which carries the session token).
    pub url: String,
    /// Why.
    pub error: TransportError,
}

impl FailedRequest {
    /// `url`'s query (the session token) is dropped.
    pub fn new(url: &str, error: TransportError) -> Self {
        let url = url.split(['?', '#']).next().unwrap_or_default().to_string();
        FailedRequest { url, error }
    }
}

impl std::fmt::Display for FailedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.error)
    }
}

impl Progress {
    /// Paid time left now.
    pub fn remaining(&self) -> Duration {
        self.paid_until
            .map(|p| p.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

enum Input {
    Http(RequestId, String, Result<HttpResponse, TransportError>),
    Upgrade(
        ConnId,
        String,
        Result<(HttpResponse, Box<dyn WsConnection>), ConnectError>,
    ),
}

/// The live socket, read by the driver loop itself (no task hop per frame).
struct Live {
    conn: ConnId,
    socket: Box<dyn WsConnection>,
}

/// What woke the loop.
enum Wake {
    Input(Input),
    Frame(ConnId, Option<Result<WsFrame, TransportError>>),
    Timeout,
    Stop(bool),
}

/// The session's events, as the application receives them.
///
/// The driver hands them over in bursts (one wake of the application per
/// burst of frames, not one per event); [`Events::recv`] yields them one by one.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Vec<ClientEvent>>,
    buf: std::collections::VecDeque<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the driver is gone.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ClientEvent>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return std::task::Poll::Ready(Some(e));
            }
            match self.rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(batch)) => self.buf = batch.into(),
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// The application's side of a running driver.
#[derive(Debug)]
pub struct DriverHandle {
    /// Events (never `PaymentNeeded`, which the driver handles); ends with `Ended`.
    pub events: Events,
    /// Dropping or sending on it stops the session.
    pub stop: mpsc::Sender<()>,
    /// Progress counters.
    pub progress: Arc<Mutex<Progress>>,
}

/// Drives one [`ClientSession`] over real transports.
///
/// Until the session first reaches the stream (its first `hello`), a
/// connection that cannot be made ends it at once instead of retrying: the
/// schema request failing in any way, or the first upgrade failing before
/// anything was sent ([`TransportError::is_connect`]: refused, name not
/// resolved, TLS). Nothing was paid, so there is nothing to protect; the cause
/// is in [`Progress::unreachable`] and the session ends
/// [`EndReason::Stopped`]. From then on, failures are retried as the
/// session's reconnect policy says: paid time is protected.
pub struct Driver {
    session: ClientSession,
    http: Arc<dyn HttpTransport>,
    ws: Arc<dyn WsConnector>,
    payer: Arc<dyn Payer>,
    policy: SpendPolicy,
    budget: Option<Arc<Budget>>,
    progress: Arc<Mutex<Progress>>,
    events: mpsc::Sender<Vec<ClientEvent>>,
    /// Events waiting to be handed over with the rest of their burst.
    outbox: Vec<ClientEvent>,
    stop: mpsc::Receiver<()>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    live: Option<Live>,
    /// What was signed and what became of it (the budget's side).
    book: ReservationBook,
    events_closed: bool,
    /// Data events handed to the application since the progress was last updated.
    delivered: u64,
    /// Whether a hello arrived (the stream was reached at least once).
    reached: bool,
    /// WebSocket connections attempted.
    ws_attempts: u32,
}

/// At most this many frames that already arrived are read after the one that woke the driver.
const READ_AHEAD: usize = 63;

/// A burst also ends once its frames reach this many bytes. Large events
/// then go to the application one or two at a time: while they are still in
/// the cache, with no failed read-ahead (tungstenite zero-fills its read
/// buffer before every read, even one that finds nothing), and with few alive
/// at once, so the allocator reuses their memory instead of faulting in fresh
/// pages. ~64 KiB events: client CPU per event from 1.06-1.08x the bare
/// client's to 1.00-1.02x (`cargo xtask bench`, row 2).
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// The length of a text frame (what a burst counts).
fn text_len(f: &Option<Result<WsFrame, TransportError>>) -> usize {
    match f {
        Some(Ok(WsFrame::Text(t))) => t.len(),
        _ => 0,
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Driver {
    /// A driver for a new session; `budget` is the session's own budget, if any.
    pub fn new(
        mut cfg: ClientConfig,
        http: Arc<dyn HttpTransport>,
        ws: Arc<dyn WsConnector>,
        payer: Arc<dyn Payer>,
        policy: SpendPolicy,
        budget: Option<Arc<Budget>>,
    ) -> Result<(Driver, DriverHandle), x402_session::UsageError> {
        let mut seed = [0u8; 8];
        if getrandom_fill(&mut seed) {
            cfg.jitter_seed = u64::from_le_bytes(seed);
        }
        let session = ClientSession::new(cfg, now(), unix_now())?;
        // Bursts of at most READ_AHEAD + 1 frames' events: up to about 1,000 events queued.
        let (events_tx, events) = mpsc::channel(16);
        let (stop_tx, stop) = mpsc::channel(1);
        let (inputs_tx, inputs) = mpsc::channel(1024);
        let progress = Arc::new(Mutex::new(Progress::default()));
        Ok((
            Driver {
                session,
                http,
                ws,
                payer,
                policy,
                budget,
                progress: progress.clone(),
                events: events_tx,
                outbox: Vec::new(),
                stop,
                inputs_tx,
                inputs,
                live: None,
                book: ReservationBook::default(),
                events_closed: false,
                delivered: 0,
                reached: false,
                ws_attempts: 0,
            },
            DriverHandle {
                events: Events {
                    rx: events,
                    buf: Default::default(),
                },
                stop: stop_tx,
                progress,
            },
        ))
    }

    /// Makes the session take up a saved one ([`Progress::resume`], possibly
    /// from another process) instead of buying a new one: the schema is
    /// read for the terms, then the saved token reconnects from the saved
    /// next event without paying. If the server says the paid time is over
    /// (402), the next slice is bought on the same session, within the
    /// spending policy. Call before [`run`](Self::run).
    ///
    /// A resume point whose URL does not belong to the configured server,
    /// version and stream is refused ([`x402_session::UsageError::Config`]).
    pub fn resume_from(mut self, point: &ResumePoint) -> Result<Self, x402_session::UsageError> {
        self.session.resume_from(point)?;
        self.progress().resume = Some(point.clone());
        Ok(self)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the session to its end.
    pub async fn run(mut self) -> EndReason {
        if let Err(e) = self.session.open(now()) {
            return EndReason::ProtocolViolation(format!("driver misuse: {e}"));
        }
        let mut stop_open = true;
        loop {
            self.drain().await;
            if self.session.is_ended() {
                break;
            }
            let deadline = self.session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let frame = async {
                match self.live.as_mut() {
                    Some(l) => (l.conn, l.socket.recv().await),
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                (conn, f) = frame => Wake::Frame(conn, f),
                Some(input) = self.inputs.recv() => Wake::Input(input),
                _ = sleep => Wake::Timeout,
                s = self.stop.recv(), if stop_open => Wake::Stop(s.is_some()),
            };
            let r = match wake {
                Wake::Input(input) => self.feed(input),
                Wake::Frame(conn, f) => {
                    // Frames that already arrived are handled before the events go
                    // out: one wake of the application per burst, not per frame.
                    let mut bytes = text_len(&f);
                    let mut r = self.on_frame(conn, f).await;
                    for _ in 0..READ_AHEAD {
                        let Some(l) = self
                            .live
                            .as_mut()
                            .filter(|_| r.is_ok() && bytes < READ_AHEAD_BYTES)
                        else {
                            break;
                        };
                        let conn = l.conn;
                        match l.socket.recv().now_or_never() {
                            Some(f) => {
                                bytes += text_len(&f);
                                // The session takes one input at a time: drain the last one.
                                self.drain_outputs().await;
                                r = self.on_frame(conn, f).await;
                            }
                            None => break,
                        }
                    }
                    r
                }
                Wake::Timeout => {
                    // The session's timers include a keep-alive every 15 s
                    // while a socket is open: refused payments past their
                    // validBefore are released at that pace.
                    self.book.release_expired(unix_now());
                    self.session.handle_timeout(now())
                }
                Wake::Stop(open) => {
                    stop_open = open;
                    self.session.stop(now())
                }
            };
            if let Err(e) = r {
                let reason = EndReason::ProtocolViolation(format!("driver misuse: {e}"));
                self.progress().ended = Some(reason.clone());
                return reason;
            }
        }
        if let Some(l) = self.live.take() {
            close_and_wait(l.socket, 1000).await;
        }
        // Reservations still open belong to payments whose fate is unknown: they stay reserved.
        // Refused ones are released once their validBefore has passed, after the session.
        for (until, r) in std::mem::take(&mut self.book).into_held() {
            let wait = Duration::from_secs(until.saturating_sub(unix_now()));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                r.release();
            });
        }
        self.progress().ended.clone().unwrap_or(EndReason::Stopped)
    }

    async fn on_frame(
        &mut self,
        conn: ConnId,
        f: Option<Result<WsFrame, TransportError>>,
    ) -> Result<(), x402_session::UsageError> {
        let t = now();
        match f {
            Some(Ok(WsFrame::Text(text))) => self.session.handle_ws_message(t, conn, &text),
            Some(Ok(WsFrame::Closed(code))) => {
                self.live = None;
                self.session
                    .handle_ws_closed(t, conn, code.map(x402_types::CloseCode::from))
            }
            Some(Err(e)) if e.is_frame() => {
                if let Some(l) = self.live.take() {
                    close_in_background(l.socket, 1009);
                }
                self.session
                    .handle_ws_closed(t, conn, Some(x402_types::CloseCode::TooBig))
            }
            Some(Err(_)) | None => {
                self.live = None;
                self.session.handle_ws_closed(t, conn, None)
            }
        }
    }

    fn feed(&mut self, input: Input) -> Result<(), x402_session::UsageError> {
        let t = now();
        match input {
            Input::Http(id, _, Ok(resp)) => self.session.handle_http_response(t, id, resp),
            Input::Http(id, url, Err(e)) => {
                let f = if e.is_timeout() {
                    TransportFailure::Timeout
                } else {
                    TransportFailure::Connection
                };
                // Before the first upgrade only the schema is asked for: nothing is paid yet.
                if !self.reached && self.ws_attempts == 0 {
                    return self.give_up(FailedRequest::new(&url, e));
                }
                self.progress().last_failure = Some(FailedRequest::new(&url, e));
                self.session.handle_http_error(t, id, f)
            }
            Input::Upgrade(conn, url, Err(ConnectError::Failed(e))) => {
                // The first upgrade could not connect: its payment (if any) was never sent.
                if !self.reached && self.ws_attempts == 1 && e.is_connect() {
                    return self.give_up(FailedRequest::new(&url, e));
                }
                self.progress().last_failure = Some(FailedRequest::new(&url, e));
                self.session.handle_ws_upgrade(t, conn, Err(None))
            }
            Input::Upgrade(conn, _, Err(ConnectError::Refused(resp))) => {
                self.session.handle_ws_upgrade(t, conn, Err(Some(resp)))
            }
            Input::Upgrade(conn, _, Ok((resp, socket))) => {
                if let Some(old) = self.live.replace(Live { conn, socket }) {
                    close_in_background(old.socket, 1000);
                }
                self.session.handle_ws_upgrade(t, conn, Ok(resp))
            }
        }
    }

    /// Ends the session at its start: the server could not be reached and
    /// nothing was paid. Payments signed for the failed upgrade never left: released.
    fn give_up(&mut self, failure: FailedRequest) -> Result<(), x402_session::UsageError> {
        self.book.release_unsent();
        {
            let mut p = self.progress();
            p.last_failure = Some(failure.clone());
            p.unreachable = Some(failure);
        }
        self.session.stop(now())
    }

    /// Performs the session's transmits, hands over its events, and publishes progress.
    async fn drain(&mut self) {
        loop {
            self.drain_outputs().await;
            self.publish_progress();
            // Stopping because the application went away queues more outputs.
            if !self.flush_events().await {
                break;
            }
        }
    }

    /// Performs the session's transmits and hands over its events.
    async fn drain_outputs(&mut self) {
        loop {
            let mut any = false;
            while let Some(t) = self.session.poll_transmit() {
                any = true;
                self.perform(t).await;
            }
            while let Some(e) = self.session.poll_event() {
                any = true;
                self.on_event(e).await;
            }
            if !any {
                break;
            }
        }
    }

    fn publish_progress(&mut self) {
        let (retries, reconnects, in_band) = {
            let stats = self.session.stats();
            (
                stats.renew_retries,
                stats.reconnects,
                stats.in_band_payments,
            )
        };
        let remaining = self.session.paid_remaining(now());
        let delivered = std::mem::take(&mut self.delivered);
        let paid = self.session.stats().slices > 0;
        let mut p = self.progress();
        if paid {
            // Updated in place: no copy per burst of events.
            self.session.update_resume_point(&mut p.resume);
        }
        p.events += delivered;
        p.renew_retries = retries;
        p.in_band_payments = in_band;
        p.reconnects = reconnects;
        p.paid_until = (remaining > Duration::ZERO).then(|| Instant::now() + remaining);
    }

    async fn on_event(&mut self, e: ClientEvent) {
        match &e {
            ClientEvent::PaymentNeeded { slice, offer } => {
                let slice = *slice;
                let req = offer.requirement();
                let t = now();
                let r = match self.policy.authorize(&req, self.budget.as_ref()) {
                    Err(err) => {
                        let message = err.describe(&req);
                        self.progress().declined = Some(err.into());
                        self.session
                            .handle_payment_declined(t, slice, message, true)
                    }
                    Ok(res) => match self.payer.pay(offer).await {
                        Ok(payload) => {
                            let valid_before = payload
                                .exact_evm()
                                .and_then(|e| e.authorization.valid_before.to_u64())
                                .unwrap_or(u64::MAX);
                            self.book.signed(slice, res, valid_before);
                            self.session.handle_payment(now(), slice, payload)
                        }
                        Err(err) => {
                            // Nothing was signed: release.
                            res.release();
                            let policy = matches!(err, x402_payer::Error::Policy(_));
                            let message = err.to_string();
                            self.progress().declined = Some(err);
                            self.session
                                .handle_payment_declined(now(), slice, message, policy)
                        }
                    },
                };
                if let Err(err) = r {
                    tracing::error!(%err, "session refused a payment input");
                }
                return; // internal: not forwarded
            }
            ClientEvent::PaymentAccepted { slice, settlement } => {
                // A channel payer learns the charge (and checks it) from the receipt.
                self.payer.accepted(settlement.as_ref());
                let amount = self.book.accepted(*slice);
                let mut p = self.progress();
                p.slices += 1;
                if *slice > 1 {
                    p.renewals += 1;
                }
                if let Some(a) = amount {
                    p.paid = p.paid.checked_add(a).unwrap_or(p.paid);
                }
            }
            ClientEvent::PaymentRefused {
                slice, maybe_spent, ..
            } => {
                // A refused authorization can still be settled by whoever holds
                // it until its validBefore: it stays counted as spent until then
                // (forever if the money may have moved).
                self.book.refused(*slice, *maybe_spent, unix_now());
            }
            ClientEvent::Hello(h) => {
                self.reached = true;
                self.progress().hello = Some(h.clone());
            }
            // Counted here, published with the rest of the progress once per drain.
            ClientEvent::Data(_) => self.delivered += 1,
            ClientEvent::Ended(r) => self.progress().ended = Some(r.clone()),
            _ => {}
        }
        if !self.events_closed {
            self.outbox.push(e);
        }
    }

    /// Hands the burst's events to the application; `true` if it is gone and
    /// the session was told to stop (which queues outputs to drain).
    async fn flush_events(&mut self) -> bool {
        if self.outbox.is_empty() {
            return false;
        }
        let batch = std::mem::take(&mut self.outbox);
        if self.events.send(batch).await.is_err() {
            // The application dropped the stream: stop.
            self.events_closed = true;
            let _ = self.session.stop(now());
            return true;
        }
        false
    }

    async fn perform(&mut self, t: Transmit) {
        let inputs = self.inputs_tx.clone();
        match t {
            Transmit::Http {
                id,
                method,
                url,
                headers,
            } => {
                let http = self.http.clone();
                tokio::spawn(async move {
                    let r = http.request(method, &url, &headers).await;
                    let _ = inputs.send(Input::Http(id, url, r)).await;
                });
            }
            Transmit::WsConnect { conn, url, headers } => {
                let ws = self.ws.clone();
                self.ws_attempts = self.ws_attempts.saturating_add(1);
                tokio::spawn(async move {
                    let r = ws.connect(&url, &headers).await;
                    let _ = inputs.send(Input::Upgrade(conn, url, r)).await;
                });
            }
            Transmit::WsSend { conn, text } => {
                if let Some(l) = self.live.as_mut().filter(|l| l.conn == conn) {
                    // A failed send surfaces as the next recv's error (or, on
                    // a half-open socket, as the session's idle timeout).
                    let _ = l.socket.send_text(text).await;
                }
            }
            Transmit::WsClose { conn, code } => {
                if self.live.as_ref().is_some_and(|l| l.conn == conn)
                    && let Some(l) = self.live.take()
                {
                    if self.session.is_ended() {
                        // The session's last close: `Ended` reaches the application
                        // once the server answered it (its metering is done).
                        close_and_wait(l.socket, code.code()).await;
                    } else {
                        close_in_background(l.socket, code.code());
                    }
                }
            }
        }
    }
}

/// Closes a socket at the session's end and waits (briefly) for the server's answer:
/// a server meters a channel-paid session until the close, and gives the unused
/// charge back before answering, so a refund sent after this sees it.
async fn close_and_wait(mut socket: Box<dyn WsConnection>, code: u16) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if socket.close(code).await.is_err() {
            return;
        }
        while let Some(Ok(f)) = socket.recv().await {
            if matches!(f, x402_transport::WsFrame::Closed(_)) {
                break;
            }
        }
    })
    .await;
}

/// Closes a socket without holding up the loop.
fn close_in_background(mut socket: Box<dyn WsConnection>, code: u16) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(code)).await;
    });
}

fn getrandom_fill(buf: &mut [u8]) -> bool {
    x402_payer::RandomSource::fill(&x402_payer::OsRandom, buf).is_ok()
}
