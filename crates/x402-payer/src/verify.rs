//! Server-side verification of EVM `exact` payments, with the reference facilitators' checks.

use x402_types::{
    Address, FacilitatorReason, PaymentPayload, PaymentRequirements, Requirement, U256,
};

use crate::eip712::digest;
use crate::error::SignatureError;
use crate::payer::domain_for;
use crate::signer::recover;

/// Minimum seconds of validity left that a verifier requires (`validBefore >= now + 6`).
pub const MIN_VALIDITY_LEFT: u64 = 6;

/// Why a payment does not pay a requirement. Each maps to an x402 reason string.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// Scheme differs.
    #[error("scheme mismatch: expected {expected:?}, got {got:?}")]
    Scheme {
        /// Required.
        expected: String,
        /// Paid.
        got: String,
    },
    /// Network differs.
    #[error("network mismatch: expected {expected}, got {got}")]
    Network {
        /// Required.
        expected: String,
        /// Paid.
        got: String,
    },
    /// The v2 `accepted` is not the requirement.
    #[error("accepted requirement differs from the one offered")]
    AcceptedMismatch,
    /// The payload is not an EVM `exact` payload.
    #[error("payload is not an EVM exact payload")]
    UnsupportedPayload,
    /// The EIP-712 domain cannot be determined (asset unknown, no extra).
    #[error("cannot determine EIP-712 domain: {0}")]
    Domain(String),
    /// Recipient differs.
    #[error("recipient mismatch: expected {expected}, got {got}")]
    Recipient {
        /// Required.
        expected: String,
        /// Paid.
        got: Address,
    },
    /// Amount differs (reference verifiers require equality).
    #[error("amount mismatch: expected {expected}, got {got}")]
    Amount {
        /// Required.
        expected: U256,
        /// Paid.
        got: U256,
    },
    /// `validAfter` is in the future.
    #[error("authorization not yet valid: validAfter {valid_after} > now {now}")]
    NotYetValid {
        /// validAfter.
        valid_after: U256,
        /// Verifier's now.
        now: u64,
    },
    /// `validBefore` is too close or past.
    #[error(
        "authorization expired or about to: validBefore {valid_before} < now + {MIN_VALIDITY_LEFT} ({now})"
    )]
    Expired {
        /// validBefore.
        valid_before: U256,
        /// Verifier's now.
        now: u64,
    },
    /// The signature is malformed, malleable or unrecoverable.
    #[error("bad signature: {0}")]
    Signature(#[from] SignatureError),
    /// The signature recovers to someone other than `from`.
    #[error("signature recovers to {recovered}, not {from}")]
    SignerMismatch {
        /// Recovered address.
        recovered: Address,
        /// Claimed payer.
        from: Address,
    },
}

impl VerifyFailure {
    /// The x402 reason (as the reference facilitators name them).
    pub fn reason(&self) -> FacilitatorReason {
        match self {
            VerifyFailure::Scheme { .. } => FacilitatorReason::UnsupportedScheme,
            VerifyFailure::Network { .. } => FacilitatorReason::InvalidNetwork,
            VerifyFailure::AcceptedMismatch => FacilitatorReason::InvalidPaymentRequirements,
            VerifyFailure::UnsupportedPayload => FacilitatorReason::InvalidPayload,
            VerifyFailure::Domain(_) => FacilitatorReason::InvalidAsset,
            VerifyFailure::Recipient { .. } => FacilitatorReason::RecipientMismatch,
            VerifyFailure::Amount { .. } => FacilitatorReason::AuthorizationValue,
            VerifyFailure::NotYetValid { .. } => FacilitatorReason::ValidAfter,
            VerifyFailure::Expired { .. } => FacilitatorReason::ValidBefore,
            VerifyFailure::Signature(_) | VerifyFailure::SignerMismatch { .. } => {
                FacilitatorReason::Signature
            }
        }
    }
}

