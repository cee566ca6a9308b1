//! Errors of the server crate and the HTTP error answers.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A configuration problem.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config: {0}")]
    Io(String),
    /// The TOML did not parse.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is invalid.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The server's one error type: building and running it. (Refused HTTP
/// requests are answers, not errors: [`ApiError`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Could not bind or serve.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The shared store could not be reached or answered wrongly.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The facilitator could not be built (a remote one's URL, an EVM one's chain).
    #[error("facilitator: {0}")]
    Facilitator(#[from] x402_facilitator::FacilitatorError),
    /// The facilitator API could not be mounted (its key, its allowed hosts).
    #[error("facilitator API: {0}")]
    FacilitatorApi(#[from] x402_facilitator::ServeError),
}

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A refused HTTP request: status and `{"error", "message", "accepts"?}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Code.
    pub code: x402_types::ErrorCode,
    /// Text.
    pub message: String,
    /// Fresh requirements (402).
    pub accepts: Option<Vec<Value>>,
    /// x402 version of `accepts`.
    pub x402_version: Option<u8>,
    /// `PAYMENT-REQUIRED` header (v2 402).
    pub payment_required: Option<String>,
    /// Seconds before a retry (`Retry-After` header and `retryAfter` field).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A plain error.
    pub fn new(
        status: StatusCode,
        code: x402_types::ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            accepts: None,
            x402_version: None,
            payment_required: None,
            retry_after: None,
        }
    }
}

/// 404 `unknown_stream`: no such stream, version or route.
pub(crate) fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        x402_types::ErrorCode::UnknownStream,
        format!("no such {what}"),
    )
}

/// 400 `bad_request`.
pub(crate) fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        x402_types::ErrorCode::BadRequest,
        msg,
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = x402_types::ErrorBody {
            error: self.code,
            message: self.message,
            accepts: self.accepts,
            x402_version: self.x402_version,
            retry_after: self.retry_after,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(h) = self.payment_required
            && let Ok(v) = HeaderValue::from_str(&h)
        {
            resp.headers_mut()
                .insert(x402_types::x402::headers::PAYMENT_REQUIRED, v);
        }
        resp
    }
}
