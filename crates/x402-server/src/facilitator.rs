//! Payment verification and settlement: the `Facilitator` trait, the embedded
//! facilitator, the HTTP client of the standard facilitator API, and the
//! router that serves that API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use x402_payer::{Clock, SystemClock, verify_exact};
use x402_types::{
    Amount, ErrorCode, FacilitatorRequest, Nonce, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse, network::EVM_NETWORKS,
};

/// A facilitator call that produced no usable answer (transport, timeout, garbage).
/// A business refusal is not an error: it is `isValid: false` / `success: false`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FacilitatorError {
    /// Network failure or timeout.
    #[error("facilitator unreachable: {0}")]
    Transport(String),
    /// The facilitator cannot act now and sent nothing (its relayer has no
    /// gas, its node is syncing): nothing moved, try again later.
    #[error("facilitator unavailable: {0}")]
    Unavailable(String),
    /// An answer that is neither a verify/settle response nor a recognisable refusal.
    #[error("facilitator answered {status}: {message}")]
    BadAnswer {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
    },
}

/// Verifies and settles x402 payments.
#[async_trait]
pub trait Facilitator: Send + Sync {
    /// `POST /verify`.
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError>;
    /// `POST /settle`.
    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError>;
    /// `GET /supported`.
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError>;
    /// A label for logs and `/healthz` (`"embedded (not settled on chain)"`).
    fn describe(&self) -> String;

    /// Verifies, then settles if valid: what a server does for each payment.
    /// A facilitator that verifies inside `settle` anyway may do it once.
    async fn verify_and_settle(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(VerifyResponse, Option<SettleResponse>), FacilitatorError> {
        let v = self.verify(req).await?;
        if !v.is_valid {
            return Ok((v, None));
        }
        Ok((v, Some(self.settle(req).await?)))
    }
}

/// One settlement recorded by the embedded facilitator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Payer.
    pub payer: String,
    /// Recipient.
    pub pay_to: String,
    /// Amount.
    pub amount: Amount,
    /// Network (CAIP-2).
    pub network: String,
    /// Nonce.
    pub nonce: Nonce,
}

/// Verifies with `x402-payer`'s verifier, keeps a nonce store, and records
/// settlements in an in-process ledger. **Nothing is settled on chain.**
pub struct EmbeddedFacilitator {
    clock: Arc<dyn Clock>,
    /// Settled nonces: the payload's signature, the answer given, and when the
    /// record may go (validBefore passed: the authorization is dead anyway).
    nonces: Mutex<HashMap<Nonce, Settled>>,
    ledger: Mutex<Vec<LedgerEntry>>,
}

#[derive(Clone)]
struct Settled {
    signature: x402_types::B65,
    answer: SettleResponse,
    valid_before: u64,
}

/// Most ledger entries kept (oldest dropped first).
const LEDGER_CAP: usize = 100_000;

impl Default for EmbeddedFacilitator {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for EmbeddedFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedFacilitator")
            .field("settled", &self.ledger().len())
            .finish()
    }
}

/// The reason string of a replayed nonce.
pub const NONCE_USED: &str = "invalid_exact_evm_payload_authorization_nonce_used";

impl EmbeddedFacilitator {
    /// With a clock.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        EmbeddedFacilitator {
            clock,
            nonces: Mutex::new(HashMap::new()),
            ledger: Mutex::new(Vec::new()),
        }
    }

    /// The settlements so far.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn check(&self, req: &FacilitatorRequest) -> VerifyResponse {
        let invalid = |reason: &str, msg: String, payer: Option<String>| VerifyResponse {
            is_valid: false,
            invalid_reason: Some(reason.into()),
            invalid_message: Some(msg),
            payer,
        };
        match verify_exact(
            &req.payment_payload,
            &req.payment_requirements,
            self.clock.unix_now(),
        ) {
            Ok(from) => {
                let nonce = req
                    .payment_payload
                    .exact_evm()
                    .map(|e| e.authorization.nonce)
                    .unwrap_or_default();
                if self
                    .nonces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&nonce)
                {
                    return invalid(
                        NONCE_USED,
                        "nonce already used".into(),
                        Some(from.to_string()),
                    );
                }
                VerifyResponse {
                    is_valid: true,
                    invalid_reason: None,
                    invalid_message: None,
                    payer: Some(from.to_string()),
                }
            }
            Err(f) => invalid(f.reason(), f.to_string(), None),
        }
    }
}

