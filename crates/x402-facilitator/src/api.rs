//! The standard facilitator API (`POST /verify`, `POST /settle`,
//! `GET /supported`) served from any [`Facilitator`], and the guard in front
//! of it.
//!
//! Settling spends the relayer's gas and moves money, so the API refuses
//! what a web page could send: a `POST` must be `Content-Type:
//! application/json` (415; a page's "simple" `text/plain` POST needs no
//! preflight), a request carrying an `Origin` is refused unless that origin
//! is allowed (403), and the `Host` must name the listen address or an
//! allowed host (421), which stops DNS rebinding. With a bearer key, a
//! missing or wrong key is 401; with a rate limit, excess requests are 429.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use x402_types::{ErrorCode, FacilitatorRequest};

use crate::{Facilitator, FacilitatorError, ServeError};

/// Largest facilitator request body accepted (bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Shortest bearer key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 32;

fn api_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// Parses a facilitator body and answers with `call`'s result: 400 for a bad body,
/// 502 when the facilitator itself failed.
async fn handle<T: serde::Serialize, F>(f: Arc<dyn Facilitator>, body: Bytes, call: F) -> Response
where
    F: for<'a> FnOnce(
        &'a dyn Facilitator,
        &'a FacilitatorRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, FacilitatorError>> + Send + 'a>,
    >,
{
    match FacilitatorRequest::from_json(&body) {
        Ok(req) => match call(f.as_ref(), &req).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => api_error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::FacilitatorUnavailable,
                e.to_string(),
            ),
        },
        Err(e) => api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.to_string(),
        ),
    }
}

async fn verify_handler(State(f): State<Arc<dyn Facilitator>>, body: Bytes) -> Response {
    handle(f, body, |f, r| f.verify(r)).await
}

async fn settle_handler(State(f): State<Arc<dyn Facilitator>>, body: Bytes) -> Response {
    handle(f, body, |f, r| f.settle(r)).await
}

async fn supported_handler(State(f): State<Arc<dyn Facilitator>>) -> Response {
    match f.supported().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => api_error(
            StatusCode::BAD_GATEWAY,
            ErrorCode::FacilitatorUnavailable,
            e.to_string(),
        ),
    }
}

/// Who may call the facilitator API, and how often. Every router it builds
/// refuses cross-site requests (see the module docs); a bearer key and a rate
/// limit are optional.
///
/// ```
/// use std::sync::Arc;
/// use x402_facilitator::{EmbeddedFacilitator, FacilitatorApi};
///
/// let api = FacilitatorApi::new()
///     .bearer_key("a-key-of-at-least-thirty-two-bytes!!")
///     .requests_per_second(50)
///     .allow_host("facilitator.example.com");
/// let router = api.router(Arc::new(EmbeddedFacilitator::default()), "127.0.0.1:4022".parse()?)?;
/// # let _ = router;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct FacilitatorApi {
    key: Option<String>,
    requests_per_second: Option<u32>,
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl std::fmt::Debug for FacilitatorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilitatorApi")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("requests_per_second", &self.requests_per_second)
            .field("hosts", &self.hosts)
            .field("origins", &self.origins)
            .finish()
    }
}

impl FacilitatorApi {
    /// No key, no rate limit, no other host or origin than the listen address.
    pub fn new() -> Self {
        Self::default()
    }

    /// Callers must send `Authorization: Bearer <key>` (at least 32 bytes).
    pub fn bearer_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// At most `n` requests per second, all callers together.
    pub fn requests_per_second(mut self, n: u32) -> Self {
        self.requests_per_second = Some(n.max(1));
        self
    }

