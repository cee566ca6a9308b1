//! HTTP and WebSocket handlers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use x402_session::{
    ConnId, PaymentStart, Refusal, ServerConfig as SessionConfig, ServerSession, ServerTransmit,
};
use x402_types::x402::{PaymentRequiredV2, ResourceInfo, encode_header};
use x402_types::{
    ClientMessage, CloseCode, FacilitatorRequest, PathVersion, PaymentPayload, PaymentRequirements,
    PaymentRequirementsV1, PreservedRequirement, Pricing, RenewResponse, Requirement, Schema,
    ServerMessage, StreamInfo,
};

use crate::config::{Config, StreamConfig, Terms};
use crate::error::ApiError;
use crate::facilitator::Facilitator;
use crate::hub::{Frame, Hub};
use crate::store::{SessionStore, Slot};
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
    /// Payments accepted (settled or pending).
    pub payments: AtomicU64,
    /// Sockets open now.
    pub sockets: AtomicU64,
    /// Events sent.
    pub events_sent: AtomicU64,
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
    /// Sessions.
    pub store: Arc<dyn SessionStore>,
    /// Sockets per client IP.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connection ids.
    pub next_conn: AtomicU64,
    /// Counters.
    pub stats: Stats,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    t: Option<String>,
    from: Option<String>,
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_stream",
        format!("no such {what}"),
    )
}

