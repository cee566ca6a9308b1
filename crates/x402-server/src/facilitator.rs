//! Payment verification and settlement: the `Facilitator` trait, the embedded
//! facilitator, the HTTP client of the standard facilitator API, and the
//! router that serves that API.

use std::collections::HashSet;
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
    Amount, FacilitatorRequest, Nonce, SettleResponse, SupportedKind, SupportedResponse,
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
    nonces: Mutex<HashSet<Nonce>>,
    ledger: Mutex<Vec<LedgerEntry>>,
}

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
            nonces: Mutex::new(HashSet::new()),
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
                    .contains(&nonce)
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
        // Claim the nonce atomically: two settles of one payload cannot both succeed.
        if !self
            .nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(evm.authorization.nonce)
        {
            return Ok(fail(Some(NONCE_USED.into()), v.payer));
        }
        let amount = evm.authorization.value;
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LedgerEntry {
                payer: evm.authorization.from.to_string(),
                pay_to: evm.authorization.to.to_string(),
                amount,
                network: network.clone(),
                nonce: evm.authorization.nonce,
            });
        Ok(SettleResponse {
            success: true,
            error_reason: None,
            payer: v.payer,
            // Not on chain: no transaction hash exists.
            transaction: String::new(),
            network,
            amount: Some(amount),
        })
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

/// A client of the standard x402 facilitator HTTP API.
#[derive(Debug, Clone)]
pub struct HttpFacilitator {
    base: String,
    client: reqwest::Client,
}

impl HttpFacilitator {
    /// With bounded connect and request timeouts.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, FacilitatorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| FacilitatorError::Transport(e.to_string()))?;
        Ok(HttpFacilitator {
            base: base_url.trim_end_matches('/').to_string(),
            client,
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: &FacilitatorRequest,
    ) -> Result<T, FacilitatorError> {
        let request = self.client.post(format!("{}{path}", self.base)).json(req);
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
        let transport = |e: reqwest::Error| FacilitatorError::Transport(e.to_string());
        let resp = request.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        Ok((status, body.to_vec()))
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
            Self::exchange(self.client.get(format!("{}/supported", self.base))).await?;
        serde_json::from_slice(&body).map_err(|e| FacilitatorError::BadAnswer {
            status,
            message: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        format!("remote x402 facilitator at {}", self.base)
    }
}

fn bad_request(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": "invalid_request", "message": msg})),
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
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
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
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
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
