//! The checks of `deposit`, `voucher` and `refund` payloads (spec section 7), offline first,
//! then against the chain.

use alloy::network::TransactionBuilder;
use alloy::primitives::U256 as EvmU256;
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use x402_facilitator::FacilitatorError;
use x402_payer::channel::collector_data;
use x402_payer::channel_check::{
    CheckedDeposit, ReceiverTerms, RefundCheck, check_channel, check_deposit_authorization,
    check_voucher_funds, refund_amount, token_domain,
};
use x402_payer::verify::MIN_VALIDITY_LEFT;
use x402_types::batch::{
    BatchPayload, ChannelConfig, ChannelState, Deposit, ERC3009_DEPOSIT_COLLECTOR, SignedVoucher,
    reasons,
};
use x402_types::{Address, B256, Requirement, U256};

use super::{Refusal, Stop, Terms, evm, refuse, sol_config, terms, word};
use crate::channel_contract::{BATCH_SETTLEMENT, IBatchSettlement};
use crate::facilitator::{EvmFacilitator, transport_err};
use crate::token::IEip3009Token;

/// A deposit's ERC-3009 authorization, checked offline.
pub(super) type DepositAuth = CheckedDeposit;

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
                // The server claims the refund voucher's charge before refunding.
                let check = RefundCheck {
                    balance: state.balance,
                    claimed: state.total_claimed.max(voucher.max_claimable_amount),
                    channel_nonce: state.refund_nonce,
                    nonce: *refund_nonce,
                    amount: *amount,
                    claims: claims.as_deref().unwrap_or(&[]),
                };
                refund_amount(&self.channel_domain(), &id, &check).map_err(|r| {
                    refuse(r.reason, r.message)
                        .payer(channel_config.payer)
                        .state(&state)
                })?;
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
    /// signature (`x402_payer::channel_check`). Returns the channel id.
    pub(super) fn check_channel(
        &self,
        terms: &Terms,
        config: &ChannelConfig,
        voucher: &SignedVoucher,
    ) -> Result<B256, Refusal> {
        let receiver = ReceiverTerms::of(terms.pay_to, terms.token, &terms.extra);
        check_channel(&self.channel_domain(), &receiver, config, voucher)
            .map_err(|r| refuse(r.reason, r.message).payer(config.payer))
    }

    /// A deposit's ERC-3009 `ReceiveWithAuthorization`, under the token's domain
    /// (`x402_payer::channel_check`).
    pub(super) fn check_deposit_authorization(
        &self,
        terms: &Terms,
        config: &ChannelConfig,
        channel_id: &B256,
        deposit: &Deposit,
    ) -> Result<DepositAuth, Refusal> {
        let domain = token_domain(&terms.extra, self.chain_id, terms.token);
        check_deposit_authorization(&domain, config, channel_id, deposit)
            .map_err(|r| refuse(r.reason, r.message).payer(config.payer))
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
        check_voucher_funds(
            &voucher.channel_id,
            state.balance,
            state.total_claimed,
            voucher.max_claimable_amount,
            refund,
        )
        .map_err(|r| {
            Stop::from(
                refuse(r.reason, r.message)
                    .payer(config.payer)
                    .state(&state),
            )
        })?;
        Ok(state)
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
