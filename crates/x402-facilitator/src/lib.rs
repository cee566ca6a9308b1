#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod embedded;
mod embedded_batch;
mod error;
mod http;
mod verdict;

use async_trait::async_trait;
use x402_types::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};

pub use api::{
    BearerKey, FacilitatorApi, MAX_REQUEST_BYTES, MIN_KEY_BYTES, facilitator_router,
    guarded_router, serve_facilitator, serve_facilitator_guarded,
};
pub use embedded::{EmbeddedFacilitator, LedgerEntry};
pub use embedded_batch::{EMBEDDED_AUTHORIZER_KEY, EMBEDDED_RECEIVER_AUTHORIZER};
pub use error::{Cause, FacilitatorError, Result, ServeError, TransportError, with_causes};
pub use http::{HttpFacilitator, MAX_ANSWER_BYTES};
pub use verdict::{SettleVerdict, VerifyVerdict, classify_settle, classify_verify, settle_attempt};
/// The reason vocabulary the verdicts speak (re-exported from `x402-types`).
pub use x402_types::FacilitatorReason;

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

// A facilitator is shared as `Arc<dyn Facilitator>` across tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<Box<dyn Facilitator>>();
};
