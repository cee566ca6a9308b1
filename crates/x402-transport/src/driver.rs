//! The async driver: performs the session's transmits, feeds back their
//! outcomes, signs when asked (policy first), and sleeps until `poll_timeout`.
//! It decides no protocol rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use x402_payer::{Budget, Payer, Reservation, SpendPolicy};
use x402_session::{
    ClientConfig, ClientEvent, ClientSession, ConnId, EndReason, RequestId, Transmit,
    TransportFailure,
};
use x402_types::{Amount, Hello};

use crate::{ConnectError, HttpResponse, HttpTransport, TransportError, WsConnector, WsFrame};

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
    /// Reconnections.
    pub reconnects: u64,
    /// The latest hello.
    pub hello: Option<Hello>,
    /// Why it ended, once it has.
    pub ended: Option<EndReason>,
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
    Http(RequestId, Result<HttpResponse, TransportError>),
    Upgrade(ConnId, Result<HttpResponse, Option<HttpResponse>>),
    Frame(ConnId, String),
    Closed(ConnId, Option<u16>),
}

enum ConnCmd {
    Send(String),
    Close(u16),
}

/// The application's side of a running driver.
#[derive(Debug)]
pub struct DriverHandle {
    /// Events (never `PaymentNeeded`, which the driver handles); ends with `Ended`.
    pub events: mpsc::Receiver<ClientEvent>,
    /// Dropping or sending on it stops the session.
    pub stop: mpsc::Sender<()>,
    /// Progress counters.
    pub progress: Arc<Mutex<Progress>>,
}

/// Drives one [`ClientSession`] over real transports.
pub struct Driver {
    session: ClientSession,
    http: Arc<dyn HttpTransport>,
    ws: Arc<dyn WsConnector>,
    payer: Arc<dyn Payer>,
    policy: SpendPolicy,
    budget: Option<Arc<Budget>>,
    progress: Arc<Mutex<Progress>>,
    events: mpsc::Sender<ClientEvent>,
    stop: mpsc::Receiver<()>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    conns: HashMap<ConnId, mpsc::UnboundedSender<ConnCmd>>,
    reservations: HashMap<u64, Reservation>,
    idle_timeout: Duration,
    events_closed: bool,
}

