//! What the handlers share: the streams for sale, the sans-IO endpoint
//! behind its lock, the store, the sockets' mailboxes and the counters.
//! [`AppState::with_core`] is the one way into the endpoint: it feeds an
//! input and drains every output.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use x402_session::{ConnId, EndpointConfig, ServerEndpoint, ServerEvent, ServerTransmit, SettleId};
use x402_types::Requirement;

use crate::config::{Config, StreamConfig, Terms};
use crate::facilitator::Facilitator;
use crate::hub::Hub;
use crate::store::PaymentStore;
use crate::token::{TokenKey, redact};

/// The client's address, attached to every request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// A stream for sale.
pub struct StreamEntry {
    /// Its configuration.
    pub cfg: StreamConfig,
    /// Resolved terms.
    pub terms: Terms,
    /// Its events.
    pub hub: Arc<Hub>,
    /// Its `batch-settlement` terms, when it is also sold over channels.
    pub channel: Option<crate::channels::ChannelTerms>,
}

impl StreamEntry {
    /// The requirement of one slice.
    pub fn requirement(&self) -> Requirement {
        Requirement {
            scheme: "exact".into(),
            network: self.terms.network.clone(),
            amount: self.terms.per_slice,
            asset: self.terms.asset.to_string(),
            pay_to: self.terms.pay_to.to_string(),
            max_timeout_seconds: self.cfg.max_timeout_seconds,
            extra: self
                .terms
                .eip712
                .as_ref()
                .map(|(n, v)| serde_json::json!({"name": n, "version": v})),
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    /// Configuration.
    pub cfg: Config,
    /// Public HTTP base.
    pub http_base: String,
    /// Public WebSocket base.
    pub ws_base: String,
    /// Streams by id.
    pub streams: HashMap<String, StreamEntry>,
    /// Token key.
    pub tokens: TokenKey,
    /// Facilitator.
    pub facilitator: Arc<dyn Facilitator>,
    core: Mutex<ServerEndpoint>,
    /// Sessions and payment records: in memory, or shared by several
    /// instances (`[store] kind = "redis"`). One path either way.
    pub(crate) store: Arc<dyn PaymentStore>,
    pub(crate) mailboxes: Mutex<HashMap<ConnId, mpsc::Sender<ServerTransmit>>>,
    /// Channel payloads this process checked before deciding them, by payment key:
    /// their first settlement attempt here does not check again (`true`: the
    /// facilitator verified its deposit too). Bounded; only a saving.
    pub(crate) prechecked: Mutex<HashMap<String, bool>>,
    /// Metered sessions stopped, their unused charge not yet given back.
    pub(crate) meter_stops: Mutex<Vec<crate::meter::MeterStop>>,
    /// One bell per settlement that requests wait on: a settlement wakes
    /// only its own waiters.
    pub(crate) bells: Mutex<HashMap<SettleId, Arc<Notify>>>,
    /// Own settling records the last orphan sweep found without a task here.
    pub(crate) suspects: Mutex<std::collections::HashSet<x402_session::PaymentKey>>,
    /// Woken whenever the endpoint's next timeout may have moved.
    pub(crate) timers: Notify,
    /// Set when the server shuts down: sockets close with 1012.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Sockets per client IP.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Payment token buckets per client IP (last refill, tokens).
    pub(crate) payment_rate: Mutex<HashMap<IpAddr, (Instant, f64)>>,
    /// Connection ids.
    pub next_conn: AtomicU64,
    /// The last readiness probe (`/readyz`): when, and its answer.
    pub(crate) readiness:
        tokio::sync::Mutex<Option<(Instant, axum::http::StatusCode, serde_json::Value)>>,
    /// What `/metrics` shows (shared with the background tasks).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The driver's clock: tokio's, so tests on paused time control it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The server's wall clock, in Unix milliseconds, on [`now`]'s clock: the
/// system's wall time, moved by how far tokio's clock is from the real one.
/// Without a paused clock that is the system's wall time; in a test on
/// paused time it is the wall time when the clock was paused plus the time
/// advanced since. Event stamps, the memory store and the endpoint read it.
pub(crate) fn unix_ms_now() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (real, tokio) = (Instant::now(), now());
    let t = if tokio >= real {
        wall.saturating_add(tokio - real)
    } else {
        wall.saturating_sub(real - tokio)
    };
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

impl AppState {
    /// The state of a server: the endpoint starts its clock now.
    #[allow(clippy::too_many_arguments)] // called once, by `ServerBuilder::bind`
    pub(crate) fn new(
        cfg: Config,
        http_base: String,
        ws_base: String,
        streams: HashMap<String, StreamEntry>,
        tokens: TokenKey,
        facilitator: Arc<dyn Facilitator>,
        store: Arc<dyn PaymentStore>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let ecfg = EndpointConfig {
            max_sessions: cfg.limits.max_sessions,
            horizon_slices: cfg.limits.horizon_slices.max(1),
            linger_secs: cfg.limits.session_linger_secs,
            sweep_interval: Duration::from_millis(cfg.limits.sweep_interval_ms.max(10)),
            ..EndpointConfig::default()
        };
        AppState {
            core: Mutex::new(ServerEndpoint::with_unix_ms(ecfg, now(), unix_ms_now())),
            store,
            cfg,
            http_base,
            ws_base,
            streams,
            tokens,
            facilitator,
            mailboxes: Mutex::default(),
            meter_stops: Mutex::default(),
            prechecked: Mutex::default(),
            bells: Mutex::default(),
            suspects: Mutex::default(),
            timers: Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
            per_ip: Mutex::default(),
            payment_rate: Mutex::default(),
            next_conn: 1.into(),
            metrics,
            readiness: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts a graceful shutdown: every socket closes with 1012 (service restart).
    pub fn shutdown(&self) {
        self.closing.send_replace(true);
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, ServerEndpoint> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Payments credited since start, over every stream (from `/metrics`'
    /// one counter set).
    pub fn credited_payments(&self) -> u64 {
        self.streams
            .keys()
            .map(|stream| {
                let label = crate::metrics::StreamLabel {
                    stream: stream.clone(),
                };
                self.metrics.credited.get_or_create(&label).get()
            })
            .sum()
    }

    /// Settlements whose outcome could not be established, since start.
    pub fn unresolved_payments(&self) -> u64 {
        self.metrics.unresolved.get()
    }

    /// Sockets open now.
    pub fn sockets_open(&self) -> u64 {
        u64::try_from(self.metrics.sockets.get()).unwrap_or(0)
    }

    /// Wall time on the endpoint's clock.
    pub fn unix_now(&self) -> u64 {
        self.core().unix_now(now())
    }

    /// What the endpoint holds (sessions, records, claims).
    pub fn endpoint_stats(&self) -> x402_session::EndpointStats {
        self.core().stats()
    }

    /// Whether a socket of `session` is held here.
    pub(crate) fn has_connection(&self, session: &str) -> bool {
        self.core().has_connection(session)
    }

    /// Feeds the endpoint, then drains every output: socket transmits to the
    /// connections' mailboxes, settlement jobs to tasks, events to logs.
    pub(crate) fn with_core<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut ServerEndpoint, Instant) -> R,
    ) -> R {
        let mut jobs = Vec::new();
        let r = {
            let mut ep = self.core();
            let r = f(&mut ep, now());
            let boxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(t) = ep.poll_transmit() {
                let conn = match &t {
                    ServerTransmit::Message { conn, .. }
                    | ServerTransmit::Skip { conn, .. }
                    | ServerTransmit::Close { conn, .. } => *conn,
                };
                if let Some(tx) = boxes.get(&conn) {
                    // A full mailbox means a stuck socket: its write timeout drops it.
                    let _ = tx.try_send(t);
                }
            }
            while let Some(j) = ep.poll_settle() {
                jobs.push(j);
            }
            while let Some(e) = ep.poll_event() {
                self.on_event(e);
            }
            r
        };
        for j in jobs {
            tokio::spawn(crate::coordinator::run_settlement(self.clone(), j));
        }
        self.timers.notify_one();
        r
    }

    fn on_event(&self, e: ServerEvent) {
        match e {
            ServerEvent::Credited {
                session,
                stream,
                slices,
                amount,
            } => {
                if let Some(e) = self.streams.get(&stream) {
                    self.metrics
                        .revenue
                        .get_or_create(&crate::metrics::RevenueLabel {
                            stream: stream.clone(),
                            asset: e.terms.asset.to_string(),
                            network: e.terms.network.caip2(),
                        })
                        .inc_by(amount.atomic().to_u64().unwrap_or(u64::MAX));
                }
                let label = crate::metrics::StreamLabel { stream };
                self.metrics.credited.get_or_create(&label).inc();
                tracing::info!(session = %redact(&session), slices, "slice sold");
            }
            ServerEvent::Refused {
                session,
                stream,
                code,
            } => {
                self.metrics
                    .refused
                    .get_or_create(&crate::metrics::RefusalLabel {
                        stream,
                        code: code.to_string(),
                    })
                    .inc();
                tracing::info!(session = %redact(&session), %code, "payment refused");
            }
            ServerEvent::MeterStopped {
                session,
                stream,
                account,
                at_ms,
                connection,
                ..
            } => {
                // Given back by the socket's task (`AppState::return_unused`).
                self.meter_stops
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(crate::meter::MeterStop {
                        session,
                        stream,
                        account,
                        at_ms,
                        connection,
                    });
            }
            ServerEvent::Unresolved {
                session,
                payer,
                nonce,
                reason,
            } => {
                self.metrics.unresolved.inc();
                tracing::error!(session = %redact(&session), %payer, %nonce, %reason,
                    "settlement outcome unknown: nothing credited; reconcile this payment");
            }
        }
    }
}

/// Shortest server secret accepted (bytes).
pub const MIN_SECRET_LEN: usize = 32;

/// Builds the token key from `X402_SERVER_SECRET`, the configured secret, or
/// (with a warning) fresh OS randomness. A secret shorter than 32 bytes and a
/// failing random source are errors, never a weak key.
pub fn token_key(cfg: &Config) -> Result<TokenKey, crate::ConfigError> {
    let configured = std::env::var("X402_SERVER_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| cfg.secret.clone());
    if let Some(s) = configured {
        if s.len() < MIN_SECRET_LEN {
            return Err(crate::ConfigError::Invalid(format!(
                "the server secret must be at least {MIN_SECRET_LEN} bytes (got {})",
                s.len()
            )));
        }
        return Ok(TokenKey::new(s.as_bytes()));
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| {
        crate::ConfigError::Invalid(format!("no server secret and no OS randomness: {e}"))
    })?;
    tracing::warn!(
        "no server secret configured: using a random one; tokens will not survive a restart"
    );
    Ok(TokenKey::new(&k))
}
