//! `/settle` of the scheme: `deposit`, `claim`, `settle` and `refund`, each sent once.

use std::future::Future;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address as EvmAddress, B256 as EvmB256};
use alloy::providers::Provider;
use alloy::rpc::types::{Filter, TransactionReceipt, TransactionRequest};
use alloy::sol_types::{SolCall, SolEvent};
use x402_facilitator::FacilitatorError;
use x402_payer::LocalSigner;
use x402_payer::channel::{sign_claim_batch, sign_refund};
use x402_payer::channel_check::{RefundCheck, check_claim_batch, claims_authorizer, refund_amount};
use x402_types::batch::{
    BatchPayload, Bytes, ChannelConfig, ChannelState, Deposit, SignedVoucher, VoucherClaim, reasons,
};
use x402_types::{Address, FacilitatorReason, Requirement, SettleResponse, U256};

use super::check::DepositAuth;
use super::{
    Landed, Op, Stop, evm, evm_u256, ours, refuse, sol_claims, sol_config, state_json, terms, word,
};
use crate::channel_contract::{BATCH_SETTLEMENT, IBatchSettlement};
use crate::facilitator::{EvmFacilitator, transport_err};
use crate::token::IEip3009Token;
use x402_types::Amount;

/// How far back a used deposit authorization is looked for (about a day on Base).
const LOG_WINDOW_BLOCKS: u64 = 50_000;

/// A refund as the facilitator executes it.
struct RefundRequest<'a> {
    config: &'a ChannelConfig,
    voucher: &'a SignedVoucher,
    amount: Option<u128>,
    nonce: Option<U256>,
    claims: Vec<VoucherClaim>,
    refund_signature: Option<Bytes>,
    claim_signature: Option<Bytes>,
}

fn pending(hash: EvmB256, payer: Option<Address>) -> Stop {
    let mut r = refuse(
        FacilitatorReason::SettlementPending.as_str(),
        "broadcast; the receipt did not come in time",
    );
    r.payer = payer;
    r.tx = Some(hash);
    r.into()
}

fn reverted(reason: &str, hash: EvmB256, payer: Option<Address>) -> Stop {
    let mut r = refuse(reason, "the transaction was mined and reverted");
    r.payer = payer;
    r.tx = Some(hash);
    r.into()
}

/// The contract's events of type `E` in a receipt.
fn events<E: SolEvent>(r: &TransactionReceipt) -> impl Iterator<Item = E> + '_ {
    r.inner
        .logs()
        .iter()
        .filter(|l| l.address() == BATCH_SETTLEMENT)
        .filter_map(|l| E::decode_log(&l.inner).ok().map(|l| l.data))
}

impl EvmFacilitator {
    /// Executes a payload; every answer that is not a success is a [`Stop`].
    pub(super) async fn settle_payload(
        &self,
        requirement: &Requirement,
        payload: BatchPayload,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        match payload {
            BatchPayload::Deposit {
                channel_config,
                voucher,
                deposit,
            } => {
                self.settle_deposit(requirement, &channel_config, &voucher, &deposit, version)
                    .await
            }
            BatchPayload::Voucher { channel_config, .. } => Err(refuse(
                reasons::PAYLOAD_TYPE,
                "voucher payloads are not settled: the server records them and claims them later",
            )
            .payer(channel_config.payer)
            .into()),
            BatchPayload::Claim {
                claims,
                claim_authorizer_signature,
            } => {
                self.settle_claim(&claims, claim_authorizer_signature, version)
                    .await
            }
            BatchPayload::Settle { receiver, token } => {
                self.settle_sweep(receiver, token, version).await
            }
            BatchPayload::Refund {
                channel_config,
                voucher,
                amount,
                refund_nonce,
                claims,
                refund_authorizer_signature,
                claim_authorizer_signature,
            } => {
                let r = RefundRequest {
                    config: &channel_config,
                    voucher: &voucher,
                    amount,
                    nonce: refund_nonce,
                    claims: claims.unwrap_or_default(),
                    refund_signature: refund_authorizer_signature,
                    claim_signature: claim_authorizer_signature,
                };
                self.settle_refund(requirement, r, version).await
            }
        }
    }

