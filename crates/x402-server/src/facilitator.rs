//! Payment verification and settlement: the facilitator boundary, which
//! lives in the `x402-facilitator` crate (the `Facilitator` trait, its typed
//! error, the embedded facilitator, the HTTP client, the classifier of
//! answers, and the guarded API router), re-exported here.

pub use x402_facilitator::*;
