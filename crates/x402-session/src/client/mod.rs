//! The client role: buy a stream by the slice, renew, reconnect, resume.

mod display;
mod in_band;
mod live;
mod payment;
mod reconnect;
mod resume;
mod schema;
mod timer;
mod types;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use x402_types::{CloseCode, ErrorCode, Offer, PaymentPayload, ServerMessage, UrlContext};

use crate::error::UsageError;
use crate::rng::Jitter;

pub use display::{human, utc_clock};
pub use in_band::IN_BAND_WAIT;
use payment::{PaymentState, Purpose, Step};
pub use resume::ResumePoint;
pub use schema::{CheckedSchema, read_schema, read_schema_of};
use timer::{Timer, TimerTable};
pub use types::{
    ClientConfig, ClientEvent, ClientStats, ConnId, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE,
    EndReason, HttpResponse, Method, ReconnectPolicy, RequestId, Transmit, TransportFailure,
    default_renew_margin,
};

/// How long after local expiry a session without further payments gives up waiting for the server.
const END_SLACK: Duration = Duration::from_secs(7);

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
    /// Disconnected (or the schema request failed), waiting to try again
    /// (or to pay first).
    Down,
    Ended,
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
/// Tell it of every text frame heard ([`handle_ws_message`](Self::handle_ws_message)):
/// the socket's liveness is a session rule. While a socket is open the session
/// asks for a ping every [`ClientConfig::keep_alive`] (a [`Transmit::WsSend`])
/// and, after [`ClientConfig::idle_timeout`] without a frame, closes it and
/// reconnects as after a drop. A driver adds no timer of its own.
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
    /// A saved session's stream URL to take up after the schema ([`ClientSession::resume_from`]).
    resume: Option<x402_types::Url>,
    renew_url: Option<String>,
    offer: Option<Offer>,
    /// The offer restated by a corrective refusal, for the next payment only.
    correction: Option<Offer>,
    slice_seconds: Option<u64>,
    slices: u64,
    paid_until: Option<Instant>,
    expires_at: u64,
    server_offset_ms: i64,
    /// The payment under way, if any.
    payment: PaymentState,
    /// Every deadline.
    timers: TimerTable,
    reconnect_attempt: u32,
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
    ///
    /// [`UsageError::Config`] if the URL cannot be built, or if
    /// `keep_alive` is zero or not shorter than `idle_timeout`.
    pub fn new(cfg: ClientConfig, now: Instant, unix_now: u64) -> Result<Self, UsageError> {
        if cfg.keep_alive.is_zero() || cfg.idle_timeout <= cfg.keep_alive {
            return Err(UsageError::Config(format!(
                "keep_alive ({:?}) must be positive and shorter than idle_timeout ({:?})",
                cfg.keep_alive, cfg.idle_timeout
            )));
        }
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
            resume: None,
            renew_url: None,
            offer: None,
            correction: None,
            slice_seconds: None,
            slices: 0,
            paid_until: None,
            expires_at: 0,
            server_offset_ms: 0,
            payment: PaymentState::Idle,
            timers: TimerTable::default(),
            reconnect_attempt: 0,
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
        self.timers.next_timeout().map(|t| t.max(self.last_now))
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
        self.request_schema();
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
        let PaymentState::Asking {
            slice: asked,
            purpose,
            refused,
        } = self.payment
        else {
            return Err(UsageError::UnexpectedPayment { slice });
        };
        if asked != slice {
            return Err(UsageError::UnexpectedPayment { slice });
        }
        if payload.version() != self.cfg.version {
            return Err(UsageError::WrongPaymentVersion);
        }
        self.payment = PaymentState::Idle;
        if self.phase == Phase::Ended {
            return Ok(());
        }
        self.payment = PaymentState::Signed(payment::Signed {
            slice,
            header: payload.to_header(),
            refused,
            attempt: 0,
            in_band: false,
            step: Step::Held,
        });
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
        let Some((asked, purpose)) = self.payment.asking() else {
            return Err(UsageError::UnexpectedPayment { slice });
        };
        if asked != slice {
            return Err(UsageError::UnexpectedPayment { slice });
        }
        self.payment = PaymentState::Idle;
        self.stop_paying(now, EndReason::PaymentDeclined { message, policy });
        if purpose == Purpose::Upgrade && !self.has_paid_time(now) {
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
        } else if self.answered_renewal(id) {
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
            self.connection_lost(now);
        } else if self.answered_renewal(id) {
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
                self.set_phase(Phase::Live { conn, hello: false });
                self.socket_up(now);
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
        self.heard(now);
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
                if within_margin && self.payment.is_idle() {
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
                } else if self.payment.is_idle() {
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
            ServerMessage::Error {
                code: ErrorCode::SourceUnavailable,
                message,
                ..
            } => {
                self.events
                    .push_back(ClientEvent::SourceUnavailable { message });
            }
            ServerMessage::VoucherAccepted {
                expires_at,
                slices,
                receipt,
            } => self.on_voucher_accepted(now, expires_at, slices, receipt),
            ServerMessage::VoucherRefused { .. } => self.on_voucher_refused(now),
            ServerMessage::VoucherNeeded {
                charged_cumulative_amount,
                max_claimable_amount,
                ..
            } => self.on_voucher_needed(now, &charged_cumulative_amount, &max_claimable_amount),
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
                    self.set_phase(Phase::Down);
                    if self.payment.renewing().is_none() && self.payment.asking().is_none() {
                        self.timers.set(Timer::Reconnect, now);
                    }
                }
            }
            _ => self.connection_lost(now),
        }
        Ok(())
    }

    /// A deadline from [`poll_timeout`](Self::poll_timeout) passed: every
    /// expired timer is served (end, idle socket, keep-alive, renewal retry,
    /// renewal, reconnect, in that order).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), UsageError> {
        self.input(now)?;
        for timer in Timer::VALUES {
            if self.phase == Phase::Ended {
                break;
            }
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::End => {
                    let reason = self.no_more.clone().unwrap_or(EndReason::Stopped);
                    self.end(reason, Some(CloseCode::Normal));
                }
                Timer::Idle => self.peer_silent(now),
                Timer::KeepAlive => self.keep_alive(now),
                Timer::RenewRetry => {
                    if self
                        .payment
                        .signed()
                        .is_some_and(|s| !matches!(s.step, Step::Renewing(_)))
                    {
                        self.send_renew(now);
                    }
                }
                Timer::Renew => {
                    if self.payment.is_idle() {
                        self.need_payment(now, Purpose::Renew);
                    }
                }
                Timer::Reconnect => {
                    if self.phase == Phase::Down {
                        self.reconnect(now);
                    }
                }
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

    /// Moves to `phase`; leaving a live socket disarms its keep-alive and idle timers.
    fn set_phase(&mut self, phase: Phase) {
        if !matches!(phase, Phase::Live { .. }) {
            self.timers.stop(Timer::KeepAlive);
            self.timers.stop(Timer::Idle);
        }
        self.phase = phase;
    }

    /// Whether `id` is the renew request carrying the unconfirmed payload;
    /// if so, the payload is no longer in flight.
    fn answered_renewal(&mut self, id: RequestId) -> bool {
        match &mut self.payment {
            PaymentState::Signed(s) if s.step == Step::Renewing(id) => {
                s.step = Step::Held;
                true
            }
            _ => false,
        }
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
        self.set_phase(Phase::Ended);
        self.timers.stop_all();
        if self.payment.asking().is_some() {
            // A signature asked for and not yet given is no longer wanted.
            self.payment = PaymentState::Idle;
        }
        self.events.push_back(ClientEvent::Ended(reason));
    }

    fn stop_paying(&mut self, now: Instant, reason: EndReason) {
        if self.no_more.is_none() {
            self.no_more = Some(reason);
        }
        self.timers.stop(Timer::Renew);
        // End once the paid time is used up (the server also says `expired`).
        let until = self.paid_until.map_or(now, |p| p.max(now));
        self.timers.set(Timer::End, until + END_SLACK);
    }

    fn protocol_violation(&mut self, msg: String) {
        self.end(EndReason::ProtocolViolation(msg), Some(CloseCode::Policy));
    }
}
