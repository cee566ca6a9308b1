//! What a session's events and end reasons say to a person: one wording,
//! used by the facade, the CLI, the demo and the examples alike. Times are
//! UTC clock times (this crate reads no clock and knows no time zone; an
//! application that wants local times formats [`Hello::expires_at`] itself),
//! durations are human (`4.2s`, `3m05s`), amounts are left to the caller.
//!
//! [`Hello::expires_at`]: x402_types::Hello::expires_at

use std::fmt;
use std::time::Duration;

use super::{ClientEvent, EndReason};

/// A duration as a person reads it: `0.3s`, `12s`, `3m05s`, `2h04m`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(x402_session::human(Duration::from_millis(113)), "0.1s");
/// assert_eq!(x402_session::human(Duration::from_secs(185)), "3m05s");
/// ```
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{:.1}s", d.as_secs_f64()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Unix seconds as a UTC clock time: `17:13:34 UTC`.
///
/// ```
/// assert_eq!(x402_session::utc_clock(1_795_697_562), "12:52:42 UTC");
/// ```
pub fn utc_clock(unix: u64) -> String {
    let day = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        (day % 3600) / 60,
        day % 60
    )
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Stopped => f.write_str("stopped as asked"),
            EndReason::SliceLimit => {
                f.write_str("the requested number of slices was bought and used")
            }
            EndReason::StreamEnded { reason } => {
                write!(f, "the server ended the stream ({reason})")
            }
            EndReason::PaymentDeclined {
                message,
                policy: true,
            } => write!(f, "the spending policy declined the next slice: {message}"),
            EndReason::PaymentDeclined { message, .. } => {
                write!(f, "the wallet could not sign the next payment: {message}")
            }
            EndReason::PaymentRefused { code, message, .. } if code.maybe_spent() => write!(
                f,
                "the server refused a payment that may have moved money ({code}: {message}); \
                 it stays counted against the budget"
            ),
            EndReason::PaymentRefused {
                status,
                code,
                message,
            } => write!(
                f,
                "the server refused the payment ({status} {code}: {message}); nothing more was signed"
            ),
            EndReason::Superseded => f.write_str(
                "another connection took over this session (the same token was opened elsewhere)",
            ),
            EndReason::TokenRejected { code } => write!(
                f,
                "the server no longer accepts this session's token ({code}); a new quote is needed"
            ),
            EndReason::ConnectionLost { attempts } => write!(
                f,
                "the connection could not be restored after {attempts} attempts"
            ),
            EndReason::ProtocolViolation(m) => {
                write!(
                    f,
                    "the server broke the protocol ({m}); nothing more was paid"
                )
            }
            EndReason::Unavailable {
                status,
                code,
                message,
            } => write!(
                f,
                "the server cannot sell this stream now ({status} {code}: {message}); nothing was paid"
            ),
            EndReason::UnknownStream { message } => {
                write!(
                    f,
                    "the server sells no such stream ({message}); nothing was paid"
                )
            }
        }
    }
}

impl fmt::Display for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEvent::PaymentNeeded { slice, offer } => write!(
                f,
                "slice {slice} needs a payment of {} atomic units",
                offer.requirement().amount
            ),
            ClientEvent::PaymentAccepted { slice, settlement } => match settlement {
                Some(s) if !s.transaction.is_empty() => {
                    write!(f, "paid slice {slice} (transaction {})", s.transaction)
                }
                _ => write!(f, "paid slice {slice}"),
            },
            ClientEvent::PaymentRefused { slice, code, .. }
                if code.as_str() == x402_types::batch::reasons::CUMULATIVE_AMOUNT_MISMATCH =>
            {
                write!(
                    f,
                    "slice {slice}: the server's channel total differs from ours (it gave back \
                     charge for paid time not used); checking its total and signing again"
                )
            }
            ClientEvent::PaymentRefused {
                slice,
                status,
                code,
                ..
            } => write!(
                f,
                "the server refused the payment for slice {slice} ({status} {code})"
            ),
            ClientEvent::PaymentPending { slice, retry_after } => write!(
                f,
                "slice {slice}: the server is still settling the payment; asking again in {}",
                human(*retry_after)
            ),
            ClientEvent::Hello(h) => write!(
                f,
                "connected: session {}, {}-second slices, paid until {}{}",
                h.session_id.chars().take(8).collect::<String>(),
                h.slice_seconds,
                utc_clock(h.expires_at),
                if h.resumed { " (resumed)" } else { "" }
            ),
            ClientEvent::Resumed { missed } => write!(
                f,
                "resumed where it stopped ({missed} events could not be replayed)"
            ),
            ClientEvent::Data(e) => write!(f, "event {}: {}", e.seq, e.data),
            ClientEvent::Renewed { expires_at, slices } => write!(
                f,
                "renewed: {slices} slices bought, paid until {}",
                utc_clock(*expires_at)
            ),
            ClientEvent::Expiring { seconds_left } => {
                write!(f, "paid time runs out in {seconds_left}s")
            }
            ClientEvent::Expired => f.write_str("paid time ran out"),
            ClientEvent::EventsLost { count } => write!(
                f,
                "{count} events were lost (evicted from the server's replay buffer)"
            ),
            ClientEvent::EventsSkipped { count } => {
                write!(f, "{count} events published while unpaid were skipped")
            }
            ClientEvent::SourceUnavailable { message } => write!(
                f,
                "the server says the stream's source failed: {message} (paid time keeps running)"
            ),
            ClientEvent::Duplicate { seq } => write!(f, "duplicate event {seq} dropped"),
            ClientEvent::Reconnecting { attempt, delay } => write!(
                f,
                "connection lost: reconnecting in {} (attempt {attempt})",
                human(*delay)
            ),
            ClientEvent::Ended(r) => write!(f, "ended: {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_clocks_read_like_a_person_wrote_them() {
        assert_eq!(human(Duration::from_millis(113_307)), "1m53s");
        assert_eq!(human(Duration::from_secs(7_440)), "2h04m");
        assert_eq!(utc_clock(0), "00:00:00 UTC");
        let e = ClientEvent::Reconnecting {
            attempt: 1,
            delay: Duration::from_nanos(113_307_471),
        };
        assert_eq!(
            e.to_string(),
            "connection lost: reconnecting in 0.1s (attempt 1)"
        );
        assert_eq!(
            ClientEvent::Ended(EndReason::ConnectionLost { attempts: 10 }).to_string(),
            "ended: the connection could not be restored after 10 attempts"
        );
    }
}
