//! The one error type of this crate.

use crate::version::PathVersion;

/// Everything that can go wrong while parsing or checking protocol data.
///
/// Every variant is about *input*: this crate does no I/O, so there is no
/// transport error here.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A JSON document did not parse or did not have the expected shape.
    #[error("malformed JSON for {what}: {message}")]
    Json {
        /// What was being decoded (for example `"schema"`).
        what: &'static str,
        /// The decoder's message (position and cause).
        message: String,
    },
    /// A header value was not standard base64 with padding.
    #[error("header {header} is not standard padded base64: {message}")]
    Base64 {
        /// The header name.
        header: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// An integer string was not a canonical non-negative decimal.
    #[error("invalid integer {input:?}: {reason}")]
    Integer {
        /// The offending input (truncated to 80 characters).
        input: String,
        /// Why it was refused.
        reason: IntegerError,
    },
    /// A decimal display amount (such as `"0.01"`) could not be converted.
    #[error("invalid display amount {input:?} with {decimals} decimals: {reason}")]
    DisplayAmount {
        /// The offending input (truncated).
        input: String,
        /// The asset's decimals.
        decimals: u8,
        /// Why it was refused.
        reason: IntegerError,
    },
    /// An EVM address was malformed or failed its EIP-55 checksum.
    #[error("invalid EVM address {input:?}: {reason}")]
    Address {
        /// The offending input (truncated).
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A fixed-length hex value (nonce, signature) was malformed.
    #[error("invalid hex value {input:?}: expected {expected_bytes} bytes as 0x-prefixed hex")]
    Hex {
        /// The offending input (truncated).
        input: String,
        /// The expected length in bytes.
        expected_bytes: usize,
    },
    /// A variable-length hex byte string (a signature) was malformed.
    #[error("invalid hex bytes {input:?}: {reason}")]
    Bytes {
        /// The offending input (truncated).
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A network identifier is neither a known v1 name nor a CAIP-2 id.
    #[error("unknown network {0:?}")]
    UnknownNetwork(String),
    /// A path version other than `v1`/`v2`, or an x402 version other than 1/2.
    #[error("unsupported version {0:?}")]
    UnsupportedVersion(String),
    /// A URL could not be parsed.
    #[error("invalid URL {input:?}: {message}")]
    Url {
        /// The offending input (truncated).
        input: String,
        /// The parser's message.
        message: String,
    },
    /// A server-supplied URL names another version than the session's.
    #[error("version mismatch in {url}: expected {expected}, found {found}")]
    VersionMismatch {
        /// The URL that was refused.
        url: String,
        /// The session's version.
        expected: PathVersion,
        /// What the URL or document said.
        found: String,
    },
    /// A server-supplied URL names another host than the schema request's.
    #[error("host mismatch in {url}: expected {expected}, found {found}")]
    HostMismatch {
        /// The URL that was refused.
        url: String,
        /// The schema request's host.
        expected: String,
        /// The host found in the URL.
        found: String,
    },
    /// A server-supplied URL has the wrong path shape or stream id.
    #[error("unexpected path in {url}: {reason}")]
    PathMismatch {
        /// The URL that was refused.
        url: String,
        /// What did not match.
        reason: String,
    },
    /// A required field is missing from a message of a known type.
    #[error("message {message_type:?} is missing field {field:?}")]
    MissingField {
        /// The message type.
        message_type: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A frame was larger than the protocol allows.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A document violated a protocol rule (wrong `protocol`, wrong x402 version, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why an integer or decimal string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegerError {
    /// Empty input.
    Empty,
    /// A leading `-`.
    Negative,
    /// A fractional part where an integer was expected, or more decimals than the asset has.
    Fraction,
    /// An exponent (`1e6`).
    Exponent,
    /// A character that is not a decimal digit.
    InvalidDigit,
    /// Leading zeros (`"007"`) or a leading `+`: not canonical.
    NotCanonical,
    /// More than 2^256 - 1, or an arithmetic overflow.
    Overflow,
}

impl std::fmt::Display for IntegerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::Negative => "negative",
            Self::Fraction => "fractional part not allowed or too many decimals",
            Self::Exponent => "exponent notation not allowed",
            Self::InvalidDigit => "invalid digit",
            Self::NotCanonical => "not canonical (leading zero or sign)",
            Self::Overflow => "overflow (more than 2^256 - 1)",
        })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

pub(crate) fn json_err(what: &'static str, e: serde_json::Error) -> Error {
    Error::Json {
        what,
        message: e.to_string(),
    }
}
