//! The integration tests of `x402-chain`, one test binary with a module per
//! area (rust-analyzer's layout: `cargo test -p x402-chain --test it anvil::`).
//! Both run against a local anvil; `tests/interop/` holds the official x402
//! Python SDK script that `anvil` (and the CLI's facilitator test) run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anvil;
mod batch_facilitator;
mod channel_client;
mod channel_contract;
mod channel_faults;
mod channel_rig;
mod channel_stream;
mod channel_withdraw;
mod stream;
