//! The one classifier of facilitator answers.
//!
//! A server asks a facilitator to verify, then to settle, and must decide
//! from the answer whether money moved. Every such decision is made here,
//! from the typed answer and [`FacilitatorReason`], never by matching strings
//! at the call site:
//!
//! | answer | verdict |
//! | --- | --- |
//! | verify: no answer (any error) | [`NotAttempted`](SettleVerdict::NotAttempted): nothing was sent |
//! | verify: `isValid: false` | [`Refused`](SettleVerdict::Refused) (any reason: settlement was never asked) |
//! | settle: [`FacilitatorError::Unavailable`] | [`NotAttempted`](SettleVerdict::NotAttempted): the facilitator sent nothing |
//! | settle: any other error | [`Unknown`](SettleVerdict::Unknown): money may have moved |
//! | settle: `success: true` | [`Settled`](SettleVerdict::Settled) |
//! | settle: `settlement_pending` | [`Pending`](SettleVerdict::Pending): settle the same payload again |
//! | settle: nonce used, with the earlier transaction | [`AlreadySettled`](SettleVerdict::AlreadySettled) |
//! | settle: a definite (`invalid_*`) reason | [`Refused`](SettleVerdict::Refused) |
//! | settle: any other failure | [`Unknown`](SettleVerdict::Unknown) |

use x402_types::x402::encode_header;
use x402_types::{
    Address, Amount, ErrorCode, FacilitatorReason, FacilitatorRequest, SettleResponse,
    VerifyResponse,
};

use crate::{Facilitator, FacilitatorError};

/// What a verify answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyVerdict {
    /// Valid: go on and settle.
    Valid {
        /// The payer the facilitator reports, if any.
        payer: Option<Address>,
    },
    /// Definitely refused: nothing moved, and settlement must not be asked.
    Refused {
        /// The facilitator's reason (`Other("")` when it gave none).
        reason: FacilitatorReason,
        /// `"<reason>: <invalidMessage>"`.
        message: String,
    },
    /// The facilitator could not be asked: nothing moved.
    NotAttempted {
        /// Why.
        reason: String,
    },
}

/// What a settle answer (or a verify answer that stops the payment) means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleVerdict {
    /// Nothing was sent, or the facilitator could not be asked: as good as
    /// never asked (only a first attempt can be credited or refused on this).
    NotAttempted {
        /// Why.
        reason: String,
    },
    /// A definite refusal: the facilitator checked the payment, nothing moved.
    Refused {
        /// The facilitator's reason.
        reason: FacilitatorReason,
        /// What to tell the payer.
        message: String,
    },
    /// Settled.
    Settled {
        /// The x402 settlement response header value (base64 of the answer).
        header: String,
        /// The payer the facilitator reports, if any.
        payer: Option<Address>,
        /// The amount the facilitator reports, if any.
        amount: Option<Amount>,
        /// The transaction hash (empty when nothing is on chain).
        transaction: String,
    },
    /// The authorization was settled before, by the transaction named: the
    /// answer a facilitator gives to a replay (`success: false`, nonce used)
    /// when it also names the earlier transaction. Whether that settlement
    /// is this server's own payment (a retry after a lost answer) is the
    /// caller's to decide, from its own record of the payment.
    AlreadySettled {
        /// The earlier transaction.
        transaction: String,
        /// The payer the facilitator reports, if any.
        payer: Option<Address>,
        /// The amount the facilitator reports, if any.
        amount: Option<Amount>,
    },
    /// Broadcast, receipt unknown (`settlement_pending`): settle the same
    /// payload again later; never ask the payer to pay again for it.
    Pending,
    /// No definite answer (lost, garbage, a failure without a definite
    /// reason): money may have moved. Settle the same payload again.
    Unknown {
        /// Why.
        reason: String,
    },
}

impl SettleVerdict {
    /// The code to refuse the payment with, for [`SettleVerdict::Refused`]:
    /// [`ErrorCode::PaymentUsed`] for a used nonce, else [`ErrorCode::PaymentInvalid`].
    pub fn refusal_code(&self) -> Option<ErrorCode> {
        match self {
            SettleVerdict::Refused { reason, .. } => Some(reason.error_code()),
            _ => None,
        }
    }

    /// Whether the verdict is final for the payment (no further settle attempt helps).
    pub fn is_final(&self) -> bool {
        !matches!(self, SettleVerdict::Pending | SettleVerdict::Unknown { .. })
    }
}

fn parse_payer(payer: Option<&str>) -> Option<Address> {
    payer.and_then(|p| p.parse().ok())
}

/// Classifies a verify answer.
pub fn classify_verify(answer: Result<VerifyResponse, FacilitatorError>) -> VerifyVerdict {
    match answer {
        Err(e) => VerifyVerdict::NotAttempted {
            reason: e.to_string(),
        },
        Ok(v) if !v.is_valid => {
            let reason = v
                .reason()
                .unwrap_or(FacilitatorReason::Other(String::new()));
            VerifyVerdict::Refused {
                message: format!("{reason}: {}", v.invalid_message.unwrap_or_default()),
                reason,
            }
        }
        Ok(v) => VerifyVerdict::Valid {
            payer: parse_payer(v.payer.as_deref()),
        },
    }
}

