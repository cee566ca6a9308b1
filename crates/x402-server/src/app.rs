//! HTTP and WebSocket handlers: I/O only. Every protocol rule lives in
//! [`x402_session::ServerEndpoint`]; this module parses requests, runs the
//! facilitator calls the endpoint asks for, moves frames, and reads the clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{
    CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
    rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, mpsc};
use x402_session::{
    ConnId, Connected, Credit, EndpointConfig, PaymentDecision, PaymentIn, Quote, Refusal,
    ServerEndpoint, ServerEvent, ServerTransmit, SettleId, SettleOutcome, StreamHead,
};
use x402_types::x402::{PaymentRequiredV2, ResourceInfo, encode_header};
use x402_types::{
    ClientMessage, CloseCode, ErrorCode, FacilitatorRequest, PathVersion, PaymentPayload,
    PaymentRequirements, PaymentRequirementsV1, PreservedRequirement, Pricing, Requirement, Schema,
    ServerMessage, StreamInfo,
};

use crate::config::{Config, StreamConfig, Terms};
use crate::error::ApiError;
use crate::facilitator::{Facilitator, FacilitatorError};
use crate::hub::{Frame, Hub};
use crate::store::{Commit, RedisStore, StoreError};
use crate::token::{Claims, TokenError, TokenKey, redact};

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

/// Counters for tests, health and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Payments credited.
    pub payments: AtomicU64,
    /// Payments refused.
    pub refused: AtomicU64,
    /// Settlements whose outcome could not be established.
    pub unresolved: AtomicU64,
    /// Sockets open now.
    pub sockets: AtomicU64,
    /// Events sent.
    pub events_sent: AtomicU64,
}

/// A settlement the endpoint asked for: what to send the facilitator.
struct Job {
    req: FacilitatorRequest,
    stream: String,
    session: String,
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
    /// Shared state of several instances (`[store] kind = "redis"`).
    store: Option<RedisStore>,
    mailboxes: Mutex<HashMap<ConnId, mpsc::Sender<ServerTransmit>>>,
    jobs: Mutex<HashMap<SettleId, Job>>,
    /// Woken whenever a settlement has an outcome.
    settled: Notify,
    /// Woken whenever the endpoint's next timeout may have moved.
    timers: Notify,
    /// Set when the server shuts down: sockets close with 1012.
    closing: tokio::sync::watch::Sender<bool>,
    /// Sockets per client IP.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Payment token buckets per client IP (last refill, tokens).
    payment_rate: Mutex<HashMap<IpAddr, (Instant, f64)>>,
    /// Connection ids.
    pub next_conn: AtomicU64,
    /// Counters.
    pub stats: Stats,
    /// What `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
}

/// The driver's clock: tokio's, so tests on paused time control it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    t: Option<String>,
    from: Option<String>,
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownStream,
        format!("no such {what}"),
    )
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg)
}