    /// Also accept this `Host` (a name behind a proxy, say): `name` accepts
    /// any port, `name:port` only that one.
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Accept requests from pages of this origin (`https://app.example.com`).
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// The API for a server listening on `listen`, guarded.
    pub fn router(
        &self,
        f: Arc<dyn Facilitator>,
        listen: SocketAddr,
    ) -> Result<Router, ServeError> {
        let key_digest = match &self.key {
            Some(k) if k.len() < MIN_KEY_BYTES => return Err(ServeError::KeyTooShort),
            Some(k) => Some(BearerKey::new(k)),
            None => None,
        };
        let hosts = self
            .hosts
            .iter()
            .map(|h| parse_allowed_host(h))
            .collect::<Result<_, _>>()?;
        let origins = self
            .origins
            .iter()
            .map(|o| parse_allowed_origin(o))
            .collect::<Result<_, _>>()?;
        Ok(routes(
            f,
            Guard {
                listen: listen.ip(),
                hosts,
                origins,
                key_digest,
                per_second: self.requests_per_second,
                window: Mutex::new((0, 0)),
            },
        ))
    }

    /// Serves the API on `listener` until the task is dropped.
    pub async fn serve(
        &self,
        listener: TcpListener,
        f: Arc<dyn Facilitator>,
    ) -> Result<(), ServeError> {
        let router = self.router(f, listener.local_addr()?)?;
        axum::serve(listener, router).await?;
        Ok(())
    }
}

/// An allowed `Host`: a lowercase name and, if given, the only port.
#[derive(Debug)]
struct AllowedHost {
    name: String,
    port: Option<u16>,
}

fn parse_allowed_host(h: &str) -> Result<AllowedHost, ServeError> {
    let bad = |reason| ServeError::InvalidAllowed {
        what: "host",
        value: h.to_string(),
        reason,
    };
    if h.is_empty() || h.contains(['/', '@', ' ', '?', '#']) {
        return Err(bad(
            "give a host name, with or without a port, and nothing else",
        ));
    }
    let (name, port) = split_host(h).ok_or_else(|| bad("not a host[:port]"))?;
    Ok(AllowedHost { name, port })
}

fn parse_allowed_origin(o: &str) -> Result<String, ServeError> {
    let bad = |reason| ServeError::InvalidAllowed {
        what: "origin",
        value: o.to_string(),
        reason,
    };
    let origin = o.trim_end_matches('/').to_ascii_lowercase();
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| bad("an origin is http:// or https:// and a host"))?;
    if authority.is_empty() || authority.contains(['/', '@', ' ', '?', '#']) {
        return Err(bad("an origin has no path, user or query"));
    }
    Ok(origin)
}

/// Splits `host[:port]` (IPv6 literals in brackets) into a lowercase name
/// without a trailing dot, and its port.
fn split_host(h: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (ip, port)
    } else {
        match h.rsplit_once(':') {
            Some((name, p)) => (name, Some(p.parse().ok()?)),
            None => (h, None),
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some((name, port))
}

/// The checks in front of the facilitator API.
struct Guard {
    listen: IpAddr,
    hosts: Vec<AllowedHost>,
    origins: Vec<String>,
    key_digest: Option<BearerKey>,
    per_second: Option<u32>,
    window: Mutex<(u64, u32)>,
}

impl Guard {
    /// Whether `Host` names this server: an IP literal of the listen address
    /// (any IP when listening on all of them; any loopback one on loopback),
    /// `localhost` on loopback, or an allowed host. A rebinding page's
    /// requests carry the attacker's name here, never an IP literal.
    fn host_allowed(&self, req: &axum::extract::Request) -> bool {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let Some((name, port)) = host.and_then(split_host) else {
            return false;
        };
        let ip = &self.listen;
        let by_address = match name.parse::<IpAddr>() {
            Ok(given) => {
                ip.is_unspecified() || given == *ip || (ip.is_loopback() && given.is_loopback())
            }
            Err(_) => name == "localhost" && (ip.is_loopback() || ip.is_unspecified()),
        };
        by_address
            || self
                .hosts
                .iter()
                .any(|a| a.name == name && (a.port.is_none() || a.port == port))
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN) {
            None => true,
            Some(v) => v.to_str().is_ok_and(|o| {
                let o = o.trim_end_matches('/').to_ascii_lowercase();
                self.origins.contains(&o)
            }),
        }
    }

    fn json_body(headers: &HeaderMap) -> bool {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.key_digest.as_ref().is_none_or(|k| k.admits(headers))
    }

    fn admit(&self) -> bool {
        let Some(per_second) = self.per_second else {
            return true;
        };
        let sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 != sec {
            *w = (sec, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 <= per_second
    }
}

/// The three routes behind `guard`, with bounded bodies.
fn routes(f: Arc<dyn Facilitator>, guard: Guard) -> Router {
    Router::new()
        .route("/verify", post(verify_handler))
        .route("/settle", post(settle_handler))
        .route("/supported", get(supported_handler))
        .with_state(f)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard_layer,
        ))
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// A bearer key, kept as its digest: [`admits`](Self::admits) compares the
/// digest of `Authorization: Bearer <given>` with it in constant time, so
/// the key's length and prefix leak nothing. The facilitator API and the
/// stream server's `/metrics` both check their keys with it.
///
/// ```
/// use axum::http::HeaderMap;
/// let key = x402_facilitator::BearerKey::new("a-scrape-key-of-some-length");
/// let mut h = HeaderMap::new();
/// assert!(!key.admits(&h));
/// h.insert("authorization", "Bearer a-scrape-key-of-some-length".parse().unwrap());
/// assert!(key.admits(&h));
/// ```
#[derive(Clone)]
pub struct BearerKey([u8; 32]);

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerKey(<redacted>)")
    }
}

