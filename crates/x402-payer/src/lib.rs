#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod book;
pub mod channel;
pub mod channel_check;
mod channel_payer;
pub mod eip712;
mod error;
mod payer;
mod policy;
mod signer;
pub mod verify;

pub use book::{HOLD_SKEW_SECS, ReservationBook};
pub use channel_payer::{ClientChannel, DEFAULT_DEPOSIT_SLICES, EvmChannelPayer, write_private};
pub use error::{BudgetScope, Error, PolicyError, Result, SignatureError};
pub use payer::{
    Clock, EvmExactPayer, FixedClock, OsRandom, Payer, RandomSource, SeededRandom, SystemClock,
    VALID_AFTER_SKEW, domain_for,
};
pub use policy::{Approver, Budget, DEFAULT_MAX_TIMEOUT_SECONDS, Held, Reservation, SpendPolicy};
pub use signer::{DigestSigner, LocalSigner, address_of, recover};
pub use verify::{VerifyFailure, verify_exact, verify_signature};
pub use x402_types::Offer;
