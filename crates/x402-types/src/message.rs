//! Socket messages (section 5), the renew answer, the HTTP error body and close codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, json_err};
pub use crate::event::{Event, EventData};
use crate::version::PathVersion;

/// Largest socket frame the protocol allows (1 MiB); larger frames close with 1009.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// WebSocket close codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: normal end.
    Normal,
    /// 1008: policy violation.
    Policy,
    /// 1009: frame too big.
    TooBig,
    /// 1011: server error.
    ServerError,
    /// 4401: token invalid or expired.
    TokenInvalid,
    /// 4402: paid time expired.
    PaymentExpired,
    /// 4409: superseded by a newer connection with the same token.
    Superseded,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::ServerError => 1011,
            CloseCode::TokenInvalid => 4401,
            CloseCode::PaymentExpired => 4402,
            CloseCode::Superseded => 4409,
            CloseCode::Other(c) => c,
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

impl From<u16> for CloseCode {
    fn from(c: u16) -> Self {
        match c {
            1000 => CloseCode::Normal,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::ServerError,
            4401 => CloseCode::TokenInvalid,
            4402 => CloseCode::PaymentExpired,
            4409 => CloseCode::Superseded,
            other => CloseCode::Other(other),
        }
    }
}

/// `hello`: the first message of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Session id.
    pub session_id: String,
    /// Stream id.
    pub stream_id: String,
    /// Path version.
    pub version: PathVersion,
    /// Seconds one payment buys.
    pub slice_seconds: u64,
    /// Unix seconds when paid time ends.
    pub expires_at: u64,
    /// The server's unix time.
    pub server_time: u64,
    /// Where to renew.
    pub renew_url: String,
    /// Whether this connection resumed a paid session.
    pub resumed: bool,
    /// Sequence number of the next event.
    pub next_seq: u64,
}

/// A message from server to client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// First message of a connection.
    Hello(Hello),
    /// A live event.
    Event(Event),
    /// A renewal was accepted.
    Renewed {
        /// New end of paid time.
        expires_at: u64,
        /// Slices bought so far.
        slices: u64,
    },
    /// Paid time runs out soon.
    Expiring {
        /// End of paid time.
        expires_at: u64,
        /// Seconds left.
        seconds_left: u64,
    },
    /// Paid time ran out; a 4402 close follows after the grace.
    Expired {
        /// End of paid time.
        expires_at: u64,
    },
    /// The stream ended.
    End {
        /// Why.
        reason: String,
    },
    /// A notice; fatal ones are followed by a close.
    Error {
        /// Machine-readable code (`events_lost`, ...).
        code: crate::ErrorCode,
        /// Human-readable text.
        message: String,
        /// For `events_lost`: how many events were lost.
        count: Option<u64>,
    },
    /// Answer to a client `ping`.
    Pong,
    /// A channel's credit runs out soon (`batch-settlement`): sign a voucher for
    /// `max_claimable_amount` and send it in-band (`voucher`) or to the renew URL.
    VoucherNeeded {
        /// The channel.
        channel_id: String,
        /// What the server charged on the channel so far (atomic units, decimal).
        charged_cumulative_amount: String,
        /// The voucher asked for: the charged total plus one slice.
        max_claimable_amount: String,
        /// End of paid time (unix seconds).
        expires_at: u64,
    },
    /// An in-band voucher was accepted: paid time was extended.
    VoucherAccepted {
        /// New end of paid time.
        expires_at: u64,
        /// Slices bought so far.
        slices: u64,
        /// The x402 `PAYMENT-RESPONSE` value (`chargedAmount`, `channelState`).
        receipt: Option<String>,
    },
    /// An in-band voucher got no credit (refused, pending, busy): send the same
    /// payload to the renew URL, whose answer is the verdict.
    VoucherRefused {
        /// The HTTP status the renew URL would have answered.
        status: u16,
        /// The code.
        code: crate::ErrorCode,
        /// For people.
        message: String,
    },
    /// A message type this version does not know; ignored by clients.
    Unknown {
        /// Its `type`.
        message_type: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flat<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    // hello
    session_id: Option<String>,
    stream_id: Option<String>,
    version: Option<PathVersion>,
    slice_seconds: Option<u64>,
    expires_at: Option<u64>,
    server_time: Option<u64>,
    renew_url: Option<String>,
    resumed: Option<bool>,
    next_seq: Option<u64>,
    // event
    seq: Option<u64>,
    data: Option<Box<RawValue>>,
    ts: Option<u64>,
    // renewed / expiring
    slices: Option<u64>,
    seconds_left: Option<u64>,
    // voucher-needed / voucher-accepted / voucher-refused
    channel_id: Option<String>,
    charged_cumulative_amount: Option<String>,
    max_claimable_amount: Option<String>,
    receipt: Option<String>,
    status: Option<u16>,
    // end / error
    reason: Option<String>,
    code: Option<crate::ErrorCode>,
    message: Option<String>,
    count: Option<u64>,
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
}