/// How often an idle socket is pinged, and how long silence means it is dead.
const PING_EVERY: Duration = Duration::from_secs(15);

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
        let (events_tx, events) = mpsc::channel(1024);
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
                stop,
                inputs_tx,
                inputs,
                conns: HashMap::new(),
                reservations: HashMap::new(),
                idle_timeout: PING_EVERY * 3,
                events_closed: false,
            },
            DriverHandle {
                events,
                stop: stop_tx,
                progress,
            },
        ))
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
            let r = tokio::select! {
                Some(input) = self.inputs.recv() => self.feed(input),
                _ = sleep => self.session.handle_timeout(now()),
                s = self.stop.recv(), if stop_open => {
                    if s.is_none() { stop_open = false; }
                    self.session.stop(now())
                }
            };
            if let Err(e) = r {
                let reason = EndReason::ProtocolViolation(format!("driver misuse: {e}"));
                self.progress().ended = Some(reason.clone());
                return reason;
            }
        }
        for (_, c) in self.conns.drain() {
            let _ = c.send(ConnCmd::Close(1000));
        }
        // Reservations still open belong to payments whose fate is unknown: they stay reserved.
        self.progress().ended.clone().unwrap_or(EndReason::Stopped)
    }

    fn feed(&mut self, input: Input) -> Result<(), x402_session::UsageError> {
        let t = now();
        match input {
            Input::Http(id, Ok(resp)) => self.session.handle_http_response(t, id, resp),
            Input::Http(id, Err(e)) => {
                let f = if matches!(e, TransportError::Timeout(_)) {
                    TransportFailure::Timeout
                } else {
                    TransportFailure::Connection
                };
                self.session.handle_http_error(t, id, f)
            }
            Input::Upgrade(conn, r) => self.session.handle_ws_upgrade(t, conn, r),
            Input::Frame(conn, text) => self.session.handle_ws_message(t, conn, &text),
            Input::Closed(conn, code) => {
                self.conns.remove(&conn);
                self.session.handle_ws_closed(t, conn, code)
            }
        }
    }

    async fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(t) = self.session.poll_transmit() {
                any = true;
                self.perform(t);
            }
            while let Some(e) = self.session.poll_event() {
                any = true;
                self.on_event(e).await;
            }
            if !any {
                break;
            }
        }
        let stats = self.session.stats().clone();
        let remaining = self.session.paid_remaining(now());
        let mut p = self.progress();
        p.renew_retries = stats.renew_retries;
        p.reconnects = stats.reconnects;
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
                        self.session
                            .handle_payment_declined(t, slice, err.to_string(), true)
                    }
                    Ok(res) => match self.payer.pay(offer).await {
                        Ok(payload) => {
                            self.reservations.insert(slice, res);
                            self.session.handle_payment(now(), slice, payload)
                        }
                        Err(err) => {
                            // Nothing was signed: release.
                            res.release();
                            let policy = matches!(err, x402_payer::Error::Policy(_));
                            self.session.handle_payment_declined(
                                now(),
                                slice,
                                err.to_string(),
                                policy,
                            )
                        }
                    },
                };
                if let Err(err) = r {
                    tracing::error!(%err, "session refused a payment input");
                }
                return; // internal: not forwarded
            }
            ClientEvent::PaymentAccepted { slice, .. } => {
                let amount = self.reservations.remove(slice).map(|r| {
                    let a = r.amount();
                    r.commit();
                    a
                });
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
                if let Some(r) = self.reservations.remove(slice)
                    && !maybe_spent
                {
                    r.release();
                }
            }
            ClientEvent::Hello(h) => self.progress().hello = Some(h.clone()),
            ClientEvent::Data(_) => self.progress().events += 1,
            ClientEvent::Ended(r) => self.progress().ended = Some(r.clone()),
            _ => {}
        }
        if !self.events_closed && self.events.send(e).await.is_err() {
            // The application dropped the stream: stop.
            self.events_closed = true;
            let _ = self.session.stop(now());
        }
    }

    fn perform(&mut self, t: Transmit) {
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
                    let _ = inputs.send(Input::Http(id, r)).await;
                });
            }
            Transmit::WsConnect { conn, url, headers } => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.conns.insert(conn, tx);
                let ws = self.ws.clone();
                let idle = self.idle_timeout;
                tokio::spawn(run_connection(ws, conn, url, headers, rx, inputs, idle));
            }
            Transmit::WsSend { conn, text } => {
                if let Some(c) = self.conns.get(&conn) {
                    let _ = c.send(ConnCmd::Send(text));
                }
            }
            Transmit::WsClose { conn, code } => {
                if let Some(c) = self.conns.remove(&conn) {
                    let _ = c.send(ConnCmd::Close(code));
                }
            }
        }
    }
}

async fn run_connection(
    ws: Arc<dyn WsConnector>,
    conn: ConnId,
    url: String,
    headers: Vec<(String, String)>,
    mut cmds: mpsc::UnboundedReceiver<ConnCmd>,
    inputs: mpsc::Sender<Input>,
    idle: Duration,
) {
    let mut socket = match ws.connect(&url, &headers).await {
        Ok((resp, s)) => {
            if inputs.send(Input::Upgrade(conn, Ok(resp))).await.is_err() {
                return;
            }
            s
        }
        Err(ConnectError::Refused(resp)) => {
            let _ = inputs.send(Input::Upgrade(conn, Err(Some(resp)))).await;
            return;
        }
        Err(ConnectError::Failed(_)) => {
            let _ = inputs.send(Input::Upgrade(conn, Err(None))).await;
            return;
        }
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let closed = loop {
        tokio::select! {
            f = socket.recv() => match f {
                Some(Ok(WsFrame::Text(t))) => {
                    last_heard = tokio::time::Instant::now();
                    if inputs.send(Input::Frame(conn, t)).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(WsFrame::Closed(code))) => break code,
                Some(Err(TransportError::Frame(_))) => {
                    let _ = socket.close(1009).await;
                    break Some(1009);
                }
                Some(Err(_)) | None => break None,
            },
            c = cmds.recv() => match c {
                Some(ConnCmd::Send(t)) => {
                    if socket.send_text(t).await.is_err() {
                        break None;
                    }
                }
                Some(ConnCmd::Close(code)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(code)).await;
                    return;
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(1000)).await;
                    return;
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > idle {
                    break None; // half-open: nothing heard for too long
                }
                if socket.send_text(x402_types::ClientMessage::PING.to_string()).await.is_err() {
                    break None;
                }
            }
        }
    };
    let _ = inputs.send(Input::Closed(conn, closed)).await;
}

fn getrandom_fill(buf: &mut [u8]) -> bool {
    x402_payer::RandomSource::fill(&x402_payer::OsRandom, buf).is_ok()
}