#[async_trait]
impl Facilitator for EmbeddedFacilitator {
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        Ok(self.check(req))
    }

    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        let network = req.payment_requirements.requirement().network.caip2();
        // The same payload again gets the answer it got (idempotent, as the
        // official v2 facilitator answers a retried settlement).
        if let Some(evm) = req.payment_payload.exact_evm() {
            let nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(done) = nonces.get(&evm.authorization.nonce)
                && done.signature == evm.signature
                && done.answer.payer.as_deref() == Some(evm.authorization.from.to_string().as_str())
            {
                return Ok(done.answer.clone());
            }
        }
        let v = self.check(req);
        let fail = |reason: Option<String>, payer: Option<String>| SettleResponse {
            success: false,
            error_reason: reason,
            payer,
            transaction: String::new(),
            network: network.clone(),
            amount: None,
        };
        if !v.is_valid {
            return Ok(fail(v.invalid_reason, v.payer));
        }
        let Some(evm) = req.payment_payload.exact_evm() else {
            return Ok(fail(Some("invalid_payload".into()), None));
        };
        let amount = evm.authorization.value;
        let answer = SettleResponse {
            success: true,
            error_reason: None,
            payer: v.payer.clone(),
            // Not on chain: no transaction hash exists.
            transaction: String::new(),
            network: network.clone(),
            amount: Some(amount),
        };
        {
            // Claim the nonce atomically: two settles of one nonce cannot both succeed.
            let now = self.clock.unix_now();
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            if nonces.contains_key(&evm.authorization.nonce) {
                return Ok(fail(Some(NONCE_USED.into()), v.payer));
            }
            // Bounded: records of authorizations past their validBefore can go
            // (the verifier refuses those payloads anyway).
            if nonces.len() >= 1024 && nonces.len().is_power_of_two() {
                nonces.retain(|_, s| s.valid_before.saturating_add(60) > now);
            }
            nonces.insert(
                evm.authorization.nonce,
                Settled {
                    signature: evm.signature,
                    answer: answer.clone(),
                    valid_before: evm.authorization.valid_before.to_u64().unwrap_or(u64::MAX),
                },
            );
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if ledger.len() >= LEDGER_CAP {
            ledger.remove(0);
        }
        ledger.push(LedgerEntry {
            payer: evm.authorization.from.to_string(),
            pay_to: evm.authorization.to.to_string(),
            amount,
            network: network.clone(),
            nonce: evm.authorization.nonce,
        });
        Ok(answer)
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = Vec::new();
        for (name, id) in EVM_NETWORKS {
            kinds.push(SupportedKind {
                x402_version: 1,
                scheme: "exact".into(),
                network: (*name).into(),
                extra: None,
            });
            kinds.push(SupportedKind {
                x402_version: 2,
                scheme: "exact".into(),
                network: format!("eip155:{id}"),
                extra: None,
            });
        }
        Ok(SupportedResponse {
            kinds,
            extensions: Some(Vec::new()),
            signers: None,
        })
    }

    fn describe(&self) -> String {
        "embedded (verified locally, NOT settled on chain)".into()
    }

    async fn verify_and_settle(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(VerifyResponse, Option<SettleResponse>), FacilitatorError> {
        // `settle` runs every check of `verify`; do them once.
        let s = self.settle(req).await?;
        let v = VerifyResponse {
            is_valid: s.success,
            invalid_reason: s.error_reason.clone(),
            invalid_message: None,
            payer: s.payer.clone(),
        };
        Ok((v, s.success.then_some(s)))
    }
}

/// Largest facilitator answer read (bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A client of the standard x402 facilitator HTTP API.
#[derive(Clone)]
pub struct HttpFacilitator {
    base: String,
    client: reqwest::Client,
    bearer: Option<String>,
}