impl AppState {
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
            extensions: None,
        }
    }

    /// A 402 carrying fresh requirements in the version's form.
    fn payment_error(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        code: &'static str,
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

    fn check_token(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        token: Option<&str>,
    ) -> Result<Claims, ApiError> {
        let token = token.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_invalid",
                "missing token `t`",
            )
        })?;
        let claims = self.tokens.verify_for(token, v, &e.cfg.id).map_err(|err| {
            tracing::info!(token = %redact(token), %err, "token refused");
            ApiError::new(StatusCode::UNAUTHORIZED, "token_invalid", err.to_string())
        })?;
        // The token binds the exact requirement: a changed price invalidates old tokens.
        let req = e.requirement();
        if claims.amt != req.amount.to_string()
            || !claims.to.eq_ignore_ascii_case(&req.pay_to)
            || claims.net != req.network.caip2()
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_invalid",
                TokenError::WrongScope.to_string(),
            ));
        }
        Ok(claims)
    }

    /// The session of a token: existing, or new while its quote is fresh.
    fn slot(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        claims: &Claims,
        token: &str,
    ) -> Result<Arc<Slot>, ApiError> {
        if let Some(s) = self.store.get(&claims.q) {
            return Ok(s);
        }
        if unix_now() > claims.exp {
            return Err(ApiError::new(
                StatusCode::GONE,
                "quote_expired",
                "the unpaid quote expired; request the schema again",
            ));
        }
        let renew_url = x402_types::version::renew_url(&self.http_base, v, &e.cfg.id, token)
            .map(|u| u.to_string())
            .unwrap_or_default();
        let tokens = self.tokens.clone();
        let (stream, q) = (e.cfg.id.clone(), claims.q.clone());
        let check: x402_session::TokenCheck =
            Arc::new(move |t: &str| match tokens.verify_for(t, v, &stream) {
                Ok(c) if c.q == q => Ok(()),
                Ok(_) => Err("token names another session".into()),
                Err(e) => Err(e.to_string()),
            });
        let mut scfg = SessionConfig::new(&e.cfg.id, v, e.cfg.slice_seconds, renew_url, check);
        scfg.horizon_slices = self.cfg.limits.horizon_slices.max(1);
        let quote_exp = claims.exp;
        let session_id = claims.q.clone();
        self.store
            .get_or_insert(&claims.q, &mut || {
                Slot::new(
                    ServerSession::new(scfg.clone(), session_id.clone(), now(), unix_now()),
                    quote_exp,
                )
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sessions",
                    "session limit reached",
                )
            })
    }

    /// Buys one slice with a payment header. Returns the session's answer and the settlement header.
    async fn pay(
        &self,
        v: PathVersion,
        e: &StreamEntry,
        slot: &Slot,
        header: &str,
    ) -> Result<(RenewResponse, Option<String>), ApiError> {
        let payload = PaymentPayload::from_header(v, header).map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("payment header: {err}"),
            )
        })?;
        let Some(evm) = payload.exact_evm() else {
            return Err(self.payment_error(
                v,
                e,
                "payment_invalid",
                "only the exact EVM scheme is accepted".into(),
            ));
        };
        let nonce = evm.authorization.nonce;
        let key = format!("{}:{}", evm.authorization.nonce, evm.signature);
        let start = slot.lock().session.begin_payment(now(), &key);
        match start {
            Ok(PaymentStart::Duplicate(r)) => return Ok((r, None)),
            Ok(PaymentStart::Proceed) => {}
            Err(r) => return Err(refusal(r)),
        }
        // If this request is cancelled (the client went away mid-payment), the guard
        // takes the payment out of flight so the session is not stuck.
        let mut guard = InFlight {
            slot,
            key: &key,
            done: false,
        };
        let req = FacilitatorRequest {
            payment_payload: payload.clone(),
            payment_requirements: self.requirements(v, e),
        };
        let timeout = Duration::from_secs(self.cfg.limits.facilitator_timeout_secs);
        let used = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "payment_used",
                "this payment's nonce was already used",
            )
        };
        // Claim the nonce first (local, cheap): a replay never reaches the facilitator.
        if !self.store.claim_nonce(&nonce) {
            return Err(used());
        }
        let (verify, settle) =
            match tokio::time::timeout(timeout, self.facilitator.verify_and_settle(&req)).await {
                Ok(Ok(x)) => x,
                Ok(Err(err)) => {
                    self.store.release_nonce(&nonce);
                    return Err(unavailable(err.to_string()));
                }
                Err(_) => {
                    // Unknown outcome: keep the nonce claimed (it may settle); the client
                    // retries the same payload and learns the outcome.
                    return Err(unavailable("facilitator timed out".into()));
                }
            };
        let Some(settle) = settle.filter(|_| verify.is_valid) else {
            self.store.release_nonce(&nonce);
            let reason = verify.invalid_reason.unwrap_or_default();
            if reason == crate::facilitator::NONCE_USED {
                return Err(used());
            }
            let msg = format!("{reason}: {}", verify.invalid_message.unwrap_or_default());
            return Err(self.payment_error(v, e, "payment_invalid", msg));
        };
        if !settle.success && !settle.is_pending() {
            self.store.release_nonce(&nonce);
            let reason = settle.error_reason.clone().unwrap_or_default();
            return Err(self.payment_error(
                v,
                e,
                "payment_invalid",
                format!("settlement failed: {reason}"),
            ));
        }
        let r = {
            let mut s = slot.lock();
            let r = s.session.complete_payment(now(), &key);
            s.dispatch();
            r
        };
        guard.done = true;
        self.stats.payments.fetch_add(1, Ordering::Relaxed);
        tracing::info!(session = %redact(&r.session_id), slices = r.slices, expires_at = r.expires_at, pending = settle.is_pending(), "slice sold");
        Ok((r, Some(encode_header(&settle))))
    }
}

/// Takes a payment out of flight unless it completed (also on cancellation).
struct InFlight<'a> {
    slot: &'a Slot,
    key: &'a str,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slot.lock().session.abort_payment(self.key);
        }
    }
}

fn refusal(r: Refusal) -> ApiError {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::CONFLICT);
    ApiError::new(status, r.code(), r.to_string())
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "facilitator_unavailable",
        msg,
    )
}

fn payment_header(v: PathVersion, headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(v.payment_header()) {
        None => Ok(None),
        Some(h) => h.to_str().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "payment header is not ASCII",
            )
        }),
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

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "sessions": s.store.len(),
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
    Path((ver, id)): Path<(String, String)>,
) -> Response {
    let (v, e) = match s.entry(&ver, &id) {
        Ok(x) => x,
        Err(err) => return err.into_response(),
    };
    let mut q = [0u8; 16];
    if getrandom::fill(&mut q).is_err() {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness",
        )
        .into_response();
    }
    let req = e.requirement();
    let iat = unix_now();
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

