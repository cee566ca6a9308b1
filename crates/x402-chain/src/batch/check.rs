//! The checks of `deposit`, `voucher` and `refund` payloads (spec section 7), offline first,
//! then against the chain.

use alloy::network::TransactionBuilder;
use alloy::primitives::U256 as EvmU256;
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use x402_facilitator::FacilitatorError;
use x402_payer::channel::{
    collector_data, deposit_nonce, receive_digest, recover_bytes, voucher_signer,
};
use x402_payer::eip712::Domain;
use x402_payer::verify::MIN_VALIDITY_LEFT;
use x402_types::batch::{
    BatchPayload, ChannelConfig, ChannelState, Deposit, ERC3009_DEPOSIT_COLLECTOR,
    MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY, SignedVoucher, VoucherClaim, reasons,
};
use x402_types::{Address, Authorization, B256, Requirement, U256};

use super::{Refusal, Stop, Terms, evm, refuse, sol_config, terms, word};
use crate::channel_contract::{BATCH_SETTLEMENT, IBatchSettlement};
use crate::facilitator::{EvmFacilitator, transport_err};
use crate::token::IEip3009Token;
use x402_types::Amount;

const ZERO: Address = Address([0u8; 20]);

/// A deposit's ERC-3009 authorization, checked offline.
pub(super) struct DepositAuth {
    pub(super) amount: u128,
    pub(super) valid_after: U256,
    pub(super) valid_before: U256,
    pub(super) salt: B256,
    pub(super) signature: Vec<u8>,
    /// `keccak256(abi.encode(channelId, salt))`.
    pub(super) nonce: B256,
}

impl EvmFacilitator {
    /// `/verify` of a payload: who pays and the channel's state, or why not.
    pub(super) async fn verify_payload(
        &self,
        requirement: &Requirement,
        payload: &BatchPayload,
    ) -> Result<(Address, ChannelState), Stop> {
        match payload {
            BatchPayload::Deposit {
                channel_config,
                voucher,
                deposit,
            } => {
                let terms = terms(requirement)?;
                let id = self.check_channel(&terms, channel_config, voucher)?;
                let d = self.check_deposit_authorization(&terms, channel_config, &id, deposit)?;
                let state = self
                    .check_deposit_chain(&terms, channel_config, voucher, &d)
                    .await?;
                Ok((channel_config.payer, state))
            }
            BatchPayload::Voucher {
                channel_config,
                voucher,
            } => {
                let terms = terms(requirement)?;
                self.check_channel(&terms, channel_config, voucher)?;
                let state = self
                    .check_voucher_chain(channel_config, voucher, false)
                    .await?;
                Ok((channel_config.payer, state))
            }
            BatchPayload::Refund {
                channel_config,
                voucher,
                amount,
                refund_nonce,
                claims,
                ..
            } => {
                let terms = terms(requirement)?;
                let id = self.check_channel(&terms, channel_config, voucher)?;
                let state = self
                    .check_voucher_chain(channel_config, voucher, true)
                    .await?;
                let no = |reason: &str, message: String| {
                    refuse(reason, message)
                        .payer(channel_config.payer)
                        .state(&state)
                };
                if let Some(n) = refund_nonce
                    && *n != state.refund_nonce
                {
                    return Err(no(
                        reasons::REFUND_PAYLOAD,
                        format!("refundNonce {n} is not the chain's {}", state.refund_nonce),
                    )
                    .into());
                }
                if *amount == Some(0) {
                    return Err(
                        no(reasons::REFUND_AMOUNT_INVALID, "a refund of zero".into()).into(),
                    );
                }
                // The server claims the refund voucher's charge before refunding.
                let base = state.total_claimed.max(voucher.max_claimable_amount);
                let claimed = self.claimed_after(base, claims.as_deref().unwrap_or(&[]), &id);
                if state.balance <= claimed {
                    return Err(no(
                        reasons::REFUND_NO_BALANCE,
                        format!(
                            "nothing to refund: balance {} and {claimed} claimed",
                            state.balance
                        ),
                    )
                    .into());
                }
                Ok((channel_config.payer, state))
            }
            BatchPayload::Claim { .. } | BatchPayload::Settle { .. } => Err(refuse(
                reasons::PAYLOAD_TYPE,
                format!(
                    "a {} payload is a settle action: send it to /settle",
                    payload.kind()
                ),
            )
            .into()),
        }
    }

