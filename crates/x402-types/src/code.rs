//! The one vocabulary of refusal and notice codes: the `error` field of HTTP
//! error bodies and the `code` of socket `error` messages.
//!
//! Servers write these, clients and tests match on them; nobody compares
//! strings. Codes this version does not know are kept in [`ErrorCode::Other`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A machine-readable refusal or notice code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 402: no payment attached and no paid time left.
    PaymentRequired,
    /// 402: the payment was definitely refused (signature, amount, window, ...).
    /// Nothing moved; the payer may sign anew.
    PaymentInvalid,
    /// 402: the authorization's `validBefore` lies further ahead than the
    /// requirement's `maxTimeoutSeconds` (plus clock skew) allows: a window
    /// the server could not settle within. Nothing moved; sign anew.
    ValidityTooLong,
    /// 202: the payment's settlement is under way; retry the same payload
    /// after `Retry-After` seconds. Never sign anew for it.
    PaymentPending,
    /// 409: this authorization (payer and nonce) was already used by another
    /// payload or session.
    PaymentUsed,
    /// 409: the `payment-identifier` was already used with another payload.
    PaymentIdConflict,
    /// 502: the facilitator's answer about a settlement could not be trusted
    /// or was lost for good; the payment may have moved money. Nothing was
    /// credited; the operator reconciles it.
    SettlementUnknown,
    /// 409: buying this slice would pay beyond the prepaid horizon; retry later.
    HorizonExceeded,
    /// 401: the token failed its check.
    TokenInvalid,
    /// 410: the unpaid quote expired; fetch the schema again.
    QuoteExpired,
    /// 404: no such stream or version.
    UnknownStream,
    /// 429: the server holds as many sessions as it may.
    TooManySessions,
    /// 429: too many sockets from one address.
    TooManyConnections,
    /// 429: rate limited.
    RateLimited,
    /// 400: malformed request.
    BadRequest,
    /// 401: missing or wrong bearer key (facilitator API).
    Unauthorized,
    /// 503: the facilitator could not be asked, nothing moved; retry the same payload.
    FacilitatorUnavailable,
    /// 503: the server cannot record payments right now; retry later.
    StoreUnavailable,
    /// 503: the stream's source has failed, so it is not sold now (the
    /// message says why). As a socket notice: events stopped mid-slice.
    SourceUnavailable,
    /// Socket notice: events were evicted from the replay buffer (`count`).
    EventsLost,
    /// Socket notice: events published while the session was not paid were
    /// skipped (`count`); paid time buys only events published during it.
    EventsSkipped,
    /// A code this version does not know.
    Other(String),
}

impl ErrorCode {
    /// Every known code, for tests and docs.
    pub const KNOWN: [ErrorCode; 21] = [
        ErrorCode::PaymentRequired,
        ErrorCode::PaymentInvalid,
        ErrorCode::ValidityTooLong,
        ErrorCode::PaymentPending,
        ErrorCode::PaymentUsed,
        ErrorCode::PaymentIdConflict,
        ErrorCode::SettlementUnknown,
        ErrorCode::HorizonExceeded,
        ErrorCode::TokenInvalid,
        ErrorCode::QuoteExpired,
        ErrorCode::UnknownStream,
        ErrorCode::TooManySessions,
        ErrorCode::TooManyConnections,
        ErrorCode::RateLimited,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::FacilitatorUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::SourceUnavailable,
        ErrorCode::EventsLost,
        ErrorCode::EventsSkipped,
    ];

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::PaymentRequired => "payment_required",
            ErrorCode::PaymentInvalid => "payment_invalid",
            ErrorCode::ValidityTooLong => "validity_too_long",
            ErrorCode::PaymentPending => "payment_pending",
            ErrorCode::PaymentUsed => "payment_used",
            ErrorCode::PaymentIdConflict => "payment_id_conflict",
            ErrorCode::SettlementUnknown => "settlement_unknown",
            ErrorCode::HorizonExceeded => "horizon_exceeded",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::QuoteExpired => "quote_expired",
            ErrorCode::UnknownStream => "unknown_stream",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::FacilitatorUnavailable => "facilitator_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::SourceUnavailable => "source_unavailable",
            ErrorCode::EventsLost => "events_lost",
            ErrorCode::EventsSkipped => "events_skipped",
            ErrorCode::Other(s) => s,
        }
    }

    /// Parses a wire string (never fails: unknown codes are kept).
    pub fn parse(s: &str) -> ErrorCode {
        Self::KNOWN
            .iter()
            .find(|c| c.as_str() == s)
            .cloned()
            .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }

    /// The HTTP status a server answers with this code (socket notices: 200).
    pub fn status(&self) -> u16 {
        match self {
            ErrorCode::PaymentRequired | ErrorCode::PaymentInvalid | ErrorCode::ValidityTooLong => {
                402
            }
            ErrorCode::PaymentPending => 202,
            ErrorCode::PaymentUsed | ErrorCode::PaymentIdConflict | ErrorCode::HorizonExceeded => {
                409
            }
            ErrorCode::SettlementUnknown => 502,
            ErrorCode::TokenInvalid | ErrorCode::Unauthorized => 401,
            ErrorCode::QuoteExpired => 410,
            ErrorCode::UnknownStream => 404,
            ErrorCode::TooManySessions | ErrorCode::TooManyConnections | ErrorCode::RateLimited => {
                429
            }
            ErrorCode::BadRequest => 400,
            ErrorCode::FacilitatorUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::SourceUnavailable => 503,
            ErrorCode::EventsLost | ErrorCode::EventsSkipped | ErrorCode::Other(_) => 200,
        }
    }

    /// The one retry rule: an answer with this code (or [`is_retryable_status`])
    /// means "send the *same* signed payload again later"; any other refusal is
    /// definite.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::PaymentPending
                | ErrorCode::HorizonExceeded
                | ErrorCode::TooManySessions
                | ErrorCode::TooManyConnections
                | ErrorCode::RateLimited
                | ErrorCode::FacilitatorUnavailable
                | ErrorCode::StoreUnavailable
                | ErrorCode::SourceUnavailable
        )
    }

    /// Whether money may have moved for a payment refused with this code,
    /// so the payer must keep counting it as spent.
    pub fn maybe_spent(&self) -> bool {
        matches!(
            self,
            ErrorCode::PaymentUsed | ErrorCode::SettlementUnknown | ErrorCode::PaymentIdConflict
        )
    }
}

/// The one retryable-status rule for answers without a known code:
/// 202 (pending), 408, 429 and 5xx other than 502 `settlement_unknown`.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 202 | 408 | 429 | 500 | 501 | 503..=599)
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_round_trips_and_unknown_is_kept() {
        for c in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::parse(c.as_str()), c);
            let j = serde_json::to_string(&c).unwrap_or_default();
            assert_eq!(serde_json::from_str::<ErrorCode>(&j).ok(), Some(c));
        }
        assert_eq!(
            ErrorCode::parse("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }

    #[test]
    fn pending_is_a_retry_and_used_is_maybe_spent() {
        assert!(ErrorCode::PaymentPending.is_retryable());
        assert_eq!(ErrorCode::PaymentPending.status(), 202);
        assert!(!ErrorCode::PaymentInvalid.is_retryable());
        assert!(ErrorCode::PaymentUsed.maybe_spent());
        assert!(!ErrorCode::PaymentInvalid.maybe_spent());
        assert!(is_retryable_status(503) && !is_retryable_status(402));
    }
}