async fn renew(
    State(s): State<Arc<AppState>>,
    Path((ver, id)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let (v, e) = s.entry(&ver, &id)?;
        let claims = s.check_token(v, e, q.t.as_deref())?;
        let header = payment_header(v, &headers)?.ok_or_else(|| {
            s.payment_error(
                v,
                e,
                "payment_required",
                format!("{} header is required", v.payment_header()),
            )
        })?;
        let slot = s.slot(v, e, &claims, q.t.as_deref().unwrap_or_default())?;
        let (r, settle) = s
            .pay(v, e, &slot, header)
            .await
            .inspect_err(|_| s.store.remove_if_unused(&claims.q, now()))?;
        Ok::<_, ApiError>((v, r, settle))
    }
    .await;
    match result {
        Ok((v, r, settle)) => with_header(
            axum::Json(r).into_response(),
            v.payment_response_header(),
            settle,
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
            "too_many_connections",
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
    Path((ver, id)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    Extension(RemoteAddr(addr)): Extension<RemoteAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let (v, e) = s.entry(&ver, &id)?;
        let claims = s.check_token(v, e, q.t.as_deref())?;
        let from = match q.from.as_deref() {
            None => None,
            Some(f) => Some(f.parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "`from` must be an integer",
                )
            })?),
        };
        let ws = ws.map_err(|r| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("not a WebSocket upgrade: {r}"),
            )
        })?;
        let header = payment_header(v, &headers)?;
        let guard = ip_guard(&s, addr.ip())?;
        let (slot, settle) = match header {
            Some(h) => {
                let slot = s.slot(v, e, &claims, q.t.as_deref().unwrap_or_default())?;
                let settle = s
                    .pay(v, e, &slot, h)
                    .await
                    .inspect_err(|_| s.store.remove_if_unused(&claims.q, now()))?
                    .1;
                (slot, settle)
            }
            // Without a payment only an existing session can open: unpaid attempts leave no state.
            None => match s.store.get(&claims.q) {
                Some(slot) => (slot, None),
                None if unix_now() > claims.exp => {
                    return Err(ApiError::new(
                        StatusCode::GONE,
                        "quote_expired",
                        "the unpaid quote expired; request the schema again",
                    ));
                }
                None => {
                    return Err(s.payment_error(
                        v,
                        e,
                        "payment_required",
                        format!("{} header is required", v.payment_header()),
                    ));
                }
            },
        };
        let conn = ConnId(s.next_conn.fetch_add(1, Ordering::Relaxed));
        let live = e.hub.subscribe();
        let start = from.unwrap_or_else(|| e.hub.next_seq());
        let (tx, rx) = mpsc::channel(64);
        let hello = {
            let mut sl = slot.lock();
            let token = q.t.as_deref().unwrap_or_default();
            let hello = sl
                .session
                .connect(now(), conn, token, start.min(e.hub.next_seq()));
            if hello.is_ok() {
                sl.register(conn, tx);
            }
            sl.dispatch();
            hello
        };
        let hello = hello.map_err(|r| match r {
            Refusal::PaymentRequired => s.payment_error(
                v,
                e,
                "payment_required",
                "no paid time left: pay for a slice".into(),
            ),
            other => refusal(other),
        })?;
        Ok::<_, ApiError>((
            v,
            ws,
            settle,
            conn,
            slot,
            hello,
            live,
            rx,
            guard,
            e.hub.clone(),
        ))
    }
    .await;
    let (v, ws, settle, conn, slot, hello, live, rx, guard, hub) = match result {
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
        // Each send is flushed anyway; no write batching buffer.
        .write_buffer_size(0)
        // Bounded: a slow reader cannot make us buffer without limit.
        .max_write_buffer_size(8 * 1024 * 1024)
        .on_upgrade(move |socket| async move {
            let c = Connection {
                state,
                slot,
                conn,
                hub,
                live,
                rx,
                next: hello.next_seq,
                _guard: guard,
            };
            c.run(socket, hello).await;
        });
    with_header(resp, v.payment_response_header(), settle)
}

struct Connection {
    state: Arc<AppState>,
    slot: Arc<Slot>,
    conn: ConnId,
    hub: Arc<Hub>,
    live: broadcast::Receiver<Frame>,
    rx: mpsc::Receiver<ServerTransmit>,
    next: u64,
    _guard: IpGuard,
}