const KNOWN: &[&str] = &[
    "hello",
    "event",
    "renewed",
    "expiring",
    "expired",
    "end",
    "error",
    "pong",
    "voucher-needed",
    "voucher-accepted",
    "voucher-refused",
];

impl ServerMessage {
    /// Parses a text frame. Unknown `type`s give [`ServerMessage::Unknown`];
    /// non-objects, a missing `type`, wrong field types of known messages and
    /// missing required fields are errors. Frames over [`MAX_FRAME_BYTES`] are refused.
    pub fn parse(text: &str) -> Result<ServerMessage, Error> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(Error::FrameTooLarge {
                size: text.len(),
                limit: MAX_FRAME_BYTES,
            });
        }
        // Nearly every frame is an event: read it without serde_json (its
        // data's check was most of a large event's cost).
        match crate::event::parse_fast(text) {
            Some(e) => Ok(ServerMessage::Event(e)),
            None => Self::parse_general(text),
        }
    }

    /// [`ServerMessage::parse`] through `serde_json`, whatever the frame (no
    /// fast path, no size check). Public for the fuzz target that holds the
    /// two to the same answers; use `parse`.
    #[doc(hidden)]
    pub fn parse_general(text: &str) -> Result<ServerMessage, Error> {
        let f: Flat<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                // A message of an unknown type may use known field names with other types.
                if let Ok(t) = serde_json::from_str::<TypeOnly<'_>>(text)
                    && !KNOWN.contains(&t.ty.as_ref())
                {
                    return Ok(ServerMessage::Unknown {
                        message_type: t.ty.into_owned(),
                    });
                }
                return Err(json_err("server message", e));
            }
        };
        macro_rules! req {
            ($t:literal, $f:ident) => {
                f.$f.ok_or(Error::MissingField {
                    message_type: $t,
                    field: stringify!($f),
                })?
            };
        }
        Ok(match f.ty.as_ref() {
            "hello" => ServerMessage::Hello(Hello {
                session_id: req!("hello", session_id),
                stream_id: req!("hello", stream_id),
                version: req!("hello", version),
                slice_seconds: req!("hello", slice_seconds),
                expires_at: req!("hello", expires_at),
                server_time: req!("hello", server_time),
                renew_url: req!("hello", renew_url),
                resumed: f.resumed.unwrap_or(false),
                next_seq: req!("hello", next_seq),
            }),
            "event" => ServerMessage::Event(Event {
                seq: req!("event", seq),
                data: req!("event", data).into(),
                ts: f.ts,
            }),
            "renewed" => ServerMessage::Renewed {
                expires_at: req!("renewed", expires_at),
                slices: req!("renewed", slices),
            },
            "expiring" => ServerMessage::Expiring {
                expires_at: req!("expiring", expires_at),
                seconds_left: req!("expiring", seconds_left),
            },
            "expired" => ServerMessage::Expired {
                expires_at: req!("expired", expires_at),
            },
            "end" => ServerMessage::End {
                reason: f.reason.unwrap_or_default(),
            },
            "error" => ServerMessage::Error {
                code: req!("error", code),
                message: f.message.unwrap_or_default(),
                count: f.count,
            },
            "pong" => ServerMessage::Pong,
            "voucher-needed" => ServerMessage::VoucherNeeded {
                channel_id: req!("voucher-needed", channel_id),
                charged_cumulative_amount: req!("voucher-needed", charged_cumulative_amount),
                max_claimable_amount: req!("voucher-needed", max_claimable_amount),
                expires_at: req!("voucher-needed", expires_at),
            },
            "voucher-accepted" => ServerMessage::VoucherAccepted {
                expires_at: req!("voucher-accepted", expires_at),
                slices: req!("voucher-accepted", slices),
                receipt: f.receipt,
            },
            "voucher-refused" => ServerMessage::VoucherRefused {
                status: req!("voucher-refused", status),
                code: req!("voucher-refused", code),
                message: f.message.unwrap_or_default(),
            },
            other => ServerMessage::Unknown {
                message_type: other.to_string(),
            },
        })
    }

    /// Serializes to a JSON text frame.
    pub fn to_json(&self) -> String {
        let v = match self {
            ServerMessage::Hello(h) => {
                let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("type".into(), "hello".into());
                }
                return serde_json::to_string(&v).unwrap_or_default();
            }
            ServerMessage::Event(e) => {
                let mut s = String::with_capacity(e.data.get().len() + 48);
                s.push_str(r#"{"type":"event","seq":"#);
                s.push_str(&e.seq.to_string());
                if let Some(ts) = e.ts {
                    s.push_str(r#","ts":"#);
                    s.push_str(&ts.to_string());
                }
                s.push_str(r#","data":"#);
                s.push_str(e.data.get());
                s.push('}');
                return s;
            }
            ServerMessage::Renewed { expires_at, slices } => {
                serde_json::json!({"type": "renewed", "expiresAt": expires_at, "slices": slices})
            }
            ServerMessage::Expiring {
                expires_at,
                seconds_left,
            } => {
                serde_json::json!({"type": "expiring", "expiresAt": expires_at, "secondsLeft": seconds_left})
            }
            ServerMessage::Expired { expires_at } => {
                serde_json::json!({"type": "expired", "expiresAt": expires_at})
            }
            ServerMessage::End { reason } => serde_json::json!({"type": "end", "reason": reason}),
            ServerMessage::Error {
                code,
                message,
                count,
            } => {
                let mut v = serde_json::json!({"type": "error", "code": code, "message": message});
                if let (Some(c), Value::Object(m)) = (count, &mut v) {
                    m.insert("count".into(), (*c).into());
                }
                v
            }
            ServerMessage::Pong => serde_json::json!({"type": "pong"}),
            ServerMessage::VoucherNeeded {
                channel_id,
                charged_cumulative_amount,
                max_claimable_amount,
                expires_at,
            } => serde_json::json!({"type": "voucher-needed", "channelId": channel_id,
                "chargedCumulativeAmount": charged_cumulative_amount,
                "maxClaimableAmount": max_claimable_amount, "expiresAt": expires_at}),
            ServerMessage::VoucherAccepted {
                expires_at,
                slices,
                receipt,
            } => {
                let mut v = serde_json::json!({"type": "voucher-accepted", "expiresAt": expires_at, "slices": slices});
                if let (Some(r), Value::Object(m)) = (receipt, &mut v) {
                    m.insert("receipt".into(), r.clone().into());
                }
                v
            }
            ServerMessage::VoucherRefused {
                status,
                code,
                message,
            } => {
                serde_json::json!({"type": "voucher-refused", "status": status, "code": code, "message": message})
            }
            ServerMessage::Unknown { message_type } => serde_json::json!({"type": message_type}),
        };
        v.to_string()
    }
}

/// A message from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"ping"}`, answered with `pong`.
    Ping,
    /// `{"type":"voucher","payment":"<PAYMENT-SIGNATURE value>"}`: a `batch-settlement`
    /// payment carried in-band; answered with `voucher-accepted` or `voucher-refused`.
    Voucher {
        /// The payment header's value (base64 JSON of an x402 v2 payment payload).
        payment: String,
    },
    /// Anything else: ignored by the server.
    Other,
}

