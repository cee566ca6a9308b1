//! The embedded facilitator: verifies locally, settles nothing.
//!
//! `exact` payments here; `batch-settlement` channels in `embedded_batch`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use x402_payer::{Clock, SystemClock, verify_exact};
use x402_types::batch::BATCH_SETTLEMENT;
use x402_types::{
    Address, Amount, FacilitatorReason, FacilitatorRequest, Nonce, SettleResponse, SupportedKind,
    SupportedResponse, VerifyResponse, network::EVM_NETWORKS,
};

use crate::embedded_batch::{BatchLedger, supported_kinds};
use crate::{Facilitator, FacilitatorError};

/// One settlement recorded by the embedded facilitator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Payer.
    pub payer: String,
    /// Recipient.
    pub pay_to: String,
    /// Amount.
    pub amount: Amount,
    /// Network (CAIP-2).
    pub network: String,
    /// Nonce.
    pub nonce: Nonce,
}

/// Verifies with `x402-payer`'s verifier, keeps a nonce store, and records
/// settlements in an in-process ledger. **Nothing is settled on chain.**
///
/// It answers as the official facilitator does: a settled authorization sent
/// again (the same payload or any other with its payer and nonce) is refused
/// with `invalid_exact_evm_nonce_already_used`. When it is the same transfer,
/// the refusal also names the earlier settlement, as `x402-chain`'s
/// facilitator names its transaction: its payer, amount, and in
/// `transaction` a reference `embedded:<n>` (success answers keep
/// `transaction` empty: nothing is on chain). A server retrying its own
/// payment after a lost answer classifies that as
/// [`SettleVerdict::AlreadySettled`](crate::SettleVerdict::AlreadySettled).
///
/// `batch-settlement` payments (payment channels) are verified for real against an
/// in-memory ledger standing in for the chain (see
/// [`EMBEDDED_RECEIVER_AUTHORIZER`](crate::EMBEDDED_RECEIVER_AUTHORIZER): its
/// `receiverAuthorizer` is a published key, for local use only).
pub struct EmbeddedFacilitator {
    clock: Arc<dyn Clock>,
    /// Settled authorizations by (payer, nonce), as EIP-3009 keys them.
    nonces: Mutex<HashMap<(Address, Nonce), Settled>>,
    ledger: Mutex<Vec<LedgerEntry>>,
    /// Settlements so far, numbering their references.
    count: std::sync::atomic::AtomicU64,
    /// `batch-settlement` channels.
    batch: BatchLedger,
}

/// What is remembered of a settlement, until its authorization is dead anyway.
#[derive(Clone)]
struct Settled {
    pay_to: Address,
    amount: Amount,
    /// `embedded:<n>`: what a replay refusal names as the earlier settlement.
    reference: String,
    /// When the record may go (validBefore passed).
    valid_before: u64,
}

/// Most ledger entries kept (oldest dropped first).
const LEDGER_CAP: usize = 100_000;

impl Default for EmbeddedFacilitator {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for EmbeddedFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedFacilitator")
            .field("settled", &self.ledger().len())
            .finish()
    }
}

fn invalid(reason: FacilitatorReason, msg: String, payer: Option<String>) -> VerifyResponse {
    VerifyResponse {
        extra: None,
        is_valid: false,
        invalid_reason: Some(reason.into()),
        invalid_message: Some(msg),
        payer,
    }
}

impl EmbeddedFacilitator {
    /// With a clock.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        EmbeddedFacilitator {
            clock,
            nonces: Mutex::new(HashMap::new()),
            ledger: Mutex::new(Vec::new()),
            count: std::sync::atomic::AtomicU64::new(0),
            batch: BatchLedger::default(),
        }
    }

    /// The settlements so far.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn settled(&self, key: &(Address, Nonce)) -> Option<Settled> {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn check(&self, req: &FacilitatorRequest) -> VerifyResponse {
        match verify_exact(
            &req.payment_payload,
            &req.payment_requirements,
            self.clock.unix_now(),
        ) {
            Ok(from) => {
                let nonce = req
                    .payment_payload
                    .exact_evm()
                    .map(|e| e.authorization.nonce)
                    .unwrap_or_default();
                if self.settled(&(from, nonce)).is_some() {
                    return invalid(
                        FacilitatorReason::NonceAlreadyUsed,
                        "nonce already used".into(),
                        Some(from.to_string()),
                    );
                }
                VerifyResponse {
                    extra: None,
                    is_valid: true,
                    invalid_reason: None,
                    invalid_message: None,
                    payer: Some(from.to_string()),
                }
            }
            Err(f) => invalid(f.reason(), f.to_string(), None),
        }
    }
}