enum Step {
    Continue,
    Close(Option<CloseCode>),
}

impl Connection {
    async fn send(
        &self,
        ws: &mut futures::stream::SplitSink<WebSocket, Message>,
        text: String,
    ) -> bool {
        let t = self.state.cfg.limits.write_timeout();
        matches!(
            tokio::time::timeout(t, ws.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        )
    }

    fn deliverable(&self) -> bool {
        self.slot.lock().session.can_deliver(now(), self.conn)
    }

    /// Sends what the buffer holds from `next`, if paid.
    async fn catch_up(&mut self, ws: &mut futures::stream::SplitSink<WebSocket, Message>) -> bool {
        if !self.deliverable() {
            return true;
        }
        let c = self.hub.catch_up(self.next);
        if c.lost > 0 {
            let m = ServerMessage::Error {
                code: "events_lost".into(),
                message: format!("{} events were evicted from the replay buffer", c.lost),
                count: Some(c.lost),
            };
            if !self.send(ws, m.to_json()).await {
                return false;
            }
        }
        for f in c.frames {
            if !self.send(ws, f.text.to_string()).await {
                return false;
            }
            self.state.stats.events_sent.fetch_add(1, Ordering::Relaxed);
            self.next = f.seq + 1;
        }
        true
    }

    async fn run(mut self, socket: WebSocket, hello: x402_types::Hello) {
        let (mut tx, mut rx_ws) = socket.split();
        let close = 'outer: {
            if !self
                .send(&mut tx, ServerMessage::Hello(hello).to_json())
                .await
            {
                break 'outer None;
            }
            if !self.catch_up(&mut tx).await {
                break 'outer None;
            }
            loop {
                let deadline = self.slot.lock().session.poll_timeout();
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let step = tokio::select! {
                    frame = self.live.recv() => self.on_live(&mut tx, frame).await,
                    msg = rx_ws.next() => self.on_client(&mut tx, msg).await,
                    t = self.rx.recv() => match t {
                        Some(t) => self.on_transmit(&mut tx, t).await,
                        None => Step::Close(None),
                    },
                    _ = sleep => {
                        let mut s = self.slot.lock();
                        s.session.handle_timeout(now());
                        s.dispatch();
                        Step::Continue
                    }
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
        self.slot.lock().unregister(self.conn);
    }

    async fn on_live(
        &mut self,
        tx: &mut futures::stream::SplitSink<WebSocket, Message>,
        frame: Result<Frame, broadcast::error::RecvError>,
    ) -> Step {
        match frame {
            Ok(f) if f.seq < self.next => Step::Continue,
            Ok(f) if f.seq == self.next => {
                if !self.deliverable() {
                    return Step::Continue; // held in the buffer until renewed
                }
                if !self.send(tx, f.text.to_string()).await {
                    return Step::Close(None);
                }
                self.state.stats.events_sent.fetch_add(1, Ordering::Relaxed);
                self.next = f.seq + 1;
                Step::Continue
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
        tx: &mut futures::stream::SplitSink<WebSocket, Message>,
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

    async fn on_transmit(
        &mut self,
        tx: &mut futures::stream::SplitSink<WebSocket, Message>,
        t: ServerTransmit,
    ) -> Step {
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
            ServerTransmit::Close { code, .. } => Step::Close(Some(code)),
        }
    }
}

/// The router of the stream server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/streams", get(streams))
        .route("/{ver}/schema/{id}", get(schema))
        .route("/{ver}/stream/{id}", get(stream))
        .route("/{ver}/renew/{id}", post(renew))
        .with_state(state)
}

/// Builds the token key from the configured secret, the environment, or randomness (with a warning).
pub fn token_key(cfg: &Config) -> TokenKey {
    if let Ok(s) = std::env::var("X402_SERVER_SECRET")
        && !s.is_empty()
    {
        return TokenKey::new(s.as_bytes());
    }
    if let Some(s) = &cfg.secret {
        return TokenKey::new(s.as_bytes());
    }
    let mut k = [0u8; 32];
    let _ = getrandom::fill(&mut k);
    tracing::warn!(
        "no server secret configured: using a random one; tokens will not survive a restart"
    );
    TokenKey::new(&k)
}
