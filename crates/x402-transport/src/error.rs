//! The transport's error: what failed (refused, name not resolved, TLS,
//! timeout, a broken connection, a bad frame), classified from the cause's
//! source chain in the style of reqwest's `is_connect()` / `is_timeout()`,
//! with the cause kept behind [`source`](std::error::Error::source).

use std::error::Error as StdError;
use std::sync::Arc;

/// The underlying error, shared so [`TransportError`] stays `Clone`.
pub type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// What kind of failure a [`TransportError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The host answered that nothing listens on the port (connection refused).
    Refused,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed (an `https`/`wss` URL on a plain port, a bad certificate).
    Tls,
    /// No connection could be made for another reason (network or host unreachable).
    Connect,
    /// Connecting took too long.
    ConnectTimeout,
    /// Connected, but no answer in time.
    Timeout,
    /// The connection broke, or the answer could not be read.
    Connection,
    /// A frame or message the transport refused (too large, not UTF-8).
    Frame,
}

impl Kind {
    /// A few words for people: `connection refused`, `name not resolved`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Refused => "connection refused",
            Kind::Dns => "name not resolved",
            Kind::Tls => "TLS handshake failed",
            Kind::Connect => "could not connect",
            Kind::ConnectTimeout => "timed out connecting",
            Kind::Timeout => "timed out",
            Kind::Connection => "connection failed",
            Kind::Frame => "invalid frame",
        }
    }
}

/// A transport failure: no (usable) answer.
///
/// The classifiers say what happened: [`is_connect`](Self::is_connect) (no
/// connection was made, so nothing was sent), [`is_refused`](Self::is_refused),
/// [`is_dns`](Self::is_dns), [`is_tls`](Self::is_tls),
/// [`is_timeout`](Self::is_timeout), [`is_frame`](Self::is_frame). The text
/// never holds a URL (they carry session tokens); callers that know the URL
/// name it themselves.
///
/// ```
/// use x402_transport::{TransportError, TransportErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let e = TransportError::from_cause(TransportErrorKind::Connection, io);
/// assert!(e.is_connect() && e.is_refused() && !e.is_timeout());
/// assert_eq!(e.to_string(), "connection refused");
/// ```
#[derive(Debug, Clone)]
pub struct TransportError {
    kind: Kind,
    detail: String,
    source: Option<Cause>,
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.describe())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Two errors are equal when their kind and text are (the causes are not compared).
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.detail == other.detail
    }
}

impl Eq for TransportError {}

impl TransportError {
    /// A failure of `kind`, described by `detail` (may be empty).
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        TransportError {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// No answer in time.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(Kind::Timeout, detail)
    }

    /// The connection failed or broke.
    pub fn connection(detail: impl Into<String>) -> Self {
        Self::new(Kind::Connection, detail)
    }

    /// A frame or message the transport refused.
    pub fn frame(detail: impl Into<String>) -> Self {
        Self::new(Kind::Frame, detail)
    }

    /// From a library's error: the kind is read from its source chain
    /// ([`classify`]), `fallback` when nothing in it is recognised. The detail
    /// is the root cause's text, except where the kind says it all (refused, timeouts).
    pub fn from_cause(fallback: Kind, cause: impl StdError + Send + Sync + 'static) -> Self {
        let kind = classify(&cause).unwrap_or(fallback);
        let detail = match kind {
            Kind::Refused | Kind::Timeout | Kind::ConnectTimeout => String::new(),
            _ => root_text(&cause),
        };
        TransportError {
            kind,
            detail,
            source: Some(Arc::new(cause)),
        }
    }

    /// The same error with another kind (a caller that knows better, e.g. the
    /// handshake timer that fired).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// What kind of failure.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The description after the kind (the root cause's text), possibly empty.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// No connection was made (refused, name not resolved, TLS handshake,
    /// unreachable, connect timeout): nothing was sent.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.kind,
            Kind::Refused | Kind::Dns | Kind::Tls | Kind::Connect | Kind::ConnectTimeout
        )
    }

    /// No answer in time (while connecting or after).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout | Kind::ConnectTimeout)
    }

    /// The connection was refused (nothing listens on the port).
    pub fn is_refused(&self) -> bool {
        self.kind == Kind::Refused
    }

    /// The host name did not resolve.
    pub fn is_dns(&self) -> bool {
        self.kind == Kind::Dns
    }

    /// The TLS handshake failed.
    pub fn is_tls(&self) -> bool {
        self.kind == Kind::Tls
    }

    /// A frame or message was refused (too large, not UTF-8).
    pub fn is_frame(&self) -> bool {
        self.kind == Kind::Frame
    }
}

