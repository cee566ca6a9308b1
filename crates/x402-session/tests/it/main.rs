//! The integration tests of `x402-session`, one test binary with a module per
//! area (rust-analyzer's layout: `cargo test -p x402-session --test it golden::`).
//! `sim` is the simulated client/server pair on virtual time the other modules
//! drive; it is compiled once, here. Proptest keeps its regressions in
//! `tests/proptest-regressions/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

mod claims;
mod endpoint;
mod golden;
mod in_band;
mod liveness;
mod meter;
mod props;
mod shared;
mod usage;