#[derive(Deserialize)]
struct ClientFlat<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    payment: Option<String>,
}

impl ClientMessage {
    /// Parses a client text frame; anything that is not a ping or a well-formed
    /// voucher is [`ClientMessage::Other`].
    pub fn parse(text: &str) -> ClientMessage {
        match serde_json::from_str::<ClientFlat<'_>>(text) {
            Ok(t) if t.ty == "ping" => ClientMessage::Ping,
            Ok(ClientFlat {
                ty,
                payment: Some(payment),
            }) if ty == "voucher" => ClientMessage::Voucher { payment },
            _ => ClientMessage::Other,
        }
    }

    /// The JSON text of a message.
    pub fn to_json(&self) -> String {
        match self {
            ClientMessage::Ping => Self::PING.to_string(),
            ClientMessage::Voucher { payment } => {
                serde_json::json!({"type": "voucher", "payment": payment}).to_string()
            }
            ClientMessage::Other => "{}".to_string(),
        }
    }

    /// The JSON text of a ping.
    pub const PING: &'static str = r#"{"type":"ping"}"#;
}

/// The `200` answer of the renew endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    /// Session id.
    pub session_id: String,
    /// New end of paid time (unix seconds).
    pub expires_at: u64,
    /// Slice length.
    pub slice_seconds: u64,
    /// Slices bought so far.
    pub slices: u64,
}

