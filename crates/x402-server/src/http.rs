//! The stream server's HTTP routes: catalog, schema (402), renew, the
//! socket upgrade, health and metrics. I/O only: payments go through
//! [`crate::payments`], sockets through [`crate::socket`].

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use x402_types::{Catalog, CatalogEntry, ErrorCode, PathVersion, Pricing, Schema, StreamInfo};

use crate::edge::{client_ip, cors};
use crate::error::{ApiError, bad_request, not_found};
use crate::payments::payment_header;
use crate::socket::Connection;
use crate::state::{AppState, RemoteAddr, now};
use crate::token::Claims;

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    t: Option<String>,
    from: Option<String>,
}

fn with_header(mut resp: Response, name: &'static str, value: Option<String>) -> Response {
    if let Some(v) = value
        && let Ok(v) = HeaderValue::from_str(&v)
    {
        resp.headers_mut().insert(name, v);
    }
    resp
}

async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(key) = &s.cfg.http.metrics_key
        && !x402_facilitator::BearerKey::new(key).admits(&headers)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer realm=\"metrics\"")],
            "metrics need Authorization: Bearer <metrics_key>\n",
        )
            .into_response();
    }
    let st = s.endpoint_stats();
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    s.metrics.sessions.set(gauge(st.sessions));
    s.metrics.settling.set(gauge(st.settling));
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
        "sockets": s.sockets_open(),
        "facilitator": s.facilitator.describe(),
    }))
    .into_response()
}

/// Readiness: 503 while the store, the facilitator or a stream's source is
/// unavailable (a load balancer stops sending buyers here). `/healthz` is
/// liveness only: the process answers.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    // One probe at a time, its answer reused for a second: a flood of
    // /readyz asks Redis and the facilitator at most once a second.
    let mut cached = s.readiness.lock().await;
    let fresh = cached.as_ref().filter(|(at, _, _)| {
        crate::state::now().duration_since(*at) < std::time::Duration::from_secs(1)
    });
    let (status, body) = match fresh {
        Some((_, status, body)) => (*status, body.clone()),
        None => {
            let (status, body) = probe_readiness(&s).await;
            *cached = Some((crate::state::now(), status, body.clone()));
            (status, body)
        }
    };
    (status, axum::Json(body)).into_response()
}

/// Asks the store, the facilitator and every source once.
async fn probe_readiness(s: &AppState) -> (StatusCode, serde_json::Value) {
    let limit = std::time::Duration::from_secs(s.cfg.limits.facilitator_timeout_secs.clamp(1, 5));
    let (store, facilitator) = tokio::join!(
        tokio::time::timeout(limit, s.store.ping()),
        tokio::time::timeout(limit, s.facilitator.supported()),
    );
    let mut problems = Vec::new();
    match store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            s.metrics.store_failed("readiness ping", &e);
            problems.push(format!("store: {e}"));
        }
        Err(_) => {
            s.metrics
                .store_failed("readiness ping", &"no answer in time");
            problems.push(format!("store: no answer within {limit:?}"));
        }
    }
    match facilitator {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("facilitator: {e}")),
        Err(_) => problems.push(format!("facilitator: no answer within {limit:?}")),
    }
    let mut ids: Vec<&String> = s.streams.keys().collect();
    ids.sort();
    for id in ids {
        if let crate::hub::SourceState::Down(reason) = s.streams[id].hub.source_state() {
            problems.push(format!("stream {id}: {reason}"));
        }
    }
    let (status, word) = if problems.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (
        status,
        serde_json::json!({"status": word, "problems": problems}),
    )
}

async fn streams(State(s): State<Arc<AppState>>) -> Response {
    let mut streams: Vec<CatalogEntry> = s
        .streams
        .values()
        .map(|e| CatalogEntry {
            id: e.cfg.id.clone(),
            title: e.cfg.title.clone(),
            description: e.cfg.description.clone(),
            price_per_minute: e.terms.per_minute.to_display(e.terms.decimals),
            price_per_slice: e.terms.per_slice.to_display(e.terms.decimals),
            slice_seconds: e.cfg.slice_seconds,
            currency: e.terms.symbol.clone(),
            network: e.terms.network.caip2(),
            asset: e.terms.asset.to_string(),
        })
        .collect();
    streams.sort_by(|a, b| a.id.cmp(&b.id));
    axum::Json(Catalog { streams }).into_response()
}