impl AppState {
    /// The state of a server: the endpoint starts its clock now.
    pub(crate) fn new(
        cfg: Config,
        http_base: String,
        ws_base: String,
        streams: HashMap<String, StreamEntry>,
        tokens: TokenKey,
        facilitator: Arc<dyn Facilitator>,
        store: Option<RedisStore>,
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
            jobs: Mutex::default(),
            settled: Notify::new(),
            timers: Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
            per_ip: Mutex::default(),
            payment_rate: Mutex::default(),
            next_conn: 1.into(),
            stats: Stats::default(),
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Starts a graceful shutdown: every socket closes with 1012 (service restart).
    pub fn shutdown(&self) {
        self.closing.send_replace(true);
    }

    fn core(&self) -> MutexGuard<'_, ServerEndpoint> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wall time on the endpoint's clock.
    pub fn unix_now(&self) -> u64 {
        self.core().unix_now(now())
    }

    /// What the endpoint holds (sessions, records, claims).
    pub fn endpoint_stats(&self) -> x402_session::EndpointStats {
        self.core().stats()
    }

    /// A store failure as the client's 503, counted for `/metrics`.
    fn store_down(&self, e: StoreError) -> ApiError {
        self.metrics.store_errors.inc();
        store_down(e)
    }

    /// Whether a socket of `session` is held here.
    pub(crate) fn has_connection(&self, session: &str) -> bool {
        self.core().has_connection(session)
    }

    /// Takes a session's state from the shared store (a renewal or a
    /// connection made on another instance). Failures are logged: the next
    /// notice or timer tries again.
    pub(crate) async fn refresh(self: &Arc<Self>, session: &str) {
        let Some(store) = &self.store else { return };
        match store.load_session(session).await {
            Ok(v) if v.exists => {
                self.with_core(|ep, now| ep.import_session(now, session, None, v.state));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot refresh a session from the store"),
        }
    }

    /// Before a socket upgrade: the session as the store has it.
    async fn refresh_for_connect(self: &Arc<Self>, quote: &Quote) -> Result<(), ApiError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let v = store
            .load_session(&quote.id)
            .await
            .map_err(|e| self.store_down(e))?;
        if v.exists {
            self.with_core(|ep, now| ep.import_session(now, &quote.id, Some(quote), v.state));
        }
        Ok(())
    }

    /// Connects a socket through the store: its connection number makes it
    /// the session's holder (a socket on another instance is superseded).
    async fn connect_shared(
        self: &Arc<Self>,
        store: &RedisStore,
        quote: &Quote,
        conn: ConnId,
        from: Option<u64>,
        head: StreamHead,
    ) -> Result<Connected, Refusal> {
        let unavailable = |e: StoreError| {
            self.metrics.store_errors.inc();
            Refusal::new(ErrorCode::StoreUnavailable, e.to_string())
        };
        // The session was loaded from the store before the 101
        // (`refresh_for_connect`). Paid time first: a refused upgrade must
        // not supersede a socket elsewhere.
        self.with_core(|ep, now| ep.check_connect(now, quote))?;
        let n = store
            .connect_session(&quote.id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Refusal::new(ErrorCode::PaymentRequired, "a payment is required"))?;
        let r = self.with_core(|ep, now| {
            if let Some(mut state) = ep.export_session(&quote.id) {
                state.connections = n.saturating_sub(1);
                ep.import_session(now, &quote.id, Some(quote), state);
            }
            ep.connect(now, quote, conn, from, head)
        });
        if let Err(e) = store.notify(&quote.id).await {
            tracing::warn!(error = %e, "connection not announced to other instances");
        }
        r
    }

    /// Decides a payment against the shared store: load what the endpoint
    /// needs, let it decide, and commit a new claim before anything is asked
    /// of the facilitator (a conflict means another instance changed
    /// something: load and decide again).
    async fn decide_shared(
        self: &Arc<Self>,
        store: &RedisStore,
        stream: &str,
        quote: &Quote,
        p: &PaymentIn,
        req: &FacilitatorRequest,
    ) -> Result<PaymentDecision, ApiError> {
        let payload =
            serde_json::to_string(req).map_err(|e| self.store_down(StoreError::from_text(e)))?;
        for _ in 0..8 {
            let loaded = store
                .load(&quote.id, Some(p))
                .await
                .map_err(|e| self.store_down(e))?;
            if loaded.orphan_claim {
                return Ok(PaymentDecision::Refused(Refusal::new(
                    ErrorCode::PaymentUsed,
                    "this authorization's nonce was already used",
                )));
            }
            if let Some(r) = loaded.records.iter().find(|r| {
                r.key == p.key
                    && r.record.status.is_settling()
                    && !r.owner_alive
                    && r.owner != store.instance()
            }) {
                // Its settling instance died: take the settlement over.
                if store
                    .adopt(&r.key, &r.owner)
                    .await
                    .map_err(|e| self.store_down(e))?
                {
                    let Ok(req) = FacilitatorRequest::from_json(r.payload.as_bytes()) else {
                        tracing::error!(payer = %r.record.payer, nonce = %r.record.nonce,
                            "a dead instance's settlement has no readable payload; reconcile it");
                        continue;
                    };
                    let session = loaded.session.clone();
                    let id = self.with_core(|ep, now| {
                        if session.exists {
                            ep.import_session(now, &quote.id, Some(quote), session.state);
                        }
                        ep.adopt(now, &r.key, r.record.clone())
                    });
                    tracing::warn!(payer = %r.record.payer, nonce = %r.record.nonce,
                        "taking over the settlement of an instance that died");
                    self.start_settlement(id, req, stream, &quote.id, 1);
                }
                continue;
            }
            let session = loaded.session;
            let own = loaded.records.iter().any(|r| r.key == p.key);
            let (decision, commit) = self.with_core(|ep, now| {
                if !own {
                    ep.drop_foreign(&p.key);
                }
                if session.exists {
                    ep.import_session(now, &quote.id, Some(quote), session.state.clone());
                }
                for r in &loaded.records {
                    ep.import_record(now, &r.key, r.record.clone());
                }
                let d = ep.handle_payment(now, quote, p.clone());
                let linger = ep.config().linger_secs;
                let unix = ep.unix_now(now);
                let commit = match &d {
                    PaymentDecision::Settle(_) => ep
                        .export_session(&quote.id)
                        .zip(ep.export_record(&p.key))
                        .map(|(st, rec)| {
                            let until = st.retain_until(unix, linger).max(quote.expires + linger);
                            (st, rec, until)
                        }),
                    _ => None,
                };
                (d, commit)
            });
            let PaymentDecision::Settle(id) = decision else {
                return Ok(decision);
            };
            let Some((state, rec, until)) = commit else {
                self.with_core(|ep, now| ep.abandon(now, id));
                continue;
            };
            match store
                .begin(
                    &quote.id,
                    session.version,
                    &state,
                    until,
                    &p.key,
                    &rec,
                    &payload,
                )
                .await
            {
                Ok(Commit::Done) => return Ok(decision),
                Ok(_) => self.with_core(|ep, now| ep.abandon(now, id)),
                Err(e) => {
                    // Never settle a payment that could not be recorded.
                    self.with_core(|ep, now| ep.abandon(now, id));
                    return Err(self.store_down(e));
                }
            }
        }
        Err(self.store_down(StoreError::from_text("too many concurrent changes")))
    }

    /// Loads a payment's record again (it settles on another instance).
    async fn refresh_payment(self: &Arc<Self>, store: &RedisStore, quote: &Quote, p: &PaymentIn) {
        let Ok(loaded) = store.load(&quote.id, Some(p)).await else {
            return;
        };
        self.with_core(|ep, now| {
            if loaded.session.exists {
                ep.import_session(now, &quote.id, Some(quote), loaded.session.state);
            }
            for r in loaded.records.into_iter().filter(|r| r.key == p.key) {
                ep.import_record(now, &r.key, r.record);
            }
        });
    }

    /// Keeps a settlement's payload and runs its attempt in its own task.
    fn start_settlement(
        self: &Arc<Self>,
        id: SettleId,
        req: FacilitatorRequest,
        stream: &str,
        session: &str,
        attempt: u32,
    ) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Job {
                req,
                stream: stream.to_string(),
                session: session.to_string(),
            },
        );
        tokio::spawn(run_settlement(self.clone(), id, attempt));
    }

    /// Commits a settlement's outcome to the store before it is credited
    /// here; a store that cannot be reached is tried again until it can (the
    /// outcome is never dropped; the payer's retries hear `payment_pending`).
    async fn settled_shared(
        self: &Arc<Self>,
        store: &RedisStore,
        id: SettleId,
        session: &str,
        outcome: SettleOutcome,
        head: u64,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let loaded = match store.load_session(session).await {
                Ok(v) => v,
                Err(e) => {
                    self.wait_for_store(e, &mut backoff).await;
                    continue;
                }
            };
            let planned = self.with_core(|ep, now| {
                let state = if loaded.exists {
                    Some(loaded.state.clone())
                } else {
                    ep.export_session(session)
                };
                let plan = ep.plan_settled(now, id, outcome.clone(), head, state)?;
                let before = ep.export_record(&plan.key)?;
                let unix = ep.unix_now(now);
                let until = plan
                    .session
                    .as_ref()
                    .map_or(unix, |s| s.retain_until(unix, ep.config().linger_secs));
                Some((plan, before, until))
            });
            let Some((plan, before, until)) = planned else {
                return;
            };
            if !plan.is_final() {
                self.with_core(|ep, now| ep.apply_settled(now, id, plan));
                return;
            }
            let credited = plan.session.is_some()
                && matches!(
                    plan.record.as_ref().map(|r| &r.status),
                    Some(x402_session::PaymentStatus::Credited(_))
                );
            match store
                .finish(
                    session,
                    loaded.version,
                    plan.session.as_ref(),
                    until,
                    &plan.key,
                    &before,
                    plan.record.as_ref(),
                )
                .await
            {
                Ok(Commit::Done) => {
                    self.with_core(|ep, now| ep.apply_settled(now, id, plan));
                    if credited && let Err(e) = store.notify(session).await {
                        tracing::warn!(error = %e, "renewal not announced to other instances");
                    }
                    return;
                }
                Ok(Commit::Conflict) => {}
                Ok(Commit::Lost) => {
                    tracing::warn!("another instance took this settlement over");
                    self.with_core(|ep, now| ep.disown(now, id));
                    return;
                }
                Err(e) => self.wait_for_store(e, &mut backoff).await,
            }
        }
    }

    /// A settlement outcome waits for an unreachable store: count, log, back off.
    async fn wait_for_store(&self, e: StoreError, backoff: &mut Duration) {
        self.metrics.store_errors.inc();
        tracing::warn!(error = %e, "settlement outcome waits for the store");
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    /// Feeds the endpoint, then drains every output: socket transmits to the
    /// connections' mailboxes, settlement jobs to tasks, events to logs.
    fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut ServerEndpoint, Instant) -> R) -> R {
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
            tokio::spawn(run_settlement(self.clone(), j.id, j.attempt));
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
                self.stats.payments.fetch_add(1, Ordering::Relaxed);
                let label = crate::metrics::StreamLabel { stream };
                self.metrics.credited.get_or_create(&label).inc();
                self.metrics
                    .revenue
                    .get_or_create(&label)
                    .inc_by(amount.atomic().to_u64().unwrap_or(u64::MAX));
                tracing::info!(session = %redact(&session), slices, "slice sold");
            }
            ServerEvent::Refused {
                session,
                stream,
                code,
            } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .refused
                    .get_or_create(&crate::metrics::RefusalLabel {
                        stream,
                        code: code.to_string(),
                    })
                    .inc();
                tracing::info!(session = %redact(&session), %code, "payment refused");
            }
            ServerEvent::Unresolved {
                session,
                payer,
                nonce,
                reason,
            } => {
                self.stats.unresolved.fetch_add(1, Ordering::Relaxed);
                self.metrics.unresolved.inc();
                tracing::error!(session = %redact(&session), %payer, %nonce, %reason,
                    "settlement outcome unknown: nothing credited; reconcile this payment");
            }
        }
    }

    fn entry(&self, ver: &str, id: &str) -> Result<(PathVersion, &StreamEntry), ApiError> {
        let v = match ver {
            "v1" => PathVersion::V1,
            "v2" => PathVersion::V2,
            _ => return Err(not_found("version")),
        };
        let e = self.streams.get(id).ok_or_else(|| not_found("stream"))?;
        Ok((v, e))
    }

    fn resource(&self, v: PathVersion, id: &str) -> String {
        format!("{}/{}/stream/{}", self.ws_base, v.segment(), id)
    }

    fn v1_requirement(&self, v: PathVersion, e: &StreamEntry) -> PaymentRequirementsV1 {
        e.requirement()
            .to_v1(&self.resource(v, &e.cfg.id), &e.cfg.description)
    }

    fn requirements(&self, v: PathVersion, e: &StreamEntry) -> PaymentRequirements {
        match v {
            PathVersion::V1 => PaymentRequirements::V1(self.v1_requirement(v, e)),
            PathVersion::V2 => PaymentRequirements::V2(e.requirement().to_v2()),
        }
    }

    fn payment_required_v2(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        error: &str,
    ) -> PaymentRequiredV2 {
        PaymentRequiredV2 {
            x402_version: 2,
            error: Some(error.into()),
            resource: Some(ResourceInfo {
                url: self.resource(v, &e.cfg.id),
                description: Some(e.cfg.description.clone()),
                mime_type: Some("application/json".into()),
            }),
            accepts: vec![PreservedRequirement::new(e.requirement().to_v2())],
            extensions: Some(payment_identifier_declaration()),
        }
    }

    /// A 402 carrying fresh requirements in the version's form.
    fn payment_error(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        code: ErrorCode,
        message: String,
    ) -> ApiError {
        let mut err = ApiError::new(StatusCode::PAYMENT_REQUIRED, code, message.clone());
        match v {
            PathVersion::V1 => {
                err.accepts = Some(vec![
                    serde_json::to_value(self.v1_requirement(v, e)).unwrap_or(Value::Null),
                ]);
                err.x402_version = Some(1);
            }
            PathVersion::V2 => {
                err.accepts = Some(vec![
                    serde_json::to_value(e.requirement().to_v2()).unwrap_or(Value::Null),
                ]);
                err.x402_version = Some(2);
                err.payment_required = Some(self.payment_required_v2(v, e, &message).to_header());
            }
        }
        err
    }

    /// A refusal from the endpoint as an HTTP answer.
    fn refusal(&self, v: PathVersion, e: &StreamEntry, r: Refusal) -> ApiError {
        match r.code {
            ErrorCode::PaymentRequired | ErrorCode::PaymentInvalid => {
                self.payment_error(v, e, r.code, r.message)
            }
            code => {
                let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::new(status, code, r.message)
            }
        }
    }

    /// Checks a token (MAC, scope, bound requirement) and reads its quote.
    fn quote(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        token: Option<&str>,
    ) -> Result<Quote, ApiError> {
        let invalid =
            |m: String| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::TokenInvalid, m);
        let token = token.ok_or_else(|| invalid("missing token `t`".into()))?;
        let claims: Claims = self.tokens.verify_for(token, v, &e.cfg.id).map_err(|err| {
            tracing::info!(token = %redact(token), %err, "token refused");
            invalid(err.to_string())
        })?;
        // The token binds the exact requirement: a changed price, payee, asset or
        // network invalidates old tokens.
        let req = e.requirement();
        if claims.amt != req.amount.to_string()
            || !claims.to.eq_ignore_ascii_case(&req.pay_to)
            || !claims.asset.eq_ignore_ascii_case(&req.asset)
            || claims.net != req.network.caip2()
        {
            return Err(invalid(TokenError::WrongScope.to_string()));
        }
        let renew_url = x402_types::version::renew_url(&self.http_base, v, &e.cfg.id, token)
            .map(|u| u.to_string())
            .map_err(|err| invalid(err.to_string()))?;
        Ok(Quote {
            id: claims.q,
            stream_id: e.cfg.id.clone(),
            version: v,
            expires: claims.exp,
            slice_seconds: e.cfg.slice_seconds,
            renew_url,
        })
    }

    /// Counts a request carrying a payment from `ip` against a token bucket of
    /// `payments_per_ip_per_minute` (refilled continuously); `Err` (429) when empty.
    fn admit_payment(&self, ip: IpAddr) -> Result<(), ApiError> {
        let per_minute = f64::from(self.cfg.limits.payments_per_ip_per_minute.max(1));
        let now = now();
        let mut m = self.payment_rate.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            // Full buckets carry no information: forget them.
            m.retain(|_, (t, tokens)| {
                *tokens + now.saturating_duration_since(*t).as_secs_f64() * per_minute / 60.0
                    < per_minute
            });
        }
        let (last, tokens) = m.entry(ip).or_insert((now, per_minute));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * per_minute / 60.0;
        *tokens = (*tokens + refill).min(per_minute);
        *last = now;
        if *tokens < 1.0 {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many payments from this address; retry the same payment shortly",
            );
            err.retry_after = Some(((1.0 - *tokens) * 60.0 / per_minute).ceil().max(1.0) as u64);
            return Err(err);
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Buys one slice with a payment header: the endpoint decides, settlement
    /// runs in its own task (it outlives this request), and the answer waits
    /// at most `payment_wait_secs` before saying "pending".
    async fn pay(
        self: &Arc<Self>,
        v: PathVersion,
        e: &StreamEntry,
        quote: &Quote,
        header: &str,
    ) -> Result<Credit, ApiError> {
        let payload = PaymentPayload::from_header(v, header).map_err(|err| {
            self.payment_error(
                v,
                e,
                ErrorCode::PaymentInvalid,
                format!("malformed {} header: {err}", v.payment_header()),
            )
        })?;
        let payment = PaymentIn::from_payload(&payload).map_err(|r| self.refusal(v, e, r))?;
        let req = FacilitatorRequest {
            payment_payload: payload,
            payment_requirements: self.requirements(v, e),
        };
        let decision = match &self.store {
            None => self.with_core(|ep, now| ep.handle_payment(now, quote, payment.clone())),
            Some(store) => {
                self.decide_shared(store, &e.cfg.id, quote, &payment, &req)
                    .await?
            }
        };
        match decision {
            PaymentDecision::Settle(id) => {
                self.start_settlement(id, req, &e.cfg.id, &quote.id, 0);
            }
            PaymentDecision::Pending { .. } => {}
            PaymentDecision::Credited(c) => return Ok(c),
            PaymentDecision::Refused(r) => return Err(self.refusal(v, e, r)),
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.limits.payment_wait_secs);
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answer = self.core().answer(&payment);
            match answer {
                PaymentDecision::Credited(c) => return Ok(c),
                PaymentDecision::Refused(r) => return Err(self.refusal(v, e, r)),
                PaymentDecision::Pending { retry_after, .. }
                    if tokio::time::Instant::now() >= deadline =>
                {
                    return Err(pending(retry_after));
                }
                _ => {}
            }
            let poll = async {
                match &self.store {
                    // Settling on another instance: look at the store now and then.
                    Some(store) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        self.refresh_payment(store, quote, &payment).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = poll => {}
            }
        }
    }
}

