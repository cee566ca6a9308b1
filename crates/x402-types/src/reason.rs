//! The one vocabulary of facilitator reasons: the `invalidReason` of a verify
//! answer and the `errorReason` of a settle answer.
//!
//! Facilitators name failures differently (and v1 differently from v2), so
//! reasons stay opaque on the wire; this enum names the ones we emit or read,
//! keeps any other string in [`FacilitatorReason::Other`], and answers the two
//! questions a server asks of a refusal: is it definite
//! ([`is_definite`](FacilitatorReason::is_definite)) and is it a used nonce
//! ([`is_nonce_used`](FacilitatorReason::is_nonce_used)).
//!
//! ```
//! use x402_types::{ErrorCode, FacilitatorReason};
//!
//! let r = FacilitatorReason::parse("invalid_exact_evm_nonce_already_used");
//! assert_eq!(r, FacilitatorReason::NonceAlreadyUsed);
//! assert!(r.is_definite() && r.is_nonce_used());
//! assert_eq!(r.error_code(), ErrorCode::PaymentUsed);
//! // Unknown strings are kept as they came.
//! let other = FacilitatorReason::parse("facilitator_on_fire");
//! assert_eq!(other.as_str(), "facilitator_on_fire");
//! assert!(!other.is_definite());
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ErrorCode, ReasonFamily};

/// A facilitator's reason for refusing a payment (or for not settling it yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FacilitatorReason {
    /// `unsupported_scheme`: the scheme is not one the facilitator handles.
    UnsupportedScheme,
    /// `invalid_network`: the payload or requirement names another network.
    InvalidNetwork,
    /// `invalid_payment_requirements`: the payload's `accepted` differs from the requirement.
    InvalidPaymentRequirements,
    /// `invalid_payload`: not a payload of the scheme.
    InvalidPayload,
    /// `invalid_exact_evm_payload_asset`: the asset or its EIP-712 domain is wrong.
    InvalidAsset,
    /// `invalid_exact_evm_missing_eip712_domain`: `extra.name`/`extra.version` absent
    /// (the official facilitator).
    MissingEip712Domain,
    /// `invalid_exact_evm_payload_recipient_mismatch`: `to` is not `payTo`.
    RecipientMismatch,
    /// `invalid_exact_evm_payload_authorization_value`: the value is not the amount (ours).
    AuthorizationValue,
    /// `invalid_exact_evm_payload_authorization_value_mismatch`: the same, as the
    /// official v2 facilitator names it.
    AuthorizationValueMismatch,
    /// `invalid_exact_evm_authorization_value`: the same, as the official v1
    /// facilitator names it.
    AuthorizationValueV1,
    /// `invalid_exact_evm_payload_authorization_valid_after`: not valid yet.
    ValidAfter,
    /// `invalid_exact_evm_payload_authorization_valid_before`: expired (or too close to it).
    ValidBefore,
    /// `invalid_exact_evm_payload_signature`: the signature does not recover to the payer.
    Signature,
    /// `invalid_exact_evm_nonce_already_used`: the authorization was used before (the
    /// official facilitator's answer to a replay; our facilitators' too).
    NonceAlreadyUsed,
    /// `insufficient_funds`: the payer's balance is below the amount.
    InsufficientFunds,
    /// `invalid_exact_evm_insufficient_balance`: the same, as the official facilitator names it.
    InsufficientBalance,
    /// `invalid_exact_evm_transaction_simulation_failed`: the settlement would revert.
    SimulationFailed,
    /// `invalid_transaction_state`: the settlement was mined and reverted.
    TransactionState,
    /// `transaction_failed`: the official facilitator's settle failure (a v1 receipt
    /// timeout among others): not proof that nothing moved.
    TransactionFailed,
    /// `settlement_pending`: broadcast, receipt unknown. Never pay again for it.
    SettlementPending,
    /// A reason this version does not know, kept as it came.
    Other(String),
}