/// What a source chain says happened, if anything in it is recognised:
/// reqwest's own flags (`is_connect`, `is_timeout`), tungstenite's TLS
/// errors, `std::io::ErrorKind`s (`ConnectionRefused`, `TimedOut`, ...)
/// and, where libraries keep the fact only in words, the resolver's
/// (`dns error`, `failed to lookup address`) and rustls' messages.
pub fn classify(e: &(dyn StdError + 'static)) -> Option<Kind> {
    let mut connect = false;
    let mut timeout = false;
    let mut tls = false;
    let mut other = None;
    let mut link = Some(e);
    while let Some(l) = link {
        #[cfg(feature = "reqwest")]
        if let Some(r) = l.downcast_ref::<reqwest::Error>() {
            connect |= r.is_connect();
            timeout |= r.is_timeout();
        }
        #[cfg(feature = "tungstenite")]
        if let Some(tokio_tungstenite::tungstenite::Error::Tls(_)) =
            l.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        {
            tls = true;
        }
        // io::Error's own `source()` skips its inner error: read it here.
        let inner = l
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref().map(|i| i as &(dyn StdError + 'static)));
        for x in std::iter::once(l).chain(inner) {
            if let Some(k) = io_kind(x) {
                match k {
                    Kind::Timeout => timeout = true,
                    Kind::Tls => tls = true,
                    k => other = other.or(Some(k)),
                }
            }
            match text_kind(&x.to_string()) {
                Some(Kind::Dns) => return Some(Kind::Dns),
                Some(Kind::Tls) => tls = true,
                _ => {}
            }
        }
        link = l.source().or(inner.and_then(|i| i.source()));
    }
    if let Some(k @ Kind::Refused) = other {
        return Some(k);
    }
    if tls {
        return Some(Kind::Tls);
    }
    if timeout {
        return Some(if connect {
            Kind::ConnectTimeout
        } else {
            Kind::Timeout
        });
    }
    match other {
        Some(k) => Some(k),
        None if connect => Some(Kind::Connect),
        None => None,
    }
}

fn io_kind(e: &(dyn StdError + 'static)) -> Option<Kind> {
    use std::io::ErrorKind as K;
    let io = e.downcast_ref::<std::io::Error>()?;
    Some(match io.kind() {
        K::ConnectionRefused => Kind::Refused,
        K::TimedOut => Kind::Timeout,
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable | K::NetworkDown => {
            Kind::Connect
        }
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            Kind::Connection
        }
        _ => return None,
    })
}

/// Facts some libraries keep only in their messages: hyper's `dns error`,
/// the system resolver's `failed to lookup address information`, rustls'
/// messages about what it received instead of a TLS record.
fn text_kind(text: &str) -> Option<Kind> {
    let t = text.to_ascii_lowercase();
    if t == "dns error"
        || t.contains("failed to lookup address")
        || t.contains("name or service not known")
        || t.contains("no such host is known")
        || t.contains("nodename nor servname")
    {
        return Some(Kind::Dns);
    }
    if t.contains("corrupt message")
        || t.contains("invalidcontenttype")
        || t.contains("invalid peer certificate")
        || t.contains("tls handshake")
        || t.starts_with("rustls error")
    {
        return Some(Kind::Tls);
    }
    None
}

/// The innermost error's text (the root cause), io's inner error included.
fn root_text(e: &(dyn StdError + 'static)) -> String {
    let mut last = e;
    let mut link = Some(e);
    while let Some(l) = link {
        last = l;
        let inner = l
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref().map(|i| i as &(dyn StdError + 'static)));
        link = l.source().or(inner);
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Error as Io, ErrorKind};

    /// An error with a message and a source, as libraries wrap theirs.
    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<dyn StdError + Send + Sync>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
        }
    }
    fn wrap(msg: &'static str, e: impl StdError + Send + Sync + 'static) -> Wrap {
        Wrap(msg, Some(Box::new(e)))
    }

    #[test]
    fn io_kinds_deep_in_the_chain_are_found() {
        let refused = wrap(
            "error sending request",
            wrap("tcp connect error", Io::from(ErrorKind::ConnectionRefused)),
        );
        let e = TransportError::from_cause(Kind::Connection, refused);
        assert_eq!(e.kind(), Kind::Refused);
        assert!(e.is_connect() && e.is_refused() && !e.is_timeout() && !e.is_dns());
        assert_eq!(e.to_string(), "connection refused");
        // The cause stays reachable.
        let cause = e.source().and_then(|s| s.source()).map(|s| s.to_string());
        assert_eq!(cause.as_deref(), Some("tcp connect error"));

        let unreachable = wrap("x", Io::from(ErrorKind::NetworkUnreachable));
        assert_eq!(classify(&unreachable), Some(Kind::Connect));
        let reset = wrap("x", Io::from(ErrorKind::ConnectionReset));
        let e = TransportError::from_cause(Kind::Timeout, reset);
        assert_eq!(e.kind(), Kind::Connection);
        assert!(!e.is_connect());
    }

    #[test]
    fn the_resolver_and_rustls_are_read_from_their_words() {
        let gai = Io::other("failed to lookup address information: Name or service not known");
        let e = TransportError::from_cause(Kind::Connection, wrap("dns error", gai));
        assert!(e.is_dns() && e.is_connect());
        assert_eq!(
            e.to_string(),
            "name not resolved: failed to lookup address information: Name or service not known"
        );
        // rustls' error sits inside an io::Error, whose `source()` skips it.
        let rustls = Io::new(
            ErrorKind::InvalidData,
            Wrap("received corrupt message of type InvalidContentType", None),
        );
        let e =
            TransportError::from_cause(Kind::Connection, wrap("client error (Connect)", rustls));
        assert!(e.is_tls() && e.is_connect(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "TLS handshake failed: received corrupt message of type InvalidContentType"
        );
    }

    #[test]
    fn timeouts_and_unknown_chains() {
        let e = TransportError::from_cause(Kind::Connection, Io::from(ErrorKind::TimedOut));
        assert!(e.is_timeout() && !e.is_connect());
        assert_eq!(e.to_string(), "timed out");
        // Nothing recognised: the fallback kind, the root cause's words.
        let e = TransportError::from_cause(Kind::Connection, wrap("a", wrap("b", Wrap("c", None))));
        assert_eq!(e.kind(), Kind::Connection);
        assert_eq!(e.to_string(), "connection failed: c");
        assert_eq!(classify(&Wrap("nothing", None)), None);
        // Equality ignores the cause; the kind can be corrected by the caller.
        assert_eq!(
            TransportError::frame("too big"),
            TransportError::new(Kind::Frame, "too big")
        );
        assert!(
            TransportError::connection("x")
                .with_kind(Kind::ConnectTimeout)
                .is_timeout()
        );
    }
}
