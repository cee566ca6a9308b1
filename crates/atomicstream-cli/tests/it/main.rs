//! The CLI's integration tests, one binary: the built `atomicstream` against
//! real servers on loopback (`cli`, with its browser, client-recipe,
//! failure, resume and terminal modules), several instances on one Redis
//! (`cluster`), and the facilitator command on anvil (`facilitator`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod cluster;
mod facilitator;