/// Classifies a settle answer.
pub fn classify_settle(answer: Result<SettleResponse, FacilitatorError>) -> SettleVerdict {
    let s = match answer {
        // Nothing was sent: as good as never asked.
        Err(FacilitatorError::Unavailable(reason)) => {
            return SettleVerdict::NotAttempted { reason };
        }
        Err(e) => {
            return SettleVerdict::Unknown {
                reason: e.to_string(),
            };
        }
        Ok(s) => s,
    };
    if s.success {
        return SettleVerdict::Settled {
            header: encode_header(&s),
            payer: parse_payer(s.payer.as_deref()),
            amount: s.amount,
            transaction: s.transaction,
        };
    }
    let reason = s
        .reason()
        .unwrap_or(FacilitatorReason::Other(String::new()));
    if reason.is_pending() {
        return SettleVerdict::Pending;
    }
    if reason.is_nonce_used() && !s.transaction.is_empty() {
        return SettleVerdict::AlreadySettled {
            payer: parse_payer(s.payer.as_deref()),
            amount: s.amount,
            transaction: s.transaction,
        };
    }
    // A verification-type reason is definite; anything else (a timeout
    // inside the facilitator, raw text) is not proof that nothing moved.
    if reason.is_definite() {
        SettleVerdict::Refused {
            message: format!("settlement refused: {reason}"),
            reason,
        }
    } else {
        SettleVerdict::Unknown {
            reason: format!("settlement failed without a definite reason: {reason}"),
        }
    }
}

impl From<VerifyVerdict> for Option<SettleVerdict> {
    /// The settle verdict a verify verdict already is (`None`: valid, go on and settle).
    fn from(v: VerifyVerdict) -> Self {
        match v {
            VerifyVerdict::Valid { .. } => None,
            VerifyVerdict::Refused { reason, message } => {
                Some(SettleVerdict::Refused { reason, message })
            }
            VerifyVerdict::NotAttempted { reason } => Some(SettleVerdict::NotAttempted { reason }),
        }
    }
}

