//! Errors of the session machines.

/// Misuse of a session machine's API (a driver bug), as opposed to a peer's
/// fault (which ends the session with a reason, as an event).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// An input was given while outputs were still queued: drain
    /// `poll_transmit` and `poll_event` after every input.
    #[error(
        "outputs not drained before the next input ({transmits} transmits, {events} events queued)"
    )]
    NotDrained {
        /// Transmits still queued.
        transmits: usize,
        /// Events still queued.
        events: usize,
    },
    /// `open` called twice.
    #[error("session already opened")]
    AlreadyOpen,
    /// A payment was handed in that was not asked for.
    #[error("no payment was requested for slice {slice}")]
    UnexpectedPayment {
        /// The slice the payment claims to be for.
        slice: u64,
    },
    /// The payload's version differs from the session's.
    #[error("payment payload is for another x402 version")]
    WrongPaymentVersion,
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}
