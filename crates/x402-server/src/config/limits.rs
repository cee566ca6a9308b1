//! `[limits]`: what keeps the server alive under abuse, and how it writes to sockets.

use std::time::Duration;

use serde::Deserialize;

/// Limits that keep the server alive under abuse.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted client frame (1 MiB; larger closes with 1009).
    pub max_frame_bytes: usize,
    /// Events a connection may fall behind the live stream before it is
    /// served from the replay buffer instead (slow-consumer policy).
    pub send_queue: usize,
    /// Most sessions held.
    pub max_sessions: usize,
    /// Most simultaneous sockets per client IP.
    pub max_connections_per_ip: usize,
    /// Replay buffer per stream.
    pub replay_buffer: usize,
    /// Seconds a socket write may block before the connection is dropped.
    pub write_timeout_secs: u64,
    /// Seconds allowed to send a request's headers (slowloris defence).
    pub header_timeout_secs: u64,
    /// Seconds a facilitator call may take.
    pub facilitator_timeout_secs: u64,
    /// Slices that may be paid ahead.
    pub horizon_slices: u64,
    /// Seconds a paid-out session stays renewable.
    pub session_linger_secs: u64,
    /// Seconds a paying request waits for its settlement before it is
    /// answered 202 `payment_pending` (the settlement itself goes on).
    pub payment_wait_secs: u64,
    /// Milliseconds between sweeps of idle sessions and expired payment records.
    pub sweep_interval_ms: u64,
    /// Requests carrying a payment accepted per client address and minute (429 beyond):
    /// every payment costs a record and a facilitator call, so a flood is bounded.
    pub payments_per_ip_per_minute: u32,
    /// A burst of frames is written to a socket once more than this many
    /// bytes are buffered, and at its end (16 KiB). Larger values write large
    /// events several to a write: the server's CPU per ~64 KiB event was
    /// 46-54 us at 16 KiB and 25-41 us at 256 KiB (`cargo xtask bench`,
    /// row 2). The price is memory: tungstenite never shrinks a socket's
    /// write buffer, so a socket that received a burst keeps up to about twice
    /// this (plus its largest frame) until it closes; 10,000 sockets at
    /// 256 KiB can hold 5 GiB.
    pub write_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: x402_types::MAX_FRAME_BYTES,
            send_queue: 256,
            max_sessions: 100_000,
            max_connections_per_ip: 64,
            replay_buffer: 1024,
            write_timeout_secs: 10,
            header_timeout_secs: 10,
            facilitator_timeout_secs: 10,
            horizon_slices: 2,
            session_linger_secs: 600,
            payment_wait_secs: 5,
            sweep_interval_ms: 5_000,
            payments_per_ip_per_minute: 120,
            write_batch_bytes: 16 * 1024,
        }
    }
}

impl Limits {
    /// Write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    /// The most bytes a socket's write buffer may hold: a slow reader cannot
    /// make the server buffer without bound.
    pub const MAX_WRITE_BUFFER_BYTES: usize = 8 * 1024 * 1024;

    /// Every problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let most = Self::MAX_WRITE_BUFFER_BYTES / 2;
        if !(1024..=most).contains(&self.write_batch_bytes) {
            out.push(format!(
                "limits.write_batch_bytes: must be between 1024 and {most} (got {})",
                self.write_batch_bytes
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn write_batch_bytes_reads_and_is_bounded() {
        assert_eq!(Limits::default().write_batch_bytes, 16 * 1024);
        let with = |v: &str| {
            crate::config::EXAMPLE
                .replace("[limits]", &format!("[limits]\nwrite_batch_bytes = {v}"))
        };
        let c = Config::from_toml(&with("262144")).unwrap();
        assert_eq!(c.limits.write_batch_bytes, 262_144);
        for bad in ["100", "8388608"] {
            let e = Config::from_toml(&with(bad)).unwrap_err().to_string();
            assert!(
                e.contains("limits.write_batch_bytes: must be between 1024"),
                "{e}"
            );
            let c = Config::from_toml_unchecked(&with(bad)).unwrap();
            assert!(c.problems().iter().any(|p| p.contains("write_batch_bytes")));
        }
    }
}