/// One settlement attempt as a server runs it, classified: attempt 0
/// verifies, then settles if valid; later attempts (after [`Pending`] or
/// [`Unknown`]) settle the same payload again without verifying (its
/// window may have closed meanwhile, and the facilitator reconciles).
///
/// [`Pending`]: SettleVerdict::Pending
/// [`Unknown`]: SettleVerdict::Unknown
pub async fn settle_attempt(
    f: &dyn Facilitator,
    req: &FacilitatorRequest,
    attempt: u32,
) -> SettleVerdict {
    if attempt == 0
        && let Some(stop) = Option::<SettleVerdict>::from(classify_verify(f.verify(req).await))
    {
        return stop;
    }
    classify_settle(f.settle(req).await)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::TransportError;
    use x402_types::x402::decode_header;

    const PAYER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    const TX: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

    fn verify(valid: bool, reason: Option<&str>) -> VerifyResponse {
        VerifyResponse {
            extra: None,
            is_valid: valid,
            invalid_reason: reason.map(Into::into),
            invalid_message: reason.map(|_| "detail".into()),
            payer: Some(PAYER.into()),
        }
    }

    fn settle(success: bool, reason: Option<&str>, transaction: &str) -> SettleResponse {
        SettleResponse {
            extra: None,
            success,
            error_reason: reason.map(Into::into),
            payer: Some(PAYER.into()),
            transaction: transaction.into(),
            network: "eip155:84532".into(),
            amount: Some(Amount::from(10_000u64)),
        }
    }

    #[test]
    fn verify_answers() {
        assert_eq!(
            classify_verify(Ok(verify(true, None))),
            VerifyVerdict::Valid {
                payer: Some(PAYER.parse().unwrap())
            }
        );
        let refused = classify_verify(Ok(verify(
            false,
            Some("invalid_exact_evm_payload_signature"),
        )));
        assert_eq!(
            refused,
            VerifyVerdict::Refused {
                reason: FacilitatorReason::Signature,
                message: "invalid_exact_evm_payload_signature: detail".into()
            }
        );
        // Any refusal at verify is definite: settlement was never asked.
        let funds = classify_verify(Ok(verify(false, Some("insufficient_funds"))));
        assert!(matches!(
            funds,
            VerifyVerdict::Refused {
                reason: FacilitatorReason::InsufficientFunds,
                ..
            }
        ));
        let bare = classify_verify(Ok(verify(false, None)));
        assert!(
            matches!(bare, VerifyVerdict::Refused { reason: FacilitatorReason::Other(ref s), .. } if s.is_empty())
        );
        let lost = classify_verify(Err(FacilitatorError::transport("timed out")));
        assert_eq!(
            lost,
            VerifyVerdict::NotAttempted {
                reason: "facilitator unreachable: timed out".into()
            }
        );
    }

    #[test]
    fn a_success_is_settled_with_its_header() {
        let answer = settle(true, None, TX);
        let SettleVerdict::Settled {
            header,
            payer,
            amount,
            transaction,
        } = classify_settle(Ok(answer.clone()))
        else {
            panic!("not settled")
        };
        let back: SettleResponse = decode_header("PAYMENT-RESPONSE", &header).unwrap();
        assert_eq!(back, answer);
        assert_eq!(payer, Some(PAYER.parse().unwrap()));
        assert_eq!(amount, Some(Amount::from(10_000u64)));
        assert_eq!(transaction, TX);
        // A payer that is not an address is not invented.
        let mut odd = settle(true, None, "");
        odd.payer = Some("somebody".into());
        assert!(matches!(
            classify_settle(Ok(odd)),
            SettleVerdict::Settled { payer: None, .. }
        ));
    }

    #[test]
    fn pending_is_pending() {
        assert_eq!(
            classify_settle(Ok(settle(false, Some("settlement_pending"), TX))),
            SettleVerdict::Pending
        );
    }

    #[test]
    fn a_replay_answer_with_the_earlier_transaction_is_already_settled() {
        for reason in [
            "invalid_exact_evm_nonce_already_used",
            "invalid_exact_evm_payload_authorization_nonce_used",
        ] {
            assert_eq!(
                classify_settle(Ok(settle(false, Some(reason), TX))),
                SettleVerdict::AlreadySettled {
                    transaction: TX.into(),
                    payer: Some(PAYER.parse().unwrap()),
                    amount: Some(Amount::from(10_000u64)),
                }
            );
        }
    }

    #[test]
    fn a_used_nonce_without_a_transaction_is_refused_as_used() {
        let v = classify_settle(Ok(settle(
            false,
            Some("invalid_exact_evm_nonce_already_used"),
            "",
        )));
        assert!(
            matches!(
                v,
                SettleVerdict::Refused {
                    reason: FacilitatorReason::NonceAlreadyUsed,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(v.refusal_code(), Some(ErrorCode::PaymentUsed));
        assert!(v.is_final());
    }

    #[test]
    fn a_definite_reason_is_refused() {
        let v = classify_settle(Ok(settle(
            false,
            Some("invalid_exact_evm_payload_authorization_valid_before"),
            "",
        )));
        assert_eq!(
            v,
            SettleVerdict::Refused {
                reason: FacilitatorReason::ValidBefore,
                message: "settlement refused: invalid_exact_evm_payload_authorization_valid_before"
                    .into()
            }
        );
        assert_eq!(v.refusal_code(), Some(ErrorCode::PaymentInvalid));
    }

    #[test]
    fn anything_else_is_unknown() {
        for reason in [
            None,
            Some("transaction_failed"),
            Some("insufficient_funds"),
            Some("rpc timeout"),
        ] {
            let v = classify_settle(Ok(settle(false, reason, "")));
            assert!(
                matches!(v, SettleVerdict::Unknown { .. }),
                "{reason:?}: {v:?}"
            );
            assert!(!v.is_final());
        }
        // A v1 failure with raw text and a transaction is not proof of anything either.
        let v = classify_settle(Ok(settle(false, Some("receipt wait timed out"), TX)));
        assert_eq!(
            v,
            SettleVerdict::Unknown {
                reason: "settlement failed without a definite reason: receipt wait timed out"
                    .into()
            }
        );
    }

    #[test]
    fn errors_are_unknown_unless_nothing_was_sent() {
        assert_eq!(
            classify_settle(Err(FacilitatorError::Unavailable(
                "relayer has no gas".into()
            ))),
            SettleVerdict::NotAttempted {
                reason: "relayer has no gas".into()
            }
        );
        for e in [
            FacilitatorError::Transport(TransportError::new("connection reset")),
            FacilitatorError::BadAnswer {
                status: 502,
                message: "gateway".into(),
                source: None,
            },
        ] {
            let text = e.to_string();
            assert_eq!(
                classify_settle(Err(e)),
                SettleVerdict::Unknown { reason: text }
            );
        }
    }

    #[tokio::test]
    async fn an_attempt_verifies_first_and_retries_only_settle() {
        let f = crate::EmbeddedFacilitator::default();
        let req = crate::embedded::tests::request(x402_types::PathVersion::V2);
        let first = settle_attempt(&f, &req, 0).await;
        assert!(matches!(first, SettleVerdict::Settled { .. }), "{first:?}");
        // Attempt 0 again: verify already sees the used nonce.
        let again = settle_attempt(&f, &req, 0).await;
        assert!(
            matches!(
                again,
                SettleVerdict::Refused {
                    reason: FacilitatorReason::NonceAlreadyUsed,
                    ..
                }
            ),
            "{again:?}"
        );
        // A later attempt (its answer was lost, say) settles only: the replay
        // refusal names the earlier settlement.
        let retry = settle_attempt(&f, &req, 1).await;
        assert!(
            matches!(&retry, SettleVerdict::AlreadySettled { transaction, amount: Some(_), payer: Some(_) } if transaction.starts_with("embedded:")),
            "{retry:?}"
        );
    }
}
