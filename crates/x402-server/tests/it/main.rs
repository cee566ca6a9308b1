//! The integration tests of `x402-server`, one test binary with a module per
//! area (rust-analyzer's layout: `cargo test -p x402-server --test it settlement::`).
//! `harness` is what they share: a server on port 0 with the embedded
//! facilitator, a paying client, quotes and socket readers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod channel;
mod e2e;
mod e2e_http;
mod e2e_refusals;
mod edge;
#[cfg(feature = "evm")]
mod evm;
mod instances;
mod settlement;
mod store;