/// Checks that `payload` pays `requirements` at unix time `now`; returns the payer.
///
/// Nonce replay is the caller's to check (it owns the nonce store).
pub fn verify_exact(
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
    now: u64,
) -> Result<Address, VerifyFailure> {
    let req: Requirement = requirements.requirement();
    match (payload, requirements) {
        (PaymentPayload::V1(p), _) => {
            if p.scheme != req.scheme {
                return Err(VerifyFailure::Scheme {
                    expected: req.scheme,
                    got: p.scheme.clone(),
                });
            }
            if p.network != req.network {
                return Err(VerifyFailure::Network {
                    expected: req.network.caip2(),
                    got: p.network.caip2(),
                });
            }
        }
        (PaymentPayload::V2(p), PaymentRequirements::V2(r)) => {
            let a = p.accepted.get();
            if a.scheme != req.scheme {
                return Err(VerifyFailure::Scheme {
                    expected: req.scheme,
                    got: a.scheme.clone(),
                });
            }
            if a.network != req.network {
                return Err(VerifyFailure::Network {
                    expected: req.network.caip2(),
                    got: a.network.caip2(),
                });
            }
            if !p.accepted.json_eq(r) {
                return Err(VerifyFailure::AcceptedMismatch);
            }
        }
        (PaymentPayload::V2(_), PaymentRequirements::V1(_)) => {
            return Err(VerifyFailure::AcceptedMismatch);
        }
    }
    if req.scheme != "exact" {
        return Err(VerifyFailure::Scheme {
            expected: "exact".into(),
            got: req.scheme,
        });
    }
    let evm = payload
        .exact_evm()
        .ok_or(VerifyFailure::UnsupportedPayload)?;
    let auth = &evm.authorization;
    let separator = cached_separator(&req)?;
    let pay_to: Option<Address> = req.pay_to.parse().ok();
    if pay_to != Some(auth.to) {
        return Err(VerifyFailure::Recipient {
            expected: req.pay_to,
            got: auth.to,
        });
    }
    if auth.value != req.amount {
        return Err(VerifyFailure::Amount {
            expected: req.amount.atomic(),
            got: auth.value.atomic(),
        });
    }
    if auth.valid_after > U256::from_u64(now) {
        return Err(VerifyFailure::NotYetValid {
            valid_after: auth.valid_after,
            now,
        });
    }
    if auth.valid_before < U256::from_u64(now.saturating_add(MIN_VALIDITY_LEFT)) {
        return Err(VerifyFailure::Expired {
            valid_before: auth.valid_before,
            now,
        });
    }
    let d = digest(&separator, auth);
    let recovered = recover(&d, &evm.signature)?;
    if recovered != auth.from {
        return Err(VerifyFailure::SignerMismatch {
            recovered,
            from: auth.from,
        });
    }
    Ok(auth.from)
}

/// Checks only that `payload`'s EIP-3009 signature recovers to its
/// `from` under the requirement's EIP-712 domain: what no amount of waiting
/// changes. A payload failing it can never move money (a junk copy).
pub fn verify_signature(
    payload: &PaymentPayload,
    requirements: &PaymentRequirements,
) -> Result<Address, VerifyFailure> {
    let req: Requirement = requirements.requirement();
    let evm = payload
        .exact_evm()
        .ok_or(VerifyFailure::UnsupportedPayload)?;
    let auth = &evm.authorization;
    let separator = cached_separator(&req)?;
    let recovered = recover(&digest(&separator, auth), &evm.signature)?;
    if recovered != auth.from {
        return Err(VerifyFailure::SignerMismatch {
            recovered,
            from: auth.from,
        });
    }
    Ok(auth.from)
}

type SeparatorKey = (String, u64, Option<serde_json::Value>);

thread_local! {
    /// The last domain resolved on this thread: a server verifies the same terms again and again.
    static LAST_DOMAIN: std::cell::RefCell<Option<(SeparatorKey, [u8; 32])>> = const { std::cell::RefCell::new(None) };
}

fn cached_separator(req: &Requirement) -> Result<[u8; 32], VerifyFailure> {
    let chain = req.network.chain_id().unwrap_or_default();
    let hit = LAST_DOMAIN.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|((a, ch, ex), _)| {
                *ch == chain && *a == req.asset && ex.as_ref() == req.extra.as_ref()
            })
            .map(|(_, s)| *s)
    });
    if let Some(s) = hit {
        return Ok(s);
    }
    let sep = domain_for(req)
        .map_err(|e| VerifyFailure::Domain(e.to_string()))?
        .separator();
    LAST_DOMAIN
        .with(|c| *c.borrow_mut() = Some(((req.asset.clone(), chain, req.extra.clone()), sep)));
    Ok(sep)
}