impl std::fmt::Debug for HttpFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl HttpFacilitator {
    /// With bounded connect and request timeouts.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, FacilitatorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            // A facilitator that redirects is misconfigured or hostile: the
            // payment must not travel anywhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FacilitatorError::Transport(e.to_string()))?;
        Ok(HttpFacilitator {
            base: base_url.trim_end_matches('/').to_string(),
            client,
            bearer: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` with every call.
    pub fn with_bearer(mut self, key: impl Into<String>) -> Self {
        self.bearer = Some(key.into());
        self
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: &FacilitatorRequest,
    ) -> Result<T, FacilitatorError> {
        let request = self
            .auth(self.client.post(format!("{}{path}", self.base)))
            .json(req);
        let (status, body) = Self::exchange(request).await?;
        // Refusals come as 200 with isValid/success false (reference) or as 4xx with the same body (others).
        match serde_json::from_slice::<T>(&body) {
            Ok(v) if status < 500 => Ok(v),
            Ok(_) => Err(FacilitatorError::BadAnswer {
                status,
                message: "server error".into(),
            }),
            Err(e) => Err(FacilitatorError::BadAnswer {
                status,
                message: format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            }),
        }
    }

    /// Sends a request and reads its status and body; no answer is a transport error.
    async fn exchange(
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), FacilitatorError> {
        let transport =
            |e: reqwest::Error| FacilitatorError::Transport(e.without_url().to_string());
        let mut resp = request.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        // Read at most MAX_ANSWER_BYTES, chunk by chunk: an endless body is refused early.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(FacilitatorError::BadAnswer {
                    status,
                    message: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

#[async_trait]
impl Facilitator for HttpFacilitator {
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        self.post("/verify", req).await
    }

    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        self.post("/settle", req).await
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let (status, body) =
            Self::exchange(self.auth(self.client.get(format!("{}/supported", self.base)))).await?;
        serde_json::from_slice(&body).map_err(|e| FacilitatorError::BadAnswer {
            status,
            message: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        // The URL may carry credentials: only its host is shown.
        let authority = self.base.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        let host = authority.rsplit('@').next().unwrap_or("?");
        format!("remote x402 facilitator ({host})")
    }
}

fn bad_request(msg: String) -> Response {
    api_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg)
}

fn api_error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
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
        Err(e) => bad_request(e.to_string()),
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

/// The standard facilitator API (`POST /verify`, `POST /settle`, `GET /supported`)
/// served from any [`Facilitator`]; business refusals are 200 with `false`, as the reference does.
pub fn facilitator_router(f: Arc<dyn Facilitator>) -> Router {
    Router::new()
        .route("/verify", post(verify_handler))
        .route("/settle", post(settle_handler))
        .route("/supported", get(supported_handler))
        .with_state(f)
}

/// Largest facilitator request body accepted (bytes).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Bearer key and rate limit in front of the facilitator API.
struct Guard {
    key_digest: [u8; 32],
    per_second: u32,
    window: Mutex<(u64, u32)>,
}

impl Guard {
    fn authorized(&self, headers: &axum::http::HeaderMap) -> bool {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compare digests in constant time: the key's length and prefix leak nothing.
        let d = digest(given.as_bytes());
        d.iter()
            .zip(self.key_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn admit(&self) -> bool {
        let sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 != sec {
            *w = (sec, 0);
        }
        w.1 += 1;
        w.1 <= self.per_second
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

async fn guard_layer(
    State(g): State<Arc<Guard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !g.authorized(req.headers()) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a bearer key is required (Authorization: Bearer <key>)".into(),
        );
    }
    if !g.admit() {
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "rate limit reached; retry in a second".into(),
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(1u32),
        );
        return r;
    }
    next.run(req).await
}

/// The facilitator API behind a bearer key (at least 32 bytes) and a global
/// rate limit, with bounded request bodies: what a stream server or the
/// standalone `atomicstream facilitator` exposes.
pub fn guarded_router(
    f: Arc<dyn Facilitator>,
    key: &str,
    requests_per_second: u32,
) -> Result<Router, crate::ConfigError> {
    if key.len() < 32 {
        return Err(crate::ConfigError::Invalid(
            "the facilitator API key must be at least 32 bytes".into(),
        ));
    }
    let guard = Arc::new(Guard {
        key_digest: digest(key.as_bytes()),
        per_second: requests_per_second.max(1),
        window: Mutex::new((0, 0)),
    });
    Ok(facilitator_router(f)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn_with_state(guard, guard_layer)))
}
