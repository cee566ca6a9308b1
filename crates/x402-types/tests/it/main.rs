//! The integration tests of `x402-types`, one test binary with a module per
//! area (rust-analyzer's layout: `cargo test -p atomicstream-x402-types --test it wire::`).
//! Proptest keeps its regressions in `tests/proptest-regressions/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod props;
mod wire;