    fn success(
        &self,
        tx: Option<EvmB256>,
        payer: Option<Address>,
        paid: u128,
        extra: Option<serde_json::Value>,
        version: u8,
    ) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            payer: payer.map(|p| p.to_string()),
            transaction: tx.map(|t| t.to_string()).unwrap_or_default(),
            network: self.network.for_x402_version(version),
            amount: Some(Amount::from_u128(paid)),
            extra,
        }
    }

    /// The transaction sent for `op`, if it is mined and succeeded or still in flight.
    async fn recorded(&self, op: &Op) -> Result<Option<EvmB256>, FacilitatorError> {
        let Some(h) = self
            .batch
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(op)
            .copied()
        else {
            return Ok(None);
        };
        if let Some(r) = self
            .provider
            .get_transaction_receipt(h)
            .await
            .map_err(transport_err)?
        {
            return Ok(r.status().then_some(h));
        }
        let known = self
            .provider
            .get_transaction_by_hash(h)
            .await
            .map_err(transport_err)?
            .is_some();
        Ok(known.then_some(h))
    }

    /// Sends the transaction `prepare` builds for `op`, unless one for `op` is mined or in
    /// flight already; then waits for it.
    async fn once(
        &self,
        op: Op,
        prepare: impl Future<Output = Result<TransactionRequest, Stop>> + Send,
    ) -> Result<Landed, Stop> {
        let guard = self.batch.submit.lock().await;
        let hash = match self.recorded(&op).await? {
            Some(h) => h,
            None => {
                let tx = prepare.await?;
                self.ensure_gas(tx.clone()).await?;
                let sent = &self.batch.sent;
                self.send_request(tx, move |h| {
                    sent.lock().unwrap_or_else(|p| p.into_inner()).insert(op, h);
                })
                .await?
            }
        };
        drop(guard);
        Ok(self.land(hash).await?)
    }

    async fn land(&self, hash: EvmB256) -> Result<Landed, FacilitatorError> {
        Ok(match self.wait(hash).await? {
            None => Landed::Pending(hash),
            Some(false) => Landed::Reverted(hash),
            Some(true) => match self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(transport_err)?
            {
                Some(r) => Landed::Mined(hash, Box::new(r)),
                None => Landed::Pending(hash),
            },
        })
    }

    /// Signs as the receiver authorizer a channel names, if it is this facilitator's.
    fn authorize(
        &self,
        named: Address,
        sign: impl FnOnce(&LocalSigner) -> Result<Bytes, x402_payer::Error>,
    ) -> Result<Bytes, Stop> {
        let ours = self.receiver_authorizer();
        if named != ours {
            return Err(refuse(
                reasons::AUTHORIZER_ADDRESS_MISMATCH,
                format!(
                    "the channel's receiverAuthorizer is {named}; this facilitator signs as \
                     {ours}: send the authorizer's signature"
                ),
            )
            .into());
        }
        sign(&self.batch.authorizer)
            .map_err(|e| FacilitatorError::Unavailable(format!("cannot sign: {e}")).into())
    }

    async fn settle_deposit(
        &self,
        requirement: &Requirement,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
        deposit: &Deposit,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        let terms = terms(requirement)?;
        let id = self.check_channel(&terms, config, voucher)?;
        let d = self.check_deposit_authorization(&terms, config, &id, deposit)?;
        let payer = config.payer;
        let op = Op::Deposit {
            payer: evm(payer),
            nonce: word(&d.nonce),
        };
        // Idempotent: a deposit whose authorization is used is done (only this very
        // deposit can use it: its nonce is the channel's, its value the amount).
        if self.deposit_used(terms.token, payer, &d).await? {
            return self
                .deposited(terms.token, payer, &id, &d, op, version)
                .await;
        }
        let landed = self
            .once(op, async {
                self.check_deposit_chain(&terms, config, voucher, &d)
                    .await?;
                Ok(self.deposit_tx(config, &d))
            })
            .await;
        let landed = match landed {
            Ok(l) => l,
            // Used meanwhile by another sender: done all the same.
            Err(Stop::No(r)) => {
                if self
                    .deposit_used(terms.token, payer, &d)
                    .await
                    .unwrap_or(false)
                {
                    return self
                        .deposited(terms.token, payer, &id, &d, op, version)
                        .await;
                }
                return Err(Stop::No(r));
            }
            Err(e) => return Err(e),
        };
        match landed {
            Landed::Mined(h, _) => {
                let state = self.channel_state(&id).await?;
                Ok(self.deposit_answer(Some(h), payer, d.amount, &state, version))
            }
            Landed::Reverted(h) => {
                if self.deposit_used(terms.token, payer, &d).await? {
                    return self
                        .deposited(terms.token, payer, &id, &d, op, version)
                        .await;
                }
                Err(reverted(
                    reasons::DEPOSIT_TRANSACTION_FAILED,
                    h,
                    Some(payer),
                ))
            }
            Landed::Pending(h) => Err(pending(h, Some(payer))),
        }
    }

    fn deposit_answer(
        &self,
        tx: Option<EvmB256>,
        payer: Address,
        paid: u128,
        state: &ChannelState,
        version: u8,
    ) -> SettleResponse {
        let extra = serde_json::json!({ "channelState": state_json(state) });
        self.success(tx, Some(payer), paid, Some(extra), version)
    }

    /// The success of a deposit whose authorization is used: its transaction (ours, or
    /// the one the token's `AuthorizationUsed` log names; empty when neither is found).
    async fn deposited(
        &self,
        token: Address,
        payer: Address,
        id: &x402_types::B256,
        d: &DepositAuth,
        op: Op,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        let tx = match self.recorded(&op).await? {
            Some(h) => Some(h),
            None => {
                let head = self
                    .provider
                    .get_block_number()
                    .await
                    .map_err(transport_err)?;
                let filter = Filter::new()
                    .address(evm(token))
                    .event_signature(IEip3009Token::AuthorizationUsed::SIGNATURE_HASH)
                    .topic1(evm(payer).into_word())
                    .topic2(word(&d.nonce))
                    .from_block(BlockNumberOrTag::Number(
                        head.saturating_sub(LOG_WINDOW_BLOCKS),
                    ));
                let logs = self
                    .provider
                    .get_logs(&filter)
                    .await
                    .map_err(transport_err)?;
                logs.into_iter().find_map(|l| l.transaction_hash)
            }
        };
        let state = self.channel_state(id).await?;
        Ok(self.deposit_answer(tx, payer, d.amount, &state, version))
    }

    async fn settle_claim(
        &self,
        claims: &[VoucherClaim],
        signature: Option<Bytes>,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        let authorizer =
            check_claim_batch(claims).map_err(|r| Stop::from(refuse(r.reason, r.message)))?;
        let domain = self.channel_domain();
        let signature = match signature {
            Some(s) => s,
            None => self.authorize(authorizer, |s| sign_claim_batch(s, &domain, claims))?,
        };
        let op = Op::Claim(EvmB256::from(domain.claim_batch_digest(claims)));
        let tx = self.batch_tx(
            IBatchSettlement::claimWithSignatureCall {
                claims: sol_claims(claims),
                authorizerSignature: signature.0.into(),
            }
            .abi_encode(),
        );
        let landed = self
            .once(op, async {
                if let Some(revert) = self.simulate(tx.clone()).await? {
                    return Err(refuse(
                        reasons::CLAIM_SIMULATION_FAILED,
                        format!("the claim would revert: {revert}"),
                    )
                    .into());
                }
                Ok(tx)
            })
            .await?;
        match landed {
            Landed::Mined(h, r) => {
                let claimed: Vec<_> = events::<IBatchSettlement::Claimed>(&r).collect();
                let total = claimed.iter().map(|c| c.claimAmount).sum::<u128>();
                let rows: Vec<_> = claimed
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "channelId": ours(c.channelId).to_string(),
                            "claimAmount": c.claimAmount.to_string(),
                            "totalClaimed": c.newTotalClaimed.to_string(),
                        })
                    })
                    .collect();
                let extra = serde_json::json!({ "claims": rows });
                Ok(self.success(Some(h), None, total, Some(extra), version))
            }
            Landed::Reverted(h) => Err(reverted(reasons::CLAIM_TRANSACTION_FAILED, h, None)),
            Landed::Pending(h) => Err(pending(h, None)),
        }
    }

    async fn settle_sweep(
        &self,
        receiver: Address,
        token: Address,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        let (receiver, token): (EvmAddress, EvmAddress) = (evm(receiver), evm(token));
        let totals = IBatchSettlement::new(BATCH_SETTLEMENT, self.provider.clone())
            .receivers(receiver, token)
            .call()
            .await
            .map_err(transport_err)?;
        let op = Op::Sweep {
            receiver,
            token,
            claimed: totals.totalClaimed,
        };
        let tx = self.batch_tx(IBatchSettlement::settleCall { receiver, token }.abi_encode());
        let landed = self
            .once(op, async {
                if totals.totalClaimed <= totals.totalSettled {
                    return Err(refuse(
                        reasons::NOTHING_TO_SETTLE,
                        format!("nothing claimed and unsettled for {receiver} in {token}"),
                    )
                    .into());
                }
                if let Some(revert) = self.simulate(tx.clone()).await? {
                    return Err(refuse(
                        reasons::SETTLE_SIMULATION_FAILED,
                        format!("the settle would revert: {revert}"),
                    )
                    .into());
                }
                Ok(tx)
            })
            .await?;
        match landed {
            Landed::Mined(h, r) => {
                let swept = events::<IBatchSettlement::Settled>(&r)
                    .filter(|s| s.receiver == receiver && s.token == token)
                    .map(|s| s.amount)
                    .sum::<u128>();
                Ok(self.success(Some(h), None, swept, None, version))
            }
            Landed::Reverted(h) => Err(reverted(reasons::SETTLE_TRANSACTION_FAILED, h, None)),
            Landed::Pending(h) => Err(pending(h, None)),
        }
    }

    async fn settle_refund(
        &self,
        requirement: &Requirement,
        r: RefundRequest<'_>,
        version: u8,
    ) -> Result<SettleResponse, Stop> {
        let terms = terms(requirement)?;
        let id = self.check_channel(&terms, r.config, r.voucher)?;
        let payer = r.config.payer;
        let nonce = match r.nonce {
            Some(n) => n,
            None => self.channel_state(&id).await?.refund_nonce,
        };
        let op = Op::Refund {
            channel: word(&id),
            nonce: evm_u256(&nonce),
        };
        let landed = self
            .once(op, async {
                let state = self.check_voucher_chain(r.config, r.voucher, true).await?;
                let no = |reason: &str, message: String| {
                    Stop::from(refuse(reason, message).payer(payer).state(&state))
                };
                let domain = self.channel_domain();
                let check = RefundCheck {
                    balance: state.balance,
                    claimed: state.total_claimed,
                    channel_nonce: state.refund_nonce,
                    nonce: Some(nonce),
                    amount: r.amount,
                    claims: &r.claims,
                };
                let refund =
                    refund_amount(&domain, &id, &check).map_err(|e| no(e.reason, e.message))?;
                let refund_signature = match r.refund_signature.clone() {
                    Some(s) => s,
                    None => self.authorize(r.config.receiver_authorizer, |s| {
                        sign_refund(s, &domain, &id, nonce, refund)
                    })?,
                };
                let refund_call = IBatchSettlement::refundWithSignatureCall {
                    config: sol_config(r.config),
                    amount: refund,
                    nonce: evm_u256(&nonce),
                    receiverAuthorizerSignature: refund_signature.0.into(),
                }
                .abi_encode();
                let data = match r.claims.first() {
                    None => refund_call,
                    Some(_) => {
                        let claim_signature = match r.claim_signature.clone() {
                            Some(s) => s,
                            None => {
                                let named = claims_authorizer(&r.claims).map_err(|e| {
                                    Stop::from(refuse(e.reason, e.message).payer(payer))
                                })?;
                                self.authorize(named, |s| sign_claim_batch(s, &domain, &r.claims))?
                            }
                        };
                        let claim_call = IBatchSettlement::claimWithSignatureCall {
                            claims: sol_claims(&r.claims),
                            authorizerSignature: claim_signature.0.into(),
                        }
                        .abi_encode();
                        IBatchSettlement::multicallCall {
                            data: vec![claim_call.into(), refund_call.into()],
                        }
                        .abi_encode()
                    }
                };
                let tx = self.batch_tx(data);
                if let Some(revert) = self.simulate(tx.clone()).await? {
                    return Err(no(
                        reasons::REFUND_SIMULATION_FAILED,
                        format!("the refund would revert: {revert}"),
                    ));
                }
                Ok(tx)
            })
            .await?;
        match landed {
            Landed::Mined(h, receipt) => {
                let refunded = events::<IBatchSettlement::Refunded>(&receipt)
                    .filter(|e| e.channelId == word(&id))
                    .map(|e| e.amount)
                    .sum::<u128>();
                let state = self.channel_state(&id).await?;
                let extra = serde_json::json!({ "channelState": state_json(&state) });
                Ok(self.success(Some(h), Some(payer), refunded, Some(extra), version))
            }
            Landed::Reverted(h) => {
                Err(reverted(reasons::REFUND_TRANSACTION_FAILED, h, Some(payer)))
            }
            Landed::Pending(h) => Err(pending(h, Some(payer))),
        }
    }
}