impl RenewResponse {
    /// Parses the body.
    pub fn from_json(body: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(body).map_err(|e| json_err("renew response", e))
    }
}

/// The JSON body of every refused HTTP request: `{"error", "message", "accepts"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub error: crate::ErrorCode,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// Fresh requirements (on 402), as stock x402 bodies carry them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepts: Option<Vec<Value>>,
    /// v1 compatibility.
    #[serde(
        default,
        rename = "x402Version",
        skip_serializing_if = "Option::is_none"
    )]
    pub x402_version: Option<u8>,
    /// For `payment_pending` and other retryable answers: seconds to wait
    /// before retrying the same payload (also in the `Retry-After` header).
    #[serde(
        default,
        rename = "retryAfter",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<u64>,
}

impl ErrorBody {
    /// Parses the body.
    pub fn from_json(body: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(body).map_err(|e| json_err("error body", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_each_type() {
        let h = r#"{"type":"hello","sessionId":"s","streamId":"btc","version":"2","sliceSeconds":300,"expiresAt":10,"serverTime":5,"renewUrl":"https://h/v2/renew/btc?t=x","resumed":false,"nextSeq":0}"#;
        let ServerMessage::Hello(hello) = ServerMessage::parse(h).unwrap() else {
            panic!()
        };
        assert_eq!(hello.slice_seconds, 300);
        let m =
            ServerMessage::parse(r#"{"type":"event","seq":3,"data":{"p":1.5,"s":"x"}}"#).unwrap();
        let ServerMessage::Event(e) = &m else {
            panic!()
        };
        assert_eq!(e.data.get(), r#"{"p":1.5,"s":"x"}"#);
        assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
        assert_eq!(
            ServerMessage::parse(r#"{"type":"whatever","seq":"text"}"#).unwrap(),
            ServerMessage::Unknown {
                message_type: "whatever".into()
            }
        );
        assert!(ServerMessage::parse(r#"{"type":"event","seq":"3","data":1}"#).is_err());
        assert!(matches!(
            ServerMessage::parse(r#"{"type":"event","data":1}"#),
            Err(Error::MissingField { field: "seq", .. })
        ));
        assert!(ServerMessage::parse("[1,2]").is_err());
        assert!(ServerMessage::parse(r#"{"seq":1}"#).is_err());
        assert!(ServerMessage::parse("not json").is_err());
        assert_eq!(
            ServerMessage::parse(r#"{"type":"pong","extra":[1]}"#).unwrap(),
            ServerMessage::Pong
        );
    }

    #[test]
    fn close_codes() {
        for c in [1000u16, 1008, 1009, 1011, 4401, 4402, 4409, 4000] {
            assert_eq!(CloseCode::from(c).code(), c);
        }
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            ClientMessage::parse(ClientMessage::PING),
            ClientMessage::Ping
        );
        assert_eq!(ClientMessage::parse("garbage"), ClientMessage::Other);
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe"}"#),
            ClientMessage::Other
        );
    }
}
