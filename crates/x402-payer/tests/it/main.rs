//! The integration tests of `x402-payer`, one test binary with a module per
//! area (rust-analyzer's layout: `cargo test -p x402-payer --test it vectors::`).
//! `vectors/` holds the eth-account signatures `vectors` checks against.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod channel_payer;
mod channel_vectors;
mod policy;
mod vectors;
mod verify;
