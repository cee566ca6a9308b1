#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod client;
mod error;
mod rng;
pub mod server;

pub use client::{
    CheckedSchema, ClientConfig, ClientEvent, ClientSession, ClientStats, ConnId,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE, EndReason, HttpResponse, IN_BAND_WAIT, Method,
    ReconnectPolicy, RequestId, ResumePoint, Transmit, TransportFailure, default_renew_margin,
    human, read_schema, read_schema_of, utc_clock,
};
pub use error::UsageError;
pub use server::{
    Connected, Credit, EXACT, EndpointConfig, EndpointStats, PaymentDecision, PaymentIn,
    PaymentKey, PaymentRecord, PaymentStatus, Quote, Refusal, ServerEndpoint, ServerEvent,
    ServerTransmit, SessionState, SettleId, SettleJob, SettleOutcome, SettledPlan, StreamHead,
};