impl BearerKey {
    /// The key.
    pub fn new(key: &str) -> Self {
        BearerKey(digest(key.as_bytes()))
    }

    /// Whether `headers` carry `Authorization: Bearer <this key>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        digest(given.as_bytes())
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

async fn guard_layer(
    State(g): State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !g.host_allowed(&req) {
        tracing::debug!(host = ?req.headers().get(header::HOST), "facilitator API: foreign Host refused");
        return api_error(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::BadRequest,
            "the Host header does not name this facilitator (allow it with --allow-host)",
        );
    }
    if !g.origin_allowed(req.headers()) {
        tracing::debug!(origin = ?req.headers().get(header::ORIGIN), "facilitator API: cross-site request refused");
        return api_error(
            StatusCode::FORBIDDEN,
            ErrorCode::BadRequest,
            "requests from web pages are refused unless their origin is allowed (--allow-origin)",
        );
    }
    if req.method() == Method::POST && !Guard::json_body(req.headers()) {
        return api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            "the body must be sent as Content-Type: application/json",
        );
    }
    if !g.authorized(req.headers()) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a bearer key is required (Authorization: Bearer <key>)",
        );
    }
    if !g.admit() {
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "rate limit reached; retry in a second",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(1u32));
        return r;
    }
    next.run(req).await
}

/// The facilitator API for a server listening on `listen`, without a key:
/// cross-site requests refused, bodies bounded. Fit for loopback only.
pub fn facilitator_router(f: Arc<dyn Facilitator>, listen: SocketAddr) -> Router {
    routes(
        f,
        Guard {
            listen: listen.ip(),
            hosts: Vec::new(),
            origins: Vec::new(),
            key_digest: None,
            per_second: None,
            window: Mutex::new((0, 0)),
        },
    )
}

/// The facilitator API behind a bearer key (at least 32 bytes) and a global
/// rate limit, cross-site requests refused, bodies bounded: what a stream
/// server or the standalone `atomicstream facilitator` exposes.
pub fn guarded_router(
    f: Arc<dyn Facilitator>,
    key: &str,
    requests_per_second: u32,
    listen: SocketAddr,
) -> Result<Router, ServeError> {
    FacilitatorApi::new()
        .bearer_key(key)
        .requests_per_second(requests_per_second)
        .router(f, listen)
}

/// Serves the facilitator API without a key on `listener` (loopback only:
/// anyone who can reach it can settle).
pub async fn serve_facilitator(
    listener: TcpListener,
    f: Arc<dyn Facilitator>,
) -> Result<(), ServeError> {
    FacilitatorApi::new().serve(listener, f).await
}

/// Serves the facilitator API behind a bearer key and a rate limit.
pub async fn serve_facilitator_guarded(
    listener: TcpListener,
    f: Arc<dyn Facilitator>,
    key: &str,
    requests_per_second: u32,
) -> Result<(), ServeError> {
    FacilitatorApi::new()
        .bearer_key(key)
        .requests_per_second(requests_per_second)
        .serve(listener, f)
        .await
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