/// Earlier spellings read as a known reason.
const ALIASES: [(&str, FacilitatorReason); 1] = [
    // The embedded facilitator's replay reason before the official one was adopted.
    (
        "invalid_exact_evm_payload_authorization_nonce_used",
        FacilitatorReason::NonceAlreadyUsed,
    ),
];

impl FacilitatorReason {
    /// Every known reason, for tests and docs.
    pub const KNOWN: [FacilitatorReason; 20] = [
        FacilitatorReason::UnsupportedScheme,
        FacilitatorReason::InvalidNetwork,
        FacilitatorReason::InvalidPaymentRequirements,
        FacilitatorReason::InvalidPayload,
        FacilitatorReason::InvalidAsset,
        FacilitatorReason::MissingEip712Domain,
        FacilitatorReason::RecipientMismatch,
        FacilitatorReason::AuthorizationValue,
        FacilitatorReason::AuthorizationValueMismatch,
        FacilitatorReason::AuthorizationValueV1,
        FacilitatorReason::ValidAfter,
        FacilitatorReason::ValidBefore,
        FacilitatorReason::Signature,
        FacilitatorReason::NonceAlreadyUsed,
        FacilitatorReason::InsufficientFunds,
        FacilitatorReason::InsufficientBalance,
        FacilitatorReason::SimulationFailed,
        FacilitatorReason::TransactionState,
        FacilitatorReason::TransactionFailed,
        FacilitatorReason::SettlementPending,
    ];

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            FacilitatorReason::UnsupportedScheme => "unsupported_scheme",
            FacilitatorReason::InvalidNetwork => "invalid_network",
            FacilitatorReason::InvalidPaymentRequirements => "invalid_payment_requirements",
            FacilitatorReason::InvalidPayload => "invalid_payload",
            FacilitatorReason::InvalidAsset => "invalid_exact_evm_payload_asset",
            FacilitatorReason::MissingEip712Domain => "invalid_exact_evm_missing_eip712_domain",
            FacilitatorReason::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            FacilitatorReason::AuthorizationValue => {
                "invalid_exact_evm_payload_authorization_value"
            }
            FacilitatorReason::AuthorizationValueMismatch => {
                "invalid_exact_evm_payload_authorization_value_mismatch"
            }
            FacilitatorReason::AuthorizationValueV1 => "invalid_exact_evm_authorization_value",
            FacilitatorReason::ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
            FacilitatorReason::ValidBefore => {
                "invalid_exact_evm_payload_authorization_valid_before"
            }
            FacilitatorReason::Signature => "invalid_exact_evm_payload_signature",
            FacilitatorReason::NonceAlreadyUsed => "invalid_exact_evm_nonce_already_used",
            FacilitatorReason::InsufficientFunds => "insufficient_funds",
            FacilitatorReason::InsufficientBalance => "invalid_exact_evm_insufficient_balance",
            FacilitatorReason::SimulationFailed => {
                "invalid_exact_evm_transaction_simulation_failed"
            }
            FacilitatorReason::TransactionState => "invalid_transaction_state",
            FacilitatorReason::TransactionFailed => "transaction_failed",
            FacilitatorReason::SettlementPending => "settlement_pending",
            FacilitatorReason::Other(s) => s,
        }
    }

    /// Parses a wire string (never fails: unknown reasons are kept; the
    /// embedded facilitator's former replay reason reads as
    /// [`NonceAlreadyUsed`](FacilitatorReason::NonceAlreadyUsed)).
    pub fn parse(s: &str) -> FacilitatorReason {
        Self::KNOWN
            .iter()
            .find(|r| r.as_str() == s)
            .or_else(|| ALIASES.iter().find(|(a, _)| *a == s).map(|(_, r)| r))
            .cloned()
            .unwrap_or_else(|| FacilitatorReason::Other(s.to_string()))
    }

    /// Whether the refusal is definite: the facilitator checked the payment
    /// and found it invalid, so nothing moved (a verification-type
    /// `invalid_*` reason). Anything else (`insufficient_funds`,
    /// `transaction_failed`, `settlement_pending`, raw text from a timeout
    /// inside the facilitator) is not proof that no money moved.
    pub fn is_definite(&self) -> bool {
        self.as_str().starts_with("invalid_")
    }

    /// Whether the reason says the authorization's nonce was used before
    /// (any facilitator's spelling: a known one, or an unknown reason naming
    /// a nonce and "used").
    pub fn is_nonce_used(&self) -> bool {
        match self {
            FacilitatorReason::NonceAlreadyUsed => true,
            FacilitatorReason::Other(s) => s.contains("nonce") && s.contains("used"),
            _ => false,
        }
    }

    /// Whether the facilitator broadcast the settlement and waits for its receipt.
    pub fn is_pending(&self) -> bool {
        *self == FacilitatorReason::SettlementPending
    }

    /// The code a server refuses the payment with:
    /// [`ErrorCode::PaymentUsed`] for a used nonce, else [`ErrorCode::PaymentInvalid`].
    pub fn error_code(&self) -> ErrorCode {
        if self.is_nonce_used() {
            ErrorCode::PaymentUsed
        } else {
            ErrorCode::PaymentInvalid
        }
    }

    /// The family of the failure (signature, time window, amount, ...).
    pub fn family(&self) -> ReasonFamily {
        ReasonFamily::classify(self.as_str())
    }
}

