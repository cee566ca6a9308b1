//! The facade's integration tests, one binary: the async driver on paused
//! time with in-memory transports, and the facade against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;
mod e2e;