async fn schema(
    State(s): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path((ver, id))) = path else {
        return not_found("stream").into_response();
    };
    let (v, sold) = match s.entry(&ver, &id, &headers).and_then(|(v, e)| {
        e.on_sale()?;
        Ok((v, e))
    }) {
        Ok(x) => x,
        Err(err) => return err.into_response(),
    };
    let e = &sold;
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
    let ws = x402_types::version::stream_url(&e.ws, v, &e.cfg.id, &token, None)
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
    // The schema URL only quotes. A client that paid it (the official SDKs'
    // first try) is told where payments go.
    let error = if headers.contains_key(v.payment_header()) {
        format!(
            "this URL only quotes: send the {} header to POST {}/{}/renew/{}?t=<the token of websocketEndpoint>",
            v.payment_header(),
            e.http,
            v.segment(),
            e.cfg.id
        )
    } else {
        format!("{} header is required", v.payment_header())
    };
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
        let (v, sold) = s.entry(&ver, &id, &headers)?;
        let e = &sold;
        let quote = s.quote(v, e, q.t.as_deref())?;
        let header = payment_header(v, &headers)?.ok_or_else(|| {
            s.payment_error(
                v,
                e,
                ErrorCode::PaymentRequired,
                format!("{} header is required", v.payment_header()),
            )
        })?;
        s.admit_payment(client_ip(&s.cfg.http, addr, &headers))?;
        let payload = s.decode_payment(v, e, header)?;
        // A channel's cooperative close (the official client GETs the renew URL).
        if crate::channels::is_refund(&payload) {
            let (body, receipt) = s.channel_refund(v, e, &payload).await?;
            return Ok((v, axum::Json(body).into_response(), Some(receipt)));
        }
        let c = s.pay(v, e, &quote, payload).await?;
        Ok::<_, ApiError>((v, axum::Json(c.response).into_response(), c.settlement))
    }
    .await;
    match result {
        Ok((v, body, receipt)) => with_header(body, v.payment_response_header(), receipt),
        Err(e) => e.into_response(),
    }
}

pub(crate) struct IpGuard {
    state: Arc<AppState>,
    ip: IpAddr,
}

impl IpGuard {
    /// The client's address (payments on its socket count against it too).
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
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
        self.state.metrics.sockets.dec();
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
    s.metrics.sockets.inc();
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
        let (v, sold) = s.entry(&ver, &id, &headers)?;
        let e = &sold;
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
        let ip = client_ip(&s.cfg.http, addr, &headers);
        let guard = ip_guard(&s, ip)?;
        let (settlement, channel) = match header {
            Some(h) => {
                s.admit_payment(ip)?;
                let payload = s.decode_payment(v, e, h)?;
                let channel = crate::in_band::channel_of(&payload);
                (s.pay(v, e, &quote, payload).await?.settlement, channel)
            }
            None => (None, None),
        };
        // Only a paid session opens; the session is connected once the 101 is out.
        // (A payment just decided has already brought the store's session here.)
        if header.is_none() {
            s.refresh_for_connect(&quote).await?;
        }
        s.core()
            .check_connect(now(), &quote)
            .map_err(|r| s.refusal(v, e, r))?;
        Ok::<_, ApiError>((
            v,
            ws,
            settlement,
            quote,
            from,
            guard,
            e.hub.clone(),
            channel,
        ))
    }
    .await;
    let (v, ws, settlement, quote, from, guard, hub, channel) = match result {
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
        // Frames published together are written together: one write per
        // `write_batch_bytes` of a burst, and one at its end.
        .write_buffer_size(s.cfg.limits.write_batch_bytes)
        // Bounded: a slow reader cannot make us buffer without limit.
        .max_write_buffer_size(crate::Limits::MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            Connection::open(state, socket, quote, from, hub, guard, channel).await;
        });
    with_header(resp, v.payment_response_header(), settlement)
}

/// The browser page: the catalog, and a stream's live events for a token
/// that has paid time. One static file; it reads `/streams` and opens the
/// tokenized WebSocket itself.
const PAGE: &str = include_str!("../assets/index.html");

async fn page() -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-cache"),
            // The page loads nothing from elsewhere; it talks to this origin only.
            (
                "content-security-policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// The router of the stream server. `/metrics` is here unless
/// `[http] metrics_listen` gives it its own listener ([`metrics_router`]).
pub fn router(state: Arc<AppState>) -> Router {
    // What a browser page on another origin may call: the catalog and the
    // three x402 endpoints. Health, readiness and metrics get no CORS.
    let mut sale = Router::new()
        .route("/streams", get(streams))
        .route("/{ver}/schema/{id}", get(schema))
        .route("/{ver}/stream/{id}", get(stream))
        .route("/{ver}/renew/{id}", post(renew).get(renew))
        .with_state(state.clone());
    if let Some(layer) = cors(&state.cfg.http) {
        sale = sale.layer(layer);
    }
    let mut r = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.cfg.http.metrics_listen.is_none() {
        r = r.route("/metrics", get(metrics));
    }
    r.fallback(|| async { not_found("route").into_response() })
        .with_state(state)
        .merge(sale)
}

/// `/metrics`, `/healthz` and `/readyz` alone, for `[http] metrics_listen`.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { not_found("route").into_response() })
        .with_state(state)
}