impl From<&str> for FacilitatorReason {
    fn from(s: &str) -> Self {
        FacilitatorReason::parse(s)
    }
}

impl From<FacilitatorReason> for String {
    fn from(r: FacilitatorReason) -> Self {
        match r {
            FacilitatorReason::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for FacilitatorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FacilitatorReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FacilitatorReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(FacilitatorReason::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_reason_round_trips_and_unknown_is_kept() {
        for r in FacilitatorReason::KNOWN {
            assert_eq!(FacilitatorReason::parse(r.as_str()), r);
            let j = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(j, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<FacilitatorReason>(&j).ok(), Some(r));
        }
        let other = FacilitatorReason::parse("settlement failed: timeout");
        assert_eq!(
            other,
            FacilitatorReason::Other("settlement failed: timeout".into())
        );
        assert_eq!(String::from(other), "settlement failed: timeout");
    }

    #[test]
    fn both_nonce_used_spellings_are_one_reason() {
        let old = FacilitatorReason::parse("invalid_exact_evm_payload_authorization_nonce_used");
        assert_eq!(old, FacilitatorReason::NonceAlreadyUsed);
        assert_eq!(old.as_str(), "invalid_exact_evm_nonce_already_used");
        assert!(FacilitatorReason::parse("nonce_already_used").is_nonce_used());
        assert!(FacilitatorReason::parse("invalid_nonce_used_elsewhere").is_nonce_used());
        assert!(!FacilitatorReason::Signature.is_nonce_used());
        assert_eq!(
            FacilitatorReason::NonceAlreadyUsed.error_code(),
            ErrorCode::PaymentUsed
        );
        assert_eq!(
            FacilitatorReason::Signature.error_code(),
            ErrorCode::PaymentInvalid
        );
        assert_eq!(
            FacilitatorReason::NonceAlreadyUsed.family(),
            ReasonFamily::Nonce
        );
    }

    #[test]
    fn only_verification_reasons_are_definite() {
        for r in [
            FacilitatorReason::Signature,
            FacilitatorReason::ValidBefore,
            FacilitatorReason::NonceAlreadyUsed,
            FacilitatorReason::InvalidNetwork,
            FacilitatorReason::parse("invalid_something_new"),
        ] {
            assert!(r.is_definite(), "{r}");
        }
        for r in [
            FacilitatorReason::SettlementPending,
            FacilitatorReason::TransactionFailed,
            FacilitatorReason::InsufficientFunds,
            FacilitatorReason::UnsupportedScheme,
            FacilitatorReason::parse(""),
            FacilitatorReason::parse("request timed out"),
        ] {
            assert!(!r.is_definite(), "{r}");
        }
        assert!(FacilitatorReason::SettlementPending.is_pending());
    }
}
