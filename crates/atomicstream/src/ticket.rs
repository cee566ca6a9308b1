//! A saved session ([`SessionTicket`]): what [`Client::resume`](crate::Client::resume)
//! needs to take a session up again, possibly in another process, without
//! paying for the time it still holds; and its JSON form.

use std::time::Duration;

use x402_session::ResumePoint;
use x402_types::{PathVersion, Url};

use crate::{ConfigError, Error, Result};

/// The `format` of a ticket's JSON form.
pub const TICKET_FORMAT: &str = "atomicstream-session/1";

/// A session saved for later: the server, stream and protocol version, the
/// session's token (it holds the paid time: whoever has it can watch the
/// stream until that time is used), the slices bought, the end of the paid
/// time and the next event wanted.
///
/// Get one from [`StreamSession::ticket`](crate::StreamSession::ticket) once a
/// slice is paid; hand it to [`Client::resume`](crate::Client::resume).
/// `Debug` does not show the token; [`to_json`](Self::to_json) does (keep
/// the file private).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionTicket {
    /// HTTP base URL of the server.
    pub base_url: String,
    /// Path version of the session.
    pub version: PathVersion,
    /// Stream id.
    pub stream_id: String,
    /// The stream URL without its query (`ws://host/v2/stream/id`).
    pub websocket: String,
    /// The session's token (the stream URL's `t`).
    pub token: String,
    /// Slices the server credited to the session.
    pub slices: u64,
    /// End of the paid time, server unix seconds; 0 if unknown.
    pub paid_until: u64,
    /// The next event wanted: one past the last one received (or written out,
    /// if the application says so with [`with_next_seq`](Self::with_next_seq)).
    pub next_seq: Option<u64>,
}

impl std::fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTicket")
            .field("base_url", &self.base_url)
            .field("version", &self.version)
            .field("stream_id", &self.stream_id)
            .field("websocket", &self.websocket)
            .field("token", &"<redacted>")
            .field("slices", &self.slices)
            .field("paid_until", &self.paid_until)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl SessionTicket {
    pub(crate) fn new(
        base_url: &str,
        version: PathVersion,
        stream_id: &str,
        point: &ResumePoint,
    ) -> Option<Self> {
        let mut url = Url::parse(&point.websocket).ok()?;
        let token = url
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "t")
            .map(|(_, v)| v)?;
        url.set_query(None);
        Some(SessionTicket {
            base_url: base_url.to_string(),
            version,
            stream_id: stream_id.to_string(),
            websocket: url.to_string(),
            token,
            slices: point.slices,
            paid_until: point.expires_at,
            next_seq: point.next_seq,
        })
    }

    pub(crate) fn resume_point(&self) -> Result<ResumePoint> {
        let mut url = Url::parse(&self.websocket)
            .map_err(|e| Error::Config(ConfigError::Ticket(format!("stream URL: {e}"))))?;
        url.set_query(None);
        url.append_pair("t", &self.token);
        Ok(ResumePoint {
            websocket: url.to_string(),
            next_seq: self.next_seq,
            slices: self.slices,
            expires_at: self.paid_until,
        })
    }

    /// The same ticket resuming at `next_seq`: an application that stops
    /// with events received but not yet used saves the first one it did not use.
    pub fn with_next_seq(mut self, next_seq: u64) -> Self {
        self.next_seq = Some(next_seq);
        self
    }

    /// Paid time left at `unix_now` (seconds) by the server's last word,
    /// measured on the local clock.
    pub fn paid_left(&self, unix_now: u64) -> Duration {
        Duration::from_secs(self.paid_until.saturating_sub(unix_now))
    }

    /// The JSON form (one object; `format` is [`TICKET_FORMAT`]). It holds
    /// the token: store it where only its owner can read it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "format": TICKET_FORMAT,
            "baseUrl": self.base_url,
            "protocol": self.version.segment(),
            "streamId": self.stream_id,
            "websocket": self.websocket,
            "token": self.token,
            "slices": self.slices,
            "paidUntil": self.paid_until,
            "nextSeq": self.next_seq,
        })
        .to_string()
    }

    /// Reads the JSON form; anything missing or of the wrong type is an
    /// [`Error::Config`] naming the field.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |m: String| Error::Config(ConfigError::Ticket(m));
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or_default();
        if format != TICKET_FORMAT {
            return Err(bad(format!(
                "format {format:?}, expected {TICKET_FORMAT:?}"
            )));
        }
        let text_field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("`{k}` missing or not a string")))
        };
        let number = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| bad(format!("`{k}` missing or not a whole number")))
        };
        let next_seq = match v.get("nextSeq") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(
                x.as_u64()
                    .ok_or_else(|| bad("`nextSeq` not a whole number".into()))?,
            ),
        };
        let version: PathVersion = text_field("protocol")?
            .parse()
            .map_err(|e| bad(format!("`protocol`: {e}")))?;
        let t = SessionTicket {
            base_url: text_field("baseUrl")?,
            version,
            stream_id: text_field("streamId")?,
            websocket: text_field("websocket")?,
            token: text_field("token")?,
            slices: number("slices")?,
            paid_until: number("paidUntil")?,
            next_seq,
        };
        // The URLs must at least parse; the session checks they belong together.
        Url::parse(&t.base_url).map_err(|e| bad(format!("`baseUrl`: {e}")))?;
        t.resume_point()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn point() -> ResumePoint {
        ResumePoint {
            websocket: "ws://127.0.0.1:4021/v2/stream/btc-usd?t=abc.DEF-1_".into(),
            next_seq: Some(42),
            slices: 2,
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn a_ticket_round_trips_and_hides_its_token_from_debug() {
        let t = SessionTicket::new(
            "http://127.0.0.1:4021",
            PathVersion::V2,
            "btc-usd",
            &point(),
        )
        .unwrap();
        assert_eq!(t.token, "abc.DEF-1_");
        assert_eq!(t.websocket, "ws://127.0.0.1:4021/v2/stream/btc-usd");
        let back = SessionTicket::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.resume_point().unwrap(), point());
        assert!(!format!("{t:?}").contains("abc.DEF"), "{t:?}");
        assert_eq!(t.paid_left(1_900_000_000 - 5), Duration::from_secs(5));
        assert_eq!(t.paid_left(2_000_000_000), Duration::ZERO);
        assert_eq!(t.clone().with_next_seq(7).next_seq, Some(7));
    }

    #[test]
    fn a_bad_ticket_names_its_fault() {
        let t = SessionTicket::new("http://h", PathVersion::V1, "s", &point()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        v["slices"] = serde_json::json!("two");
        let e = SessionTicket::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("`slices`"), "{e}");
        v["format"] = serde_json::json!("other/9");
        let e = SessionTicket::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("format"), "{e}");
        assert!(SessionTicket::from_json("not json").is_err());
        // No token, no ticket.
        let mut p = point();
        p.websocket = "ws://h/v2/stream/s".into();
        assert!(SessionTicket::new("http://h", PathVersion::V2, "s", &p).is_none());
    }
}
