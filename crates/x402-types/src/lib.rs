#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod batch;
pub mod code;
pub mod error;
mod event;
mod json_scan;
pub mod message;
pub mod network;
pub mod reason;
pub mod schema;
pub mod uint;
pub mod url;
pub mod version;
pub mod x402;

pub use address::{Address, B65, B256, FixedBytes, Nonce, keccak256};
pub use code::{ErrorCode, is_retryable_status};
pub use error::{Error, IntegerError, Result};
pub use message::{
    ClientMessage, CloseCode, ErrorBody, Event, EventData, Hello, MAX_FRAME_BYTES, RenewResponse,
    ServerMessage,
};
pub use network::{KnownAsset, Network, known_asset, known_assets, usdc};
pub use reason::FacilitatorReason;
pub use schema::{Catalog, CatalogEntry, PaymentDetails, Pricing, Schema, StreamInfo};
pub use uint::{Amount, U256};
pub use url::Url;
pub use version::{EndpointKind, PathVersion, UrlContext};
pub use x402::{
    Authorization, Eip712Extra, ExactEvmPayload, FacilitatorRequest, Offer, PaymentPayload,
    PaymentPayloadV1, PaymentPayloadV2, PaymentRequiredV1, PaymentRequiredV2, PaymentRequirements,
    PaymentRequirementsV1, PaymentRequirementsV2, PreservedRequirement, ReasonFamily, Requirement,
    ResourceInfo, SchemePayload, SettleResponse, SupportedKind, SupportedResponse, VerifyResponse,
};