/// The `payment-identifier` extension, declared optional in 402 answers.
fn payment_identifier_declaration() -> Value {
    serde_json::json!({
        x402_types::x402::PAYMENT_IDENTIFIER: {
            "info": {"required": false},
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "required": {"type": "boolean"},
                    "id": {"type": "string", "minLength": 16, "maxLength": 128,
                           "pattern": "^[a-zA-Z0-9_-]+$"}
                },
                "required": ["required"]
            }
        }
    })
}

/// 503 `store_unavailable`: nothing was recorded, nothing will be settled.
fn store_down(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "shared store unavailable");
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the server cannot record payments right now; nothing was settled; retry the same payment shortly",
    );
    err.retry_after = Some(1);
    err
}

fn pending(retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::ACCEPTED,
        ErrorCode::PaymentPending,
        format!(
            "the payment's settlement is under way; send the same payment again in {retry_after} s"
        ),
    );
    e.retry_after = Some(retry_after);
    e
}

/// Runs one settlement attempt and reports its outcome to the endpoint.
async fn run_settlement(state: Arc<AppState>, id: SettleId, attempt: u32) {
    let job = {
        let jobs = state.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(&id)
            .map(|j| (j.req.clone(), j.stream.clone(), j.session.clone()))
    };
    let Some((req, stream, session)) = job else {
        return;
    };
    let started = tokio::time::Instant::now();
    let outcome = settle_outcome(state.facilitator.as_ref(), &req, attempt).await;
    let kind = match &outcome {
        SettleOutcome::Settled { .. } => "settled",
        SettleOutcome::Refused { .. } => "refused",
        SettleOutcome::Pending => "pending",
        SettleOutcome::Unknown { .. } => "unknown",
        SettleOutcome::NotAttempted { .. } => "not_attempted",
    };
    if matches!(kind, "unknown" | "not_attempted") {
        state.metrics.facilitator_errors.inc();
    }
    state
        .metrics
        .settlement_seconds
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: kind.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    let head = state.streams.get(&stream).map_or(0, |e| e.hub.next_seq());
    match &state.store {
        None => state.with_core(|ep, now| ep.handle_settled(now, id, outcome, head)),
        Some(store) => {
            state
                .settled_shared(store, id, &session, outcome, head)
                .await;
        }
    }
    let done = !state.core().is_settling(id);
    if done {
        state
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    state.settled.notify_waiters();
}

/// Reads the facilitator's answers as a settlement outcome. A first attempt
/// verifies, then settles; later attempts settle the same payload again.
pub(crate) async fn settle_outcome(
    f: &dyn Facilitator,
    req: &FacilitatorRequest,
    attempt: u32,
) -> SettleOutcome {
    if attempt == 0 {
        match f.verify(req).await {
            Err(e) => {
                return SettleOutcome::NotAttempted {
                    reason: e.to_string(),
                };
            }
            Ok(v) if !v.is_valid => {
                let reason = v.invalid_reason.unwrap_or_default();
                return SettleOutcome::Refused {
                    code: refusal_code(&reason),
                    message: format!("{reason}: {}", v.invalid_message.unwrap_or_default()),
                };
            }
            Ok(_) => {}
        }
    }
    match f.settle(req).await {
        // Nothing was sent: as good as never asked.
        Err(FacilitatorError::Unavailable(e)) => SettleOutcome::NotAttempted { reason: e },
        Err(e) => SettleOutcome::Unknown {
            reason: e.to_string(),
        },
        Ok(s) if s.success => SettleOutcome::Settled {
            header: Some(encode_header(&s)),
            payer: s.payer.as_deref().and_then(|p| p.parse().ok()),
            amount: s.amount,
        },
        Ok(s) if s.is_pending() => SettleOutcome::Pending,
        Ok(s) => {
            let reason = s.error_reason.unwrap_or_default();
            // A verification-type reason is definite; anything else (a timeout
            // inside the facilitator, raw text) is not proof that nothing moved.
            if reason.starts_with("invalid_") {
                SettleOutcome::Refused {
                    code: refusal_code(&reason),
                    message: format!("settlement refused: {reason}"),
                }
            } else {
                SettleOutcome::Unknown {
                    reason: format!("settlement failed without a definite reason: {reason}"),
                }
            }
        }
    }
}

fn refusal_code(reason: &str) -> ErrorCode {
    if reason.contains("nonce") && reason.contains("used") {
        ErrorCode::PaymentUsed
    } else {
        ErrorCode::PaymentInvalid
    }
}

fn payment_header(v: PathVersion, headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(v.payment_header()) {
        None => Ok(None),
        Some(h) => h
            .to_str()
            .map(Some)
            .map_err(|_| bad_request("payment header is not ASCII")),
    }
}

fn with_header(mut resp: Response, name: &'static str, value: Option<String>) -> Response {
    if let Some(v) = value
        && let Ok(v) = HeaderValue::from_str(&v)
    {
        resp.headers_mut().insert(name, v);
    }
    resp
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let st = s.endpoint_stats();
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    s.metrics.sessions.set(gauge(st.sessions));
    s.metrics.settling.set(gauge(st.settling));
    s.metrics
        .sockets
        .set(i64::try_from(s.stats.sockets.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let st = s.endpoint_stats();
    axum::Json(serde_json::json!({
        "status": "ok",
        "sessions": st.sessions,
        "settling": st.settling,
        "sockets": s.stats.sockets.load(Ordering::Relaxed),
        "facilitator": s.facilitator.describe(),
    }))
    .into_response()
}

async fn streams(State(s): State<Arc<AppState>>) -> Response {
    let mut list: Vec<Value> = s
        .streams
        .values()
        .map(|e| {
            serde_json::json!({
                "id": e.cfg.id,
                "title": e.cfg.title,
                "description": e.cfg.description,
                "pricePerMinute": e.terms.per_minute.to_display(e.terms.decimals),
                "pricePerSlice": e.terms.per_slice.to_display(e.terms.decimals),
                "sliceSeconds": e.cfg.slice_seconds,
                "currency": e.terms.symbol,
                "network": e.terms.network.caip2(),
                "asset": e.terms.asset.to_string(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    axum::Json(serde_json::json!({"streams": list})).into_response()
}

async fn schema(
    State(s): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Ok(Path((ver, id))) = path else {
        return not_found("stream").into_response();
    };
    let (v, e) = match s.entry(&ver, &id) {
        Ok(x) => x,
        Err(err) => return err.into_response(),
    };
    let mut q = [0u8; 16];
    if getrandom::fill(&mut q).is_err() {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Other("server_error".into()),
            "no randomness",
        )
        .into_response();
    }
    let req = e.requirement();
    let iat = s.unix_now();
    let claims = Claims {
        v,
        s: e.cfg.id.clone(),
        q: hex::encode(q),
        iat,
        exp: iat + e.cfg.max_timeout_seconds,
        amt: req.amount.to_string(),
        to: req.pay_to.clone(),
        asset: req.asset.clone(),
        net: req.network.caip2(),
    };
    let token = s.tokens.issue(&claims);
    let ws = x402_types::version::stream_url(&s.ws_base, v, &e.cfg.id, &token, None)
        .map(|u| u.to_string())
        .unwrap_or_default();
    let d = e.terms.decimals;
    let per_second = e
        .terms
        .per_minute
        .to_display(d)
        .parse::<f64>()
        .unwrap_or(0.0)
        / 60.0;
    let error = format!("{} header is required", v.payment_header());
    let doc = Schema {
        protocol: "ws402".into(),
        version: v,
        websocket_endpoint: ws,
        pricing: Pricing {
            price_per_second: per_second,
            currency: e.terms.symbol.clone(),
            estimated_duration: e.cfg.slice_seconds,
            price_per_minute: Some(e.terms.per_minute.to_display(d)),
            price_per_slice: Some(e.terms.per_slice.to_display(d)),
        },
        payment_details: x402_types::PaymentDetails {
            scheme: req.scheme.clone(),
            network: req.network.clone(),
            asset: req.asset.clone(),
            pay_to: req.pay_to.clone(),
            max_amount_required: req.amount,
            max_timeout_seconds: req.max_timeout_seconds,
            extra: req.extra.clone(),
        },
        stream: StreamInfo {
            id: e.cfg.id.clone(),
            title: e.cfg.title.clone(),
            description: e.cfg.description.clone(),
        },
        x402_version: (v == PathVersion::V1).then_some(1),
        error: (v == PathVersion::V1).then(|| error.clone()),
        accepts: (v == PathVersion::V1).then(|| vec![s.v1_requirement(v, e)]),
    };
    let mut resp = (
        StatusCode::PAYMENT_REQUIRED,
        [("content-type", "application/json")],
        doc.to_json(),
    )
        .into_response();
    if v == PathVersion::V2 {
        resp = with_header(
            resp,
            x402_types::x402::headers::PAYMENT_REQUIRED,
            Some(s.payment_required_v2(v, e, &error).to_header()),
        );
    }
    resp
}

fn query(q: Result<Query<TokenQuery>, QueryRejection>) -> Result<TokenQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad_request(format!("query: {e}")))
}

fn path(p: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), ApiError> {
    p.map(|Path(p)| p).map_err(|_| not_found("stream"))
}

async fn renew(
    State(s): State<Arc<AppState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<TokenQuery>, QueryRejection>,
    Extension(RemoteAddr(addr)): Extension<RemoteAddr>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (ver, id) = path(p)?;
        let q = query(q)?;
        let (v, e) = s.entry(&ver, &id)?;
        let quote = s.quote(v, e, q.t.as_deref())?;
        let header = payment_header(v, &headers)?.ok_or_else(|| {
            s.payment_error(
                v,
                e,
                ErrorCode::PaymentRequired,
                format!("{} header is required", v.payment_header()),
            )
        })?;
        s.admit_payment(addr.ip())?;
        let credit = s.pay(v, e, &quote, header).await?;
        Ok::<_, ApiError>((v, credit))
    }
    .await;
    match result {
        Ok((v, c)) => with_header(
            axum::Json(c.response).into_response(),
            v.payment_response_header(),
            c.settlement,
        ),
        Err(e) => e.into_response(),
    }
}

struct IpGuard {
    state: Arc<AppState>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut m = self.state.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        self.state.stats.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ip_guard(s: &Arc<AppState>, ip: IpAddr) -> Result<IpGuard, ApiError> {
    let mut m = s.per_ip.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(ip).or_insert(0);
    if *n >= s.cfg.limits.max_connections_per_ip {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections,
            "too many sockets from this address",
        ));
    }
    *n += 1;
    s.stats.sockets.fetch_add(1, Ordering::Relaxed);
    Ok(IpGuard {
        state: s.clone(),
        ip,
    })
}

async fn stream(
    State(s): State<Arc<AppState>>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<TokenQuery>, QueryRejection>,
    Extension(RemoteAddr(addr)): Extension<RemoteAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let (ver, id) = path(p)?;
        let q = query(q)?;
        let (v, e) = s.entry(&ver, &id)?;
        let quote = s.quote(v, e, q.t.as_deref())?;
        let from = match q.from.as_deref() {
            None => None,
            Some(f) => Some(
                f.parse::<u64>()
                    .map_err(|_| bad_request("`from` must be an integer"))?,
            ),
        };
        let ws = ws.map_err(|r| bad_request(format!("not a WebSocket upgrade: {r}")))?;
        let header = payment_header(v, &headers)?;
        let guard = ip_guard(&s, addr.ip())?;
        let settlement = match header {
            Some(h) => {
                s.admit_payment(addr.ip())?;
                s.pay(v, e, &quote, h).await?.settlement
            }
            None => None,
        };
        // Only a paid session opens; the session is connected once the 101 is out.
        // (A payment just decided has already brought the store's session here.)
        if header.is_none() {
            s.refresh_for_connect(&quote).await?;
        }
        s.core()
            .check_connect(now(), &quote)
            .map_err(|r| s.refusal(v, e, r))?;
        Ok::<_, ApiError>((v, ws, settlement, quote, from, guard, e.hub.clone()))
    }
    .await;
    let (v, ws, settlement, quote, from, guard, hub) = match result {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let state = s.clone();
    let resp = ws
        .max_message_size(s.cfg.limits.max_frame_bytes)
        .max_frame_size(s.cfg.limits.max_frame_bytes)
        // Idle sockets dominate memory at scale: tungstenite's 128 KiB default
        // read buffer per socket is the largest cost. Clients send almost nothing.
        .read_buffer_size(4 * 1024)
        // Frames published together are written together (one flush per
        // batch); the buffer grows only while a burst is being written.
        .write_buffer_size(16 * 1024)
        // Bounded: a slow reader cannot make us buffer without limit.
        .max_write_buffer_size(8 * 1024 * 1024)
        .on_upgrade(move |socket| async move {
            Connection::open(state, socket, quote, from, hub, guard).await;
        });
    with_header(resp, v.payment_response_header(), settlement)
}

struct Connection {
    state: Arc<AppState>,
    conn: ConnId,
    hub: Arc<Hub>,
    live: broadcast::Receiver<Frame>,
    rx: mpsc::Receiver<ServerTransmit>,
    next: u64,
    /// Paid time as the endpoint last said (refreshed on each of its transmits).
    until: Option<Instant>,
    /// Frames being written together (kept to reuse its allocation).
    batch: Vec<Frame>,
    _guard: IpGuard,
}

/// At most this many event frames go into one flush.
const MAX_BATCH: usize = 64;

enum Step {
    Continue,
    Close(Option<CloseCode>),
}

type Sink = WebSocket;

impl Connection {
    /// The upgrade completed: connect the session (not before), then serve.
    async fn open(
        state: Arc<AppState>,
        socket: WebSocket,
        quote: Quote,
        from: Option<u64>,
        hub: Arc<Hub>,
        guard: IpGuard,
    ) {
        let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(64);
        let live = hub.subscribe();
        state
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn, tx);
        let head = hub.head();
        let connected = match &state.store {
            None => state.with_core(|ep, now| ep.connect(now, &quote, conn, from, head)),
            Some(store) => {
                let store = store.clone();
                state.connect_shared(&store, &quote, conn, from, head).await
            }
        };
        let mut sink = socket;
        let c = match connected {
            Ok(c) => c,
            Err(r) => {
                // Paid time ran out between the check and the 101.
                state
                    .mailboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&conn);
                let code = if r.code == ErrorCode::StoreUnavailable {
                    1013 // try again later
                } else {
                    CloseCode::PaymentExpired.code()
                };
                let frame = CloseFrame {
                    code,
                    reason: "".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    sink.send(Message::Close(Some(frame))),
                )
                .await;
                return;
            }
        };
        let until = state.core().deliver_until(conn);
        let c2 = Connection {
            state,
            conn,
            hub,
            live,
            rx,
            next: c.start,
            until,
            batch: Vec::new(),
            _guard: guard,
        };
        c2.run(sink, c).await;
    }

    async fn send(&self, ws: &mut Sink, text: impl Into<Utf8Bytes>) -> bool {
        let t = self.state.cfg.limits.write_timeout();
        matches!(
            tokio::time::timeout(t, ws.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        )
    }

    /// Writes event frames with one flush (one write to the socket for a burst,
    /// not one per event; each frame's text is shared, not copied) and counts them.
    async fn send_frames(&mut self, ws: &mut Sink, frames: &[Frame]) -> bool {
        let Some(last) = frames.last() else {
            return true;
        };
        let t = self.state.cfg.limits.write_timeout();
        let write = async {
            for f in frames {
                ws.feed(Message::Text(f.text.clone())).await?;
            }
            ws.flush().await
        };
        if !matches!(tokio::time::timeout(t, write).await, Ok(Ok(()))) {
            return false;
        }
        let n = frames.len() as u64;
        self.state.stats.events_sent.fetch_add(n, Ordering::Relaxed);
        self.state.metrics.events_sent.inc_by(n);
        self.next = last.seq + 1;
        true
    }

    async fn notice(&self, ws: &mut Sink, code: ErrorCode, count: u64) -> bool {
        self.state
            .metrics
            .events_dropped
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: if code == ErrorCode::EventsSkipped {
                    "unpaid".into()
                } else {
                    "evicted".into()
                },
            })
            .inc_by(count);
        let message = match code {
            ErrorCode::EventsSkipped => {
                format!("{count} events were published while this session was not paid")
            }
            _ => format!("{count} events were evicted from the replay buffer"),
        };
        let m = ServerMessage::Error {
            code,
            message,
            count: Some(count),
        };
        self.send(ws, m.to_json()).await
    }

    fn deliverable(&self) -> bool {
        self.until.is_some_and(|u| now() < u)
    }

    /// Sends what the buffer holds from `next`, if paid.
    async fn catch_up(&mut self, ws: &mut Sink) -> bool {
        if !self.deliverable() {
            return true;
        }
        let c = self.hub.catch_up(self.next);
        if c.lost > 0 && !self.notice(ws, ErrorCode::EventsLost, c.lost).await {
            return false;
        }
        for chunk in c.frames.chunks(MAX_BATCH) {
            if !self.send_frames(ws, chunk).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut tx: Sink, c: Connected) {
        let close = 'outer: {
            if !self
                .send(&mut tx, ServerMessage::Hello(c.hello).to_json())
                .await
            {
                break 'outer None;
            }
            if c.skipped > 0
                && !self
                    .notice(&mut tx, ErrorCode::EventsSkipped, c.skipped)
                    .await
            {
                break 'outer None;
            }
            if c.lost > 0 && !self.notice(&mut tx, ErrorCode::EventsLost, c.lost).await {
                break 'outer None;
            }
            if !self.catch_up(&mut tx).await {
                break 'outer None;
            }
            let mut closing = self.state.closing.subscribe();
            let already = *closing.borrow_and_update();
            if already {
                break 'outer Some(CloseCode::Other(1012));
            }
            // The client's frames and the mailbox are polled only after they
            // woke (most wakes are live events; see `gate`).
            let (client_gate, mail_gate) = (crate::gate::Gate::new(), crate::gate::Gate::new());
            loop {
                let mail = std::future::poll_fn(|cx| mail_gate.poll(cx, |c| self.rx.poll_recv(c)));
                let step = tokio::select! {
                    r = closing.changed() => {
                        let now_closing = r.is_ok() && *closing.borrow_and_update();
                        if now_closing {
                            Step::Close(Some(CloseCode::Other(1012)))
                        } else {
                            Step::Continue
                        }
                    }
                    frame = self.live.recv() => self.on_live(&mut tx, frame).await,
                    // One socket for both directions (no split, no lock per frame).
                    msg = std::future::poll_fn(|cx| {
                        client_gate.poll(cx, |c| tx.poll_next_unpin(c))
                    }) => self.on_client(&mut tx, msg).await,
                    t = mail => match t {
                        Some(t) => self.on_transmit(&mut tx, t).await,
                        None => Step::Close(None),
                    },
                };
                if let Step::Close(code) = step {
                    break 'outer code;
                }
            }
        };
        if let Some(code) = close {
            let frame = CloseFrame {
                code: code.code(),
                reason: "".into(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(frame))))
                    .await;
        }
        self.state
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.conn);
        let conn = self.conn;
        self.state.with_core(|ep, now| ep.disconnect(now, conn));
    }

    async fn on_live(
        &mut self,
        tx: &mut Sink,
        frame: Result<Frame, broadcast::error::RecvError>,
    ) -> Step {
        match frame {
            Ok(f) if f.seq < self.next => Step::Continue,
            Ok(f) if f.seq == self.next => {
                if !self.deliverable() {
                    return Step::Continue; // held in the buffer until renewed
                }
                // Take what else is already published, in order, into one write.
                let mut batch = std::mem::take(&mut self.batch);
                batch.clear();
                let mut expect = f.seq + 1;
                batch.push(f);
                let mut after = None;
                while batch.len() < MAX_BATCH {
                    match self.live.try_recv() {
                        Ok(f) if f.seq < expect => {}
                        Ok(f) if f.seq == expect => {
                            expect += 1;
                            batch.push(f);
                        }
                        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            after = Some(Err(broadcast::error::RecvError::Lagged(0)));
                            break;
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            after = Some(Err(broadcast::error::RecvError::Closed));
                            break;
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    }
                }
                let sent = self.send_frames(tx, &batch).await;
                self.batch = batch;
                match (sent, after) {
                    (false, _) => Step::Close(None),
                    (true, None) => Step::Continue,
                    // Behind, or the stream ended: handled as if received now.
                    (true, Some(next)) => Box::pin(self.on_live(tx, next)).await,
                }
            }
            // Behind (slow consumer or held while unpaid): serve from the replay buffer.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if self.catch_up(tx).await {
                    Step::Continue
                } else {
                    Step::Close(None)
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = self
                    .send(
                        tx,
                        ServerMessage::End {
                            reason: "stream ended".into(),
                        }
                        .to_json(),
                    )
                    .await;
                Step::Close(Some(CloseCode::Normal))
            }
        }
    }

    async fn on_client(
        &mut self,
        tx: &mut Sink,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Step {
        match msg {
            Some(Ok(Message::Text(t))) => {
                if ClientMessage::parse(t.as_str()) == ClientMessage::Ping
                    && !self.send(tx, ServerMessage::Pong.to_json()).await
                {
                    return Step::Close(None);
                }
                Step::Continue
            }
            Some(Ok(Message::Close(_))) | None => Step::Close(None),
            Some(Ok(_)) => Step::Continue,
            Some(Err(e)) => {
                let too_big = e.to_string().to_ascii_lowercase().contains("too long")
                    || e.to_string().contains("size");
                Step::Close(too_big.then_some(CloseCode::TooBig))
            }
        }
    }

    async fn on_transmit(&mut self, tx: &mut Sink, t: ServerTransmit) -> Step {
        self.until = self.state.core().deliver_until(self.conn);
        match t {
            ServerTransmit::Message { msg, .. } => {
                let renewed = matches!(msg, ServerMessage::Renewed { .. });
                if !self.send(tx, msg.to_json()).await {
                    return Step::Close(None);
                }
                if renewed && !self.catch_up(tx).await {
                    return Step::Close(None);
                }
                Step::Continue
            }
            ServerTransmit::Skip { seq, .. } => {
                if self.next < seq {
                    let n = seq - self.next;
                    self.next = seq;
                    if !self.notice(tx, ErrorCode::EventsSkipped, n).await {
                        return Step::Close(None);
                    }
                }
                Step::Continue
            }
            ServerTransmit::Close { code, .. } => Step::Close(Some(code)),
        }
    }
}

/// Runs the endpoint's timers (expiry notices, 4402 closes, settlement
/// retries, sweeping) for as long as the server lives.
pub(crate) async fn drive_timers(state: Arc<AppState>) {
    loop {
        let deadline = state.core().poll_timeout();
        let notified = state.timers.notified();
        tokio::pin!(notified);
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d.into()) => {
                        if state.store.is_some() {
                            // Time paid on another instance must be seen before `expired`.
                            let due = state.core().due_sessions(now());
                            for session in due {
                                state.refresh(&session).await;
                            }
                        }
                        state.with_core(|ep, now| ep.handle_timeout(now));
                    }
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// The router of the stream server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/streams", get(streams))
        .route("/{ver}/schema/{id}", get(schema))
        .route("/{ver}/stream/{id}", get(stream))
        .route("/{ver}/renew/{id}", post(renew))
        .fallback(|| async { not_found("route").into_response() })
        .with_state(state)
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