    /// The configuration against the requirement, the channel id, and the voucher's
    /// signature. Returns the channel id.
    pub(super) fn check_channel(
        &self,
        terms: &Terms,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
    ) -> Result<B256, Refusal> {
        let no = |reason: &str, message: String| refuse(reason, message).payer(config.payer);
        let domain = self.channel_domain();
        let id = domain.channel_id(config);
        if voucher.channel_id != id {
            return Err(no(
                reasons::CHANNEL_ID_MISMATCH,
                format!(
                    "voucher.channelId {} is not the channel id of channelConfig ({id})",
                    voucher.channel_id
                ),
            ));
        }
        let extra = &terms.extra;
        let mismatch = |reason: &str,
                        field: &str,
                        got: &dyn std::fmt::Display,
                        want: &dyn std::fmt::Display| {
            no(
                reason,
                format!("channelConfig.{field} is {got}, the requirement says {want}"),
            )
        };
        // In the official facilitator's order (`validate_channel_config`).
        if config.receiver != terms.pay_to {
            return Err(mismatch(
                reasons::RECEIVER_MISMATCH,
                "receiver",
                &config.receiver,
                &terms.pay_to,
            ));
        }
        if extra.receiver_authorizer == ZERO
            || config.receiver_authorizer != extra.receiver_authorizer
        {
            return Err(mismatch(
                reasons::RECEIVER_AUTHORIZER_MISMATCH,
                "receiverAuthorizer",
                &config.receiver_authorizer,
                &extra.receiver_authorizer,
            ));
        }
        if config.token != terms.token {
            return Err(mismatch(
                reasons::TOKEN_MISMATCH,
                "token",
                &config.token,
                &terms.token,
            ));
        }
        if config.withdraw_delay != extra.withdraw_delay {
            return Err(mismatch(
                reasons::WITHDRAW_DELAY_MISMATCH,
                "withdrawDelay",
                &config.withdraw_delay,
                &extra.withdraw_delay,
            ));
        }
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&config.withdraw_delay) {
            return Err(no(
                reasons::WITHDRAW_DELAY_OUT_OF_RANGE,
                format!(
                    "withdrawDelay {} is outside {MIN_WITHDRAW_DELAY}..={MAX_WITHDRAW_DELAY}",
                    config.withdraw_delay
                ),
            ));
        }
        if config.payer == ZERO {
            return Err(no(
                reasons::VOUCHER_PAYLOAD,
                "channelConfig.payer is zero".into(),
            ));
        }
        if config.payer_authorizer == ZERO {
            return Err(no(
                reasons::VOUCHER_SIGNATURE,
                "payerAuthorizer is zero (vouchers signed by the payer by EIP-1271): this \
                 facilitator verifies only vouchers of an EOA payerAuthorizer"
                    .into(),
            ));
        }
        match voucher_signer(&domain, voucher) {
            Ok(signer) if signer == config.payer_authorizer => Ok(id),
            Ok(signer) => Err(no(
                reasons::VOUCHER_SIGNATURE,
                format!(
                    "the voucher is signed by {signer}, not by payerAuthorizer {}",
                    config.payer_authorizer
                ),
            )),
            Err(e) => Err(no(
                reasons::VOUCHER_SIGNATURE,
                format!("the voucher signature is unusable: {e}"),
            )),
        }
    }

    /// A deposit's ERC-3009 `ReceiveWithAuthorization`: present, non-zero, signed by the
    /// payer under the token's domain for the deposit collector with the channel's nonce.
    pub(super) fn check_deposit_authorization(
        &self,
        terms: &Terms,
        config: &ChannelConfig,
        channel_id: &B256,
        deposit: &Deposit,
    ) -> Result<DepositAuth, Refusal> {
        let no = |reason: &str, message: String| refuse(reason, message).payer(config.payer);
        if deposit.amount == 0 {
            return Err(no(reasons::DEPOSIT_PAYLOAD, "a deposit of zero".into()));
        }
        let Some(a) = &deposit.authorization.erc3009_authorization else {
            return Err(no(
                reasons::ERC3009_AUTHORIZATION_REQUIRED,
                if deposit.authorization.permit2_authorization.is_some() {
                    "Permit2 deposits are not executed by this facilitator: deposit by ERC-3009 \
                     (erc3009Authorization)"
                } else {
                    "the deposit carries no erc3009Authorization"
                }
                .into(),
            ));
        };
        let nonce = deposit_nonce(channel_id, &a.salt);
        let auth = Authorization {
            from: config.payer,
            to: ERC3009_DEPOSIT_COLLECTOR,
            value: Amount::from_u128(deposit.amount),
            valid_after: a.valid_after,
            valid_before: a.valid_before,
            nonce,
        };
        let domain = Domain {
            name: terms.extra.name.clone(),
            version: terms.extra.version.clone(),
            chain_id: self.chain_id,
            verifying_contract: terms.token,
        };
        match recover_bytes(&receive_digest(&domain, &auth), &a.signature) {
            Ok(signer) if signer == config.payer => Ok(DepositAuth {
                amount: deposit.amount,
                valid_after: a.valid_after,
                valid_before: a.valid_before,
                salt: a.salt,
                signature: a.signature.0.clone(),
                nonce,
            }),
            Ok(signer) => Err(no(
                reasons::RECEIVE_AUTHORIZATION_SIGNATURE,
                format!(
                    "the ReceiveWithAuthorization is signed by {signer}, not by the payer {} \
                 (token domain {:?} version {:?}, to the deposit collector, nonce \
                 keccak256(channelId, salt))",
                    config.payer, terms.extra.name, terms.extra.version
                ),
            )),
            Err(e) => Err(no(
                reasons::RECEIVE_AUTHORIZATION_SIGNATURE,
                format!("the ReceiveWithAuthorization signature is unusable: {e}"),
            )),
        }
    }

    /// Whether the deposit's authorization is used on chain.
    pub(super) async fn deposit_used(
        &self,
        token: Address,
        payer: Address,
        d: &DepositAuth,
    ) -> Result<bool, FacilitatorError> {
        IEip3009Token::new(evm(token), self.provider.clone())
            .authorizationState(evm(payer), word(&d.nonce))
            .call()
            .await
            .map_err(transport_err)
    }

    /// A deposit against the chain: its window, its authorization unused, the payer's
    /// balance, the voucher within the balance after it, and the call simulated.
    pub(super) async fn check_deposit_chain(
        &self,
        terms: &Terms,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
        d: &DepositAuth,
    ) -> Result<ChannelState, Stop> {
        let payer = config.payer;
        let no = |reason: &str, message: String| refuse(reason, message).payer(payer);
        let now = self.clock.unix_now();
        if d.valid_before < U256::from_u64(now.saturating_add(MIN_VALIDITY_LEFT)) {
            return Err(no(
                reasons::VALID_BEFORE_EXPIRED,
                format!(
                    "the authorization expired or is about to: validBefore {} < now + {MIN_VALIDITY_LEFT} ({now})",
                    d.valid_before
                ),
            )
            .into());
        }
        if d.valid_after > U256::from_u64(now) {
            return Err(no(
                reasons::VALID_AFTER_IN_FUTURE,
                format!("the authorization is valid only after {}", d.valid_after),
            )
            .into());
        }
        // The official facilitator finds this by simulating the deposit.
        if self.deposit_used(terms.token, payer, d).await? {
            return Err(no(
                reasons::DEPOSIT_SIMULATION_FAILED,
                "the deposit would revert: its authorization is already used on chain".into(),
            )
            .into());
        }
        let (state, balance) = tokio::try_join!(self.channel_state(&voucher.channel_id), async {
            IEip3009Token::new(evm(terms.token), self.provider.clone())
                .balanceOf(evm(payer))
                .call()
                .await
                .map_err(transport_err)
        })?;
        let no = |reason: &str, message: String| refuse(reason, message).payer(payer).state(&state);
        if balance < EvmU256::from(d.amount) {
            return Err(no(
                reasons::INSUFFICIENT_BALANCE,
                format!("the payer holds {balance}, the deposit is {}", d.amount),
            )
            .into());
        }
        let max = voucher.max_claimable_amount;
        if max > state.balance.saturating_add(d.amount) {
            return Err(no(
                reasons::CUMULATIVE_EXCEEDS_BALANCE,
                format!(
                    "maxClaimableAmount {max} exceeds the balance after the deposit ({} + {})",
                    state.balance, d.amount
                ),
            )
            .into());
        }
        if max <= state.total_claimed {
            return Err(no(
                reasons::CUMULATIVE_BELOW_CLAIMED,
                format!(
                    "maxClaimableAmount {max} is not above the claimed {}",
                    state.total_claimed
                ),
            )
            .into());
        }
        if let Some(revert) = self.simulate(self.deposit_tx(config, d)).await? {
            return Err(no(
                reasons::DEPOSIT_SIMULATION_FAILED,
                format!("the deposit would revert: {revert}"),
            )
            .into());
        }
        Ok(state)
    }

    /// A voucher (or a refund's voucher) against the chain: the channel funded, the
    /// maximum within the balance and above what is claimed (a refund's: at least).
    pub(super) async fn check_voucher_chain(
        &self,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
        refund: bool,
    ) -> Result<ChannelState, Stop> {
        let state = self.channel_state(&voucher.channel_id).await?;
        let no = |reason: &str, message: String| {
            Stop::from(refuse(reason, message).payer(config.payer).state(&state))
        };
        let max = voucher.max_claimable_amount;
        if state.balance == 0 {
            return Err(no(
                reasons::CHANNEL_NOT_FOUND,
                format!("channel {} holds no deposit", voucher.channel_id),
            ));
        }
        if max > state.balance {
            return Err(no(
                reasons::CUMULATIVE_EXCEEDS_BALANCE,
                format!(
                    "maxClaimableAmount {max} exceeds the balance {}",
                    state.balance
                ),
            ));
        }
        let below = if refund {
            max < state.total_claimed
        } else {
            max <= state.total_claimed
        };
        if below {
            return Err(no(
                reasons::CUMULATIVE_BELOW_CLAIMED,
                format!(
                    "maxClaimableAmount {max} is {} the claimed {}",
                    if refund { "below" } else { "not above" },
                    state.total_claimed
                ),
            ));
        }
        Ok(state)
    }

    /// The channel's claimed total after `claims` run, from `base`.
    pub(super) fn claimed_after(&self, base: u128, claims: &[VoucherClaim], id: &B256) -> u128 {
        let domain = self.channel_domain();
        claims
            .iter()
            .filter(|c| domain.channel_id(&c.voucher.channel) == *id)
            .map(|c| c.total_claimed)
            .fold(base, u128::max)
    }

    /// A call of the settlement contract from the relayer.
    pub(super) fn batch_tx(&self, data: Vec<u8>) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.relayer)
            .with_to(BATCH_SETTLEMENT)
            .with_input(data)
    }

    /// `deposit(config, amount, ERC3009DepositCollector, collectorData)`.
    pub(super) fn deposit_tx(&self, config: &ChannelConfig, d: &DepositAuth) -> TransactionRequest {
        let data = collector_data(d.valid_after, d.valid_before, &d.salt, &d.signature);
        self.batch_tx(
            IBatchSettlement::depositCall {
                config: sol_config(config),
                amount: d.amount,
                collector: evm(ERC3009_DEPOSIT_COLLECTOR),
                collectorData: data.into(),
            }
            .abi_encode(),
        )
    }

    /// Runs `tx` without sending it: `Some(why)` when it would revert.
    pub(super) async fn simulate(
        &self,
        tx: TransactionRequest,
    ) -> Result<Option<String>, FacilitatorError> {
        match self.provider.call(tx).await {
            Ok(_) => Ok(None),
            Err(e) => match e.as_error_resp() {
                Some(p) => Ok(Some(
                    match p.as_decoded_interface_error::<IBatchSettlement::IBatchSettlementErrors>()
                    {
                        Some(decoded) => format!("{decoded:?}"),
                        None => crate::scrub_urls(&p.message),
                    },
                )),
                None => Err(transport_err(e)),
            },
        }
    }
}
