//! Taking up a session saved earlier, by this process or another: the stream
//! URL carrying the session's token, its slices, its paid time and the next
//! event, resumed without paying while the server still holds paid time.

use std::time::Duration;

use x402_types::EndpointKind;

use super::{ClientSession, Phase, UsageError};

/// Where a session can be taken up later: everything a new
/// [`ClientSession`] needs besides its [`ClientConfig`](super::ClientConfig).
///
/// `websocket` carries the session's token, which holds paid time: whoever
/// has it can watch the stream until that time is used. `Debug` shows the
/// URL without it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The stream URL (`websocketEndpoint`), with the session's token `t`.
    pub websocket: String,
    /// The next event wanted (`from`), if one was seen.
    pub next_seq: Option<u64>,
    /// Slices the server credited to the session so far.
    pub slices: u64,
    /// End of the paid time, server unix seconds (`expiresAt`); 0 if unknown.
    pub expires_at: u64,
}

impl std::fmt::Debug for ResumePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.websocket.split('?').next().unwrap_or_default();
        f.debug_struct("ResumePoint")
            .field("websocket", &format_args!("{url}?t=<redacted>"))
            .field("next_seq", &self.next_seq)
            .field("slices", &self.slices)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ClientSession {
    /// Makes this new session take up the saved one at `point` instead of
    /// buying a new one. Call before [`open`](Self::open).
    ///
    /// `open` still reads the schema (the terms, for renewals), then
    /// connects with the saved token from `point.next_seq` **without a
    /// payment**: the server's answer decides. `101` and a `hello` with
    /// `resumed: true` continue the session; `402` (its paid time is over)
    /// asks for the next slice as [`ClientEvent::PaymentNeeded`](super::ClientEvent::PaymentNeeded),
    /// which the driver's spending policy may refuse; `401`/`410` end it
    /// [`EndReason::TokenRejected`](super::EndReason::TokenRejected). Until
    /// the `hello` gives the server's clock, the paid time is reckoned from
    /// `point.expires_at` on the local clock (a reconnect within it pays nothing).
    ///
    /// The URL must belong to the configured server, version and stream
    /// (the schema's pinning), else [`UsageError::Config`].
    pub fn resume_from(&mut self, point: &ResumePoint) -> Result<(), UsageError> {
        if self.phase != Phase::Idle {
            return Err(UsageError::AlreadyOpen);
        }
        let bad = |m: String| UsageError::Config(format!("resume point: {m}"));
        let ctx = self
            .ctx
            .as_ref()
            .ok_or_else(|| bad("no URL context".into()))?;
        let (ws, token) = ctx
            .check(&point.websocket, EndpointKind::Stream)
            .map_err(|e| bad(e.to_string()))?;
        if token.is_none() {
            return Err(bad("the stream URL has no token".into()));
        }
        self.resume = Some(ws);
        self.next_seq = point.next_seq;
        self.slices = point.slices;
        self.stats.slices = point.slices;
        self.expires_at = point.expires_at;
        let now = self.last_now;
        let left_ms = i128::from(point.expires_at) * 1000 - self.unix_ms(now);
        let left = Duration::from_millis(u64::try_from(left_ms.max(0)).unwrap_or(u64::MAX));
        self.paid_until = Some(now.checked_add(left).unwrap_or(now));
        Ok(())
    }

    /// Where this session can be taken up later ([`resume_from`](Self::resume_from)),
    /// once the schema gave it a token. Save it only after a slice was paid
    /// ([`ClientStats::slices`](super::ClientStats) above 0): before that it holds no paid time.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        let ws = self.ws_url.as_ref()?;
        Some(ResumePoint {
            websocket: ws.to_string(),
            next_seq: self.next_seq,
            slices: self.slices,
            expires_at: self.expires_at,
        })
    }

    /// Brings `point` up to date with [`resume_point`](Self::resume_point),
    /// in place: nothing is allocated when only the numbers moved.
    pub fn update_resume_point(&self, point: &mut Option<ResumePoint>) {
        let Some(ws) = self.ws_url.as_ref() else {
            return;
        };
        match point {
            Some(p) if p.websocket == ws.as_str() => {
                p.next_seq = self.next_seq;
                p.slices = self.slices;
                p.expires_at = self.expires_at;
            }
            _ => *point = self.resume_point(),
        }
    }

    /// The schema of a resumed session was read: connect with the saved
    /// token and no payment; the server's answer decides (see `resume_from`).
    pub(super) fn connect_resumed(&mut self, ws: x402_types::Url) {
        let mut url = ws.clone();
        self.ws_url = Some(ws);
        if let Some(from) = self.next_seq {
            url.append_pair("from", &from.to_string());
        }
        self.open_socket(url, Vec::new(), None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use x402_types::PathVersion;

    use super::*;
    use crate::ClientConfig;

    fn session() -> ClientSession {
        let cfg = ClientConfig::new("http://h.example", PathVersion::V2, "s");
        ClientSession::new(cfg, Instant::now(), 1_000).unwrap()
    }

    fn point(url: &str) -> ResumePoint {
        ResumePoint {
            websocket: url.into(),
            next_seq: Some(7),
            slices: 2,
            expires_at: 1_030,
        }
    }

    #[test]
    fn a_resume_point_is_pinned_and_taken_before_open_only() {
        let now = Instant::now();
        let mut s = session();
        // Another host, no token: refused.
        for bad in [
            "ws://other.example/v2/stream/s?t=x",
            "ws://h.example/v2/stream/s",
        ] {
            assert!(
                matches!(s.resume_from(&point(bad)), Err(UsageError::Config(_))),
                "{bad}"
            );
        }
        s.resume_from(&point("ws://h.example/v2/stream/s?t=tok"))
            .unwrap();
        // Paid time from the saved end (30 s after the wall-clock anchor).
        assert!(s.paid_remaining(now) > Duration::from_secs(25));
        assert_eq!(s.stats().slices, 2);
        s.open(now).unwrap();
        let _ = s.poll_transmit();
        assert_eq!(
            s.resume_from(&point("ws://h.example/v2/stream/s?t=tok")),
            Err(UsageError::AlreadyOpen)
        );
        // The debug output hides the token.
        let p = point("ws://h.example/v2/stream/s?t=secret");
        assert!(!format!("{p:?}").contains("secret"));
    }
}