#[async_trait]
impl Facilitator for EmbeddedFacilitator {
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        if req.payment_payload.scheme() == BATCH_SETTLEMENT {
            return Ok(self.batch.verify(req, self.clock.unix_now()));
        }
        Ok(self.check(req))
    }

    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        if req.payment_payload.scheme() == BATCH_SETTLEMENT {
            return Ok(self.batch.settle(req, self.clock.unix_now()));
        }
        let requirement = req.payment_requirements.requirement();
        // v1 names networks, v2 writes CAIP-2: answer in the request's notation.
        let network = requirement.network.for_x402_version(req.x402_version());
        let fail = |reason: Option<String>, payer: Option<String>| SettleResponse {
            extra: None,
            success: false,
            error_reason: reason,
            payer,
            transaction: String::new(),
            network: network.clone(),
            amount: None,
        };
        // A settled authorization again, whoever sends it: refused as the
        // official facilitator refuses it. The same transfer also learns the
        // earlier settlement (a retry of one's own payment can be reconciled).
        if let Some(evm) = req.payment_payload.exact_evm() {
            let a = &evm.authorization;
            if let Some(done) = self.settled(&(a.from, a.nonce)) {
                let mut answer = fail(
                    Some(FacilitatorReason::NonceAlreadyUsed.into()),
                    Some(a.from.to_string()),
                );
                if done.pay_to == a.to && done.amount == a.value {
                    answer.amount = Some(done.amount);
                    answer.transaction = done.reference;
                }
                return Ok(answer);
            }
        }
        let v = self.check(req);
        if !v.is_valid {
            return Ok(fail(v.invalid_reason, v.payer));
        }
        let Some(evm) = req.payment_payload.exact_evm() else {
            return Ok(fail(Some(FacilitatorReason::InvalidPayload.into()), None));
        };
        let a = &evm.authorization;
        let answer = SettleResponse {
            extra: None,
            success: true,
            error_reason: None,
            payer: v.payer.clone(),
            // Not on chain: no transaction hash exists.
            transaction: String::new(),
            network: network.clone(),
            amount: Some(a.value),
        };
        {
            // Claim the nonce atomically: two settles of one nonce cannot both succeed.
            let now = self.clock.unix_now();
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            if nonces.contains_key(&(a.from, a.nonce)) {
                return Ok(fail(
                    Some(FacilitatorReason::NonceAlreadyUsed.into()),
                    v.payer,
                ));
            }
            // Bounded: records of authorizations past their validBefore can go
            // (the verifier refuses those payloads anyway).
            if nonces.len() >= 1024 && nonces.len().is_power_of_two() {
                nonces.retain(|_, s| s.valid_before.saturating_add(60) > now);
            }
            nonces.insert(
                (a.from, a.nonce),
                Settled {
                    pay_to: a.to,
                    amount: a.value,
                    reference: format!(
                        "embedded:{}",
                        self.count
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            + 1
                    ),
                    valid_before: a.valid_before.to_u64().unwrap_or(u64::MAX),
                },
            );
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if ledger.len() >= LEDGER_CAP {
            ledger.remove(0);
        }
        ledger.push(LedgerEntry {
            payer: a.from.to_string(),
            pay_to: a.to.to_string(),
            amount: a.value,
            network: requirement.network.caip2(),
            nonce: a.nonce,
        });
        Ok(answer)
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = Vec::new();
        for (name, id) in EVM_NETWORKS {
            kinds.push(SupportedKind {
                x402_version: 1,
                scheme: "exact".into(),
                network: (*name).into(),
                extra: None,
            });
            kinds.push(SupportedKind {
                x402_version: 2,
                scheme: "exact".into(),
                network: format!("eip155:{id}"),
                extra: None,
            });
        }
        kinds.extend(supported_kinds());
        Ok(SupportedResponse {
            kinds,
            extensions: Some(Vec::new()),
            signers: None,
        })
    }

    fn describe(&self) -> String {
        "embedded (verified locally, NOT settled on chain)".into()
    }

    async fn verify_and_settle(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(VerifyResponse, Option<SettleResponse>), FacilitatorError> {
        if req.payment_payload.scheme() == BATCH_SETTLEMENT {
            let v = self.verify(req).await?;
            if !v.is_valid {
                return Ok((v, None));
            }
            return Ok((v, Some(self.settle(req).await?)));
        }
        // `exact`: `settle` runs every check of `verify`; do them once.
        let s = self.settle(req).await?;
        let v = VerifyResponse {
            extra: None,
            is_valid: s.success,
            invalid_reason: s.error_reason.clone(),
            invalid_message: None,
            payer: s.payer.clone(),
        };
        Ok((v, s.success.then_some(s)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use x402_payer::{EvmExactPayer, LocalSigner};
    use x402_types::{Network, Offer, PathVersion, PaymentRequirements, Requirement};

    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    fn requirement() -> Requirement {
        Requirement {
            scheme: "exact".into(),
            network: Network::BASE_SEPOLIA,
            amount: Amount::from(10_000u64),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: PAY_TO.into(),
            max_timeout_seconds: 60,
            extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
        }
    }

    pub(crate) fn request(v: PathVersion) -> FacilitatorRequest {
        let r = requirement();
        let offer = Offer::from_requirement(v, &r, "ws://h/v2/stream/s", "test");
        let payer = EvmExactPayer::new(LocalSigner::random().unwrap());
        FacilitatorRequest {
            payment_payload: payer.sign(&offer).unwrap(),
            payment_requirements: match v {
                PathVersion::V1 => PaymentRequirements::V1(r.to_v1("ws://h/v1/stream/s", "test")),
                PathVersion::V2 => PaymentRequirements::V2(r.to_v2()),
            },
        }
    }

    #[tokio::test]
    async fn each_version_is_answered_with_its_own_network_name() {
        let f = EmbeddedFacilitator::default();
        let v1 = f.settle(&request(PathVersion::V1)).await.unwrap();
        assert!(v1.success, "{v1:?}");
        assert_eq!(v1.network, "base-sepolia");
        let v2 = f.settle(&request(PathVersion::V2)).await.unwrap();
        assert!(v2.success, "{v2:?}");
        assert_eq!(v2.network, "eip155:84532");
        // The ledger keeps one notation.
        assert!(f.ledger().iter().all(|e| e.network == "eip155:84532"));
    }

    #[tokio::test]
    async fn a_replayed_settlement_is_refused_with_the_official_reason() {
        let f = EmbeddedFacilitator::default();
        for v in [PathVersion::V1, PathVersion::V2] {
            let req = request(v);
            let first = f.settle(&req).await.unwrap();
            assert!(first.success, "{first:?}");
            let again = f.settle(&req).await.unwrap();
            assert!(!again.success, "a replay must not succeed: {again:?}");
            assert_eq!(
                again.error_reason.as_deref(),
                Some("invalid_exact_evm_nonce_already_used")
            );
            assert_eq!(again.payer, first.payer);
            assert_eq!(
                again.amount, first.amount,
                "the earlier settlement's amount"
            );
            assert!(first.transaction.is_empty(), "nothing on chain");
            assert!(again.transaction.starts_with("embedded:"), "{again:?}");
            assert_eq!(again.network, first.network);
            // Verify says the same.
            let v = f.verify(&req).await.unwrap();
            assert_eq!(v.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
        }
        assert_eq!(f.ledger().len(), 2, "each authorization settled once");
    }

    #[tokio::test]
    async fn a_copy_with_another_recipient_learns_nothing_of_the_settlement() {
        let f = EmbeddedFacilitator::default();
        let req = request(PathVersion::V2);
        assert!(f.settle(&req).await.unwrap().success);
        let mut junk = req.clone();
        if let x402_types::PaymentPayload::V2(p) = &mut junk.payment_payload
            && let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload
        {
            e.authorization.value = Amount::from(1u64);
        }
        let s = f.settle(&junk).await.unwrap();
        assert_eq!(s.reason(), Some(FacilitatorReason::NonceAlreadyUsed));
        assert_eq!((s.amount, s.transaction.as_str()), (None, ""));
    }
}
