//! The errors of this crate: a facilitator call without a usable answer
//! ([`FacilitatorError`]) and a facilitator API that cannot be served
//! ([`ServeError`]).

use std::sync::Arc;

/// The underlying error of a failed call, shared so the error stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A facilitator call that produced no usable answer (transport, timeout, garbage).
/// A business refusal is not an error: it is `isValid: false` / `success: false`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FacilitatorError {
    /// Network failure or timeout: the request may or may not have arrived.
    #[error("facilitator unreachable: {0}")]
    Transport(#[source] TransportError),
    /// The facilitator cannot act now and sent nothing (its relayer has no
    /// gas, its node is syncing): nothing moved, try again later.
    #[error("facilitator unavailable: {0}")]
    Unavailable(String),
    /// An answer that is neither a verify/settle response nor a recognisable refusal.
    #[error("facilitator answered {status}: {message}")]
    BadAnswer {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
        /// Why the body did not parse, when that is the fault.
        #[source]
        source: Option<Cause>,
    },
}

impl FacilitatorError {
    /// A transport failure described by `text` alone (its cause already in the text).
    pub fn transport(text: impl Into<String>) -> Self {
        FacilitatorError::Transport(TransportError::new(text))
    }

    /// Whether the facilitator said it sent nothing ([`FacilitatorError::Unavailable`]):
    /// the payment cannot have moved.
    pub fn is_nothing_sent(&self) -> bool {
        matches!(self, FacilitatorError::Unavailable(_))
    }
}

/// A failed exchange with a facilitator (or its node): what failed, and the
/// error underneath when there is one.
///
/// The text already names the causes (`error sending request: connection
/// refused`) and never holds a URL (they carry API keys);
/// [`source`](std::error::Error::source) gives the typed cause for inspection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{text}")]
pub struct TransportError {
    text: String,
    #[source]
    source: Option<Cause>,
}

impl TransportError {
    /// A failure described by `text`.
    pub fn new(text: impl Into<String>) -> Self {
        TransportError {
            text: text.into(),
            source: None,
        }
    }

    /// A failure described by `text`, caused by `source`.
    pub fn with_source(
        text: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TransportError {
            text: text.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The description, causes included.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The facilitator API could not be configured or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The bearer key is shorter than 32 bytes.
    #[error("the facilitator API key must be at least 32 bytes")]
    KeyTooShort,
    /// An allowed host or origin is not usable.
    #[error("facilitator API: invalid allowed {what} {value:?}: {reason}")]
    InvalidAllowed {
        /// `host` or `origin`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Binding or serving failed.
    #[error("facilitator API: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`FacilitatorError`].
pub type Result<T, E = FacilitatorError> = std::result::Result<T, E>;

/// An error's text followed by its causes (`source()` chain): reqwest's
/// "error sending request" alone does not say "connection refused".
/// Causes whose text the previous one already includes are skipped.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_transport_error_keeps_its_cause_and_its_text() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = FacilitatorError::Transport(TransportError::with_source(
            "error sending request: refused",
            io,
        ));
        assert_eq!(
            e.to_string(),
            "facilitator unreachable: error sending request: refused"
        );
        let cause = e.source().and_then(|t| t.source()).map(|c| c.to_string());
        assert_eq!(cause.as_deref(), Some("refused"));
        assert!(!e.is_nothing_sent());
        assert!(FacilitatorError::Unavailable("no gas".into()).is_nothing_sent());
    }
}
