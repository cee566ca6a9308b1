//! The payer's escape hatch from a `batch-settlement` channel: the timed withdrawal.
//!
//! When the seller does not answer a cooperative refund, the payer takes the unclaimed rest
//! of its deposit back itself, in two transactions sent from its own key (it pays the gas):
//! [`initiate_withdraw`] announces the withdrawal, and once the channel's `withdrawDelay`
//! has passed on the chain's clock [`finalize_withdraw`] pays out. Until then the seller
//! may still claim what it charged (its signed vouchers), so the payout is capped at what
//! is unclaimed when it finalizes: `balance - totalClaimed`. [`channel_status`] reads where a
//! channel stands (balance, claimed, the pending withdrawal and when it may be finalized).
//!
//! Every function checks that the RPC endpoint serves the channel's network before
//! anything else, simulates a transaction before sending it (a refusal costs no gas and
//! comes back as words: [`ChainError::WithdrawNotReady`] says when finalizing becomes
//! possible), and checks that the sender has the ether the gas needs
//! ([`ChainError::NoGas`]). Nothing here panics on what the chain answers.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::{Ethereum, EthereumWallet};
use alloy::primitives::aliases::U40;
use alloy::primitives::{Address as EvmAddress, B256 as EvmB256, U256 as EvmU256};
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder};
use alloy::rpc::json_rpc::ErrorPayload;
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use alloy::transports::{RpcError, TransportErrorKind};
use x402_payer::channel::ChannelDomain;
use x402_types::batch::ChannelConfig;
use x402_types::{Address, B256, FixedBytes, Network};

use crate::ChainError;
use crate::channel_contract::{BATCH_SETTLEMENT, IBatchSettlement};

/// The longest wait for one answer of the RPC endpoint.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest wait for a sent transaction's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// A withdrawal announced by `initiateWithdraw` and not yet finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingWithdrawal {
    /// The amount asked for (atomic units); the payout is capped at what is unclaimed then.
    pub amount: u128,
    /// When it was initiated (the block's unix time).
    pub initiated_at: u64,
    /// The chain time (unix seconds) from which `finalizeWithdraw` succeeds:
    /// `initiated_at + withdrawDelay`.
    pub finalize_after: u64,
}

/// Where a channel stands on chain, as [`channel_status`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawStatus {
    /// The chain id the RPC endpoint serves (the channel's network's).
    pub chain_id: u64,
    /// The channel id on that chain.
    pub channel_id: B256,
    /// The deposit held (atomic units): deposits minus refunds and withdrawals.
    pub balance: u128,
    /// What the seller has claimed so far (cumulative, atomic units).
    pub total_claimed: u128,
    /// The withdrawal under way, if any.
    pub pending: Option<PendingWithdrawal>,
    /// The chain's clock: the latest block's unix time.
    pub now: u64,
}

impl WithdrawStatus {
    /// What a withdrawal would pay out now: `balance - totalClaimed`.
    pub fn unclaimed(&self) -> u128 {
        self.balance.saturating_sub(self.total_claimed)
    }

    /// A withdrawal is pending and its delay is over on the chain's clock.
    pub fn due(&self) -> bool {
        self.pending.is_some_and(|p| self.now >= p.finalize_after)
    }

    /// Seconds of chain time until the pending withdrawal may be finalized (0 when due).
    pub fn wait_secs(&self) -> Option<u64> {
        self.pending
            .map(|p| p.finalize_after.saturating_sub(self.now))
    }
}

/// Reads channel `config` on the chain behind `rpc_url`, which must serve `network`.
pub async fn channel_status(
    rpc_url: &str,
    network: &Network,
    config: &ChannelConfig,
) -> Result<WithdrawStatus, ChainError> {
    let chain = Chain::connect(rpc_url, network, config, None).await?;
    chain.status().await
}

/// Announces the withdrawal of `amount` (atomic units) from channel `config`, sent from
/// `key_hex` (the channel's payer or payer authorizer, which pays the gas). Returns the
/// transaction's hash once it is mined. The withdrawal may be finalized
/// ([`finalize_withdraw`]) `withdrawDelay` seconds later on the chain's clock.
pub async fn initiate_withdraw(
    rpc_url: &str,
    network: &Network,
    key_hex: &str,
    config: &ChannelConfig,
    amount: u128,
) -> Result<B256, ChainError> {
    if amount == 0 {
        return Err(ChainError::Reverted(
            "a withdrawal of 0: nothing is left unclaimed in the channel".into(),
        ));
    }
    let chain = Chain::connect(rpc_url, network, config, Some(key_hex)).await?;
    let call = chain
        .contract
        .initiateWithdraw(chain.sol.clone(), amount)
        .from(chain.sender);
    let sent = chain
        .send(call.call(), call.estimate_gas(), call.send(), None)
        .await?;
    Ok(ours(sent.transaction_hash))
}

/// Pays out the pending withdrawal of channel `config` once its delay is over, sent from
/// `key_hex` (the channel's payer or payer authorizer, which pays the gas). Returns the
/// transaction's hash and the amount paid to the payer (atomic units): the pending amount
/// capped at what is unclaimed (`balance - totalClaimed`). Too early, the error
/// ([`ChainError::WithdrawNotReady`]) says when it becomes possible.
pub async fn finalize_withdraw(
    rpc_url: &str,
    network: &Network,
    key_hex: &str,
    config: &ChannelConfig,
) -> Result<(B256, u128), ChainError> {
    let chain = Chain::connect(rpc_url, network, config, Some(key_hex)).await?;
    let status = chain.status().await?;
    let Some(pending) = status.pending else {
        return Err(ChainError::NoPendingWithdrawal);
    };
    if !status.due() {
        return Err(ChainError::WithdrawNotReady {
            finalize_after: pending.finalize_after,
            now: status.now,
        });
    }
    let call = chain
        .contract
        .finalizeWithdraw(chain.sol.clone())
        .from(chain.sender);
    let receipt = chain
        .send(
            call.call(),
            call.estimate_gas(),
            call.send(),
            Some(status.now),
        )
        .await?;
    let paid = receipt
        .inner
        .logs()
        .iter()
        .filter(|l| l.address() == BATCH_SETTLEMENT)
        .filter_map(|l| IBatchSettlement::WithdrawFinalized::decode_log(&l.inner).ok())
        .find(|l| l.data.channelId == chain.id)
        .map(|l| l.data.amount)
        .ok_or_else(|| {
            ChainError::Rpc(format!(
                "the receipt of {} has no WithdrawFinalized event for the channel",
                receipt.transaction_hash
            ))
        })?;
    Ok((ours(receipt.transaction_hash), paid))
}

/// A connection to the chain for one channel, checked to serve its network.
struct Chain {
    provider: DynProvider,
    contract: IBatchSettlement::IBatchSettlementInstance<DynProvider>,
    sol: IBatchSettlement::ChannelConfig,
    id: EvmB256,
    chain_id: u64,
    /// The sending key's address (the zero address when reading only).
    sender: EvmAddress,
}

impl Chain {
    async fn connect(
        rpc_url: &str,
        network: &Network,
        config: &ChannelConfig,
        key_hex: Option<&str>,
    ) -> Result<Chain, ChainError> {
        let expected = network
            .chain_id()
            .ok_or_else(|| ChainError::Config(format!("{network} is not an EVM network")))?;
        let url = rpc_url
            .trim()
            .parse()
            .map_err(|e| ChainError::Config(format!("rpc url: {e}")))?;
        let (provider, sender) = match key_hex {
            Some(k) => {
                let signer: PrivateKeySigner = k
                    .trim()
                    .parse()
                    .map_err(|_| ChainError::Config("key: not a 32-byte hex secret".into()))?;
                let me = signer.address();
                let key = Address(me.into_array());
                if key != config.payer && key != config.payer_authorizer {
                    return Err(ChainError::NotPayer {
                        key,
                        payer: config.payer,
                    });
                }
                let p = ProviderBuilder::new()
                    .wallet(EthereumWallet::from(signer))
                    .connect_http(url)
                    .erased();
                (p, me)
            }
            None => (
                ProviderBuilder::new()
                    .disable_recommended_fillers()
                    .connect_http(url)
                    .erased(),
                EvmAddress::ZERO,
            ),
        };
        let found = ask(provider.get_chain_id()).await?;
        if found != expected {
            return Err(ChainError::WrongChain { expected, found });
        }
        let code = ask(provider.get_code_at(BATCH_SETTLEMENT)).await?;
        if code.is_empty() {
            return Err(ChainError::NoContract { chain_id: found });
        }
        let id = EvmB256::from(ChannelDomain::new(found).channel_id(config).0);
        Ok(Chain {
            contract: IBatchSettlement::new(BATCH_SETTLEMENT, provider.clone()),
            provider,
            sol: sol_config(config),
            id,
            chain_id: found,
            sender,
        })
    }

    async fn status(&self) -> Result<WithdrawStatus, ChainError> {
        let ch = ask_contract(self.contract.channels(self.id).call()).await?;
        let w = ask_contract(self.contract.pendingWithdrawals(self.id).call()).await?;
        let now = self.now().await?;
        let initiated_at: u64 = w.initiatedAt.to();
        let pending = (initiated_at != 0).then(|| PendingWithdrawal {
            amount: w.amount,
            initiated_at,
            finalize_after: initiated_at.saturating_add(self.sol.withdrawDelay.to::<u64>()),
        });
        Ok(WithdrawStatus {
            chain_id: self.chain_id,
            channel_id: ours(self.id),
            balance: ch.balance,
            total_claimed: ch.totalClaimed,
            pending,
            now,
        })
    }

    /// The latest block's unix time.
    async fn now(&self) -> Result<u64, ChainError> {
        let block = ask(self.provider.get_block_by_number(BlockNumberOrTag::Latest)).await?;
        block
            .map(|b| b.header.timestamp)
            .ok_or_else(|| ChainError::Rpc("the node has no latest block".into()))
    }

    /// Simulates, checks the gas money, sends and waits for the receipt of one call.
    /// `now`: the chain's time, when known (it words a too-early refusal).
    async fn send<R>(
        &self,
        simulate: impl IntoFuture<Output = Result<R, alloy::contract::Error>>,
        estimate: impl Future<Output = Result<u64, alloy::contract::Error>>,
        send: impl Future<Output = Result<PendingTransactionBuilder<Ethereum>, alloy::contract::Error>>,
        now: Option<u64>,
    ) -> Result<TransactionReceipt, ChainError> {
        let now = match now {
            Some(n) => n,
            None => self.now().await?,
        };
        // A call that would revert is refused here, at no cost.
        if let Err(e) = timed(simulate).await? {
            return Err(self.refusal(e, now).await);
        }
        let have = ask(self.provider.get_balance(self.sender)).await?;
        if have.is_zero() {
            return Err(self.no_gas(have, None));
        }
        let gas = match timed(estimate).await? {
            Ok(g) => g,
            Err(e) => return Err(self.refusal(e, now).await),
        };
        let price = match timed(self.provider.estimate_eip1559_fees()).await? {
            Ok(fees) => fees.max_fee_per_gas,
            Err(_) => ask(self.provider.get_gas_price()).await?,
        };
        let need = EvmU256::from(gas).saturating_mul(EvmU256::from(price));
        if have < need {
            return Err(self.no_gas(have, Some(need)));
        }
        let pending = match timed(send).await? {
            Ok(p) => p,
            Err(e) => return Err(self.refusal(e, now).await),
        };
        let hash = *pending.tx_hash();
        let receipt = match pending
            .with_required_confirmations(1)
            .with_timeout(Some(RECEIPT_TIMEOUT))
            .get_receipt()
            .await
        {
            Ok(r) => r,
            Err(alloy::providers::PendingTransactionError::TxWatcher(_)) => {
                return Err(ChainError::ReceiptTimeout {
                    transaction: ours(hash),
                });
            }
            Err(e) => {
                return Err(ChainError::Rpc(format!(
                    "transaction {hash} was sent, and its receipt could not be read ({}); \
                     check it before sending again",
                    crate::scrub_urls(&crate::with_causes(&e))
                )));
            }
        };
        if !receipt.status() {
            return Err(ChainError::Reverted(format!(
                "transaction {hash} was mined and reverted"
            )));
        }
        Ok(receipt)
    }

    fn no_gas(&self, have: EvmU256, need: Option<EvmU256>) -> ChainError {
        ChainError::NoGas {
            payer: Address(self.sender.into_array()),
            chain_id: self.chain_id,
            have,
            need,
        }
    }

    /// A failed simulation, estimate or send in words.
    async fn refusal(&self, e: alloy::contract::Error, now: u64) -> ChainError {
        let alloy::contract::Error::TransportError(t) = &e else {
            return ChainError::Rpc(crate::scrub_urls(&crate::with_causes(&e)));
        };
        let Some(p) = t.as_error_resp() else {
            return rpc_error(t);
        };
        if p.message
            .to_ascii_lowercase()
            .contains("insufficient funds")
        {
            let have = ask(self.provider.get_balance(self.sender))
                .await
                .unwrap_or_default();
            return self.no_gas(have, None);
        }
        revert_words(p, now)
    }
}

/// The contract's refusal of a call, in words.
fn revert_words(p: &ErrorPayload, now: u64) -> ChainError {
    use IBatchSettlement::IBatchSettlementErrors as E;
    let Some(decoded) = p.as_decoded_interface_error::<E>() else {
        let text = crate::scrub_urls(&p.message);
        return if p.message.contains("revert") {
            ChainError::Reverted(text)
        } else {
            ChainError::Rpc(text)
        };
    };
    match decoded {
        E::WithdrawNotReady(w) => ChainError::WithdrawNotReady {
            finalize_after: w.finalizeAfter.saturating_to(),
            now,
        },
        E::NoPendingWithdrawal(_) => ChainError::NoPendingWithdrawal,
        E::WithdrawAlreadyPending(_) => ChainError::WithdrawAlreadyPending,
        E::Unauthorized(_) => ChainError::Reverted(
            "the contract says the sender is neither the channel's payer nor its payer authorizer"
                .into(),
        ),
        E::ZeroAmount(_) => {
            ChainError::Reverted("a withdrawal of 0: nothing is left unclaimed".into())
        }
        E::TransferFailed(t) => ChainError::Reverted(format!(
            "the token {} refused to pay {} to {}",
            t.token, t.amount, t.to
        )),
        other => ChainError::Reverted(format!("{other:?}")),
    }
}

/// An RPC request's failure: no answer at all is [`ChainError::Unreachable`].
fn rpc_error(e: &RpcError<TransportErrorKind>) -> ChainError {
    let text = crate::scrub_urls(&crate::with_causes(e));
    if e.is_transport_error() {
        ChainError::Unreachable(text)
    } else {
        ChainError::Rpc(text)
    }
}

async fn timed<T>(f: impl IntoFuture<Output = T>) -> Result<T, ChainError> {
    tokio::time::timeout(RPC_TIMEOUT, f).await.map_err(|_| {
        ChainError::Unreachable(format!("no answer within {} s", RPC_TIMEOUT.as_secs()))
    })
}

/// One RPC request, bounded in time.
async fn ask<T>(
    f: impl IntoFuture<Output = Result<T, RpcError<TransportErrorKind>>>,
) -> Result<T, ChainError> {
    timed(f).await?.map_err(|e| rpc_error(&e))
}

/// One contract view, bounded in time.
async fn ask_contract<T>(
    f: impl IntoFuture<Output = Result<T, alloy::contract::Error>>,
) -> Result<T, ChainError> {
    match timed(f).await? {
        Ok(v) => Ok(v),
        Err(alloy::contract::Error::TransportError(t)) => Err(rpc_error(&t)),
        Err(e) => Err(ChainError::Rpc(crate::scrub_urls(&crate::with_causes(&e)))),
    }
}

fn ours(b: EvmB256) -> B256 {
    FixedBytes(b.0)
}

fn sol_config(c: &ChannelConfig) -> IBatchSettlement::ChannelConfig {
    IBatchSettlement::ChannelConfig {
        payer: EvmAddress::from(c.payer.0),
        payerAuthorizer: EvmAddress::from(c.payer_authorizer.0),
        receiver: EvmAddress::from(c.receiver.0),
        receiverAuthorizer: EvmAddress::from(c.receiver_authorizer.0),
        token: EvmAddress::from(c.token.0),
        withdrawDelay: U40::saturating_from(c.withdraw_delay),
        salt: EvmB256::from(c.salt.0),
    }
}

/// Wei as ether for a person (`0.000042`, up to 18 decimals, trailing zeros cut).
pub fn eth(wei: &EvmU256) -> String {
    x402_types::Amount(x402_types::U256::from_be_bytes(wei.to_be_bytes())).to_display(18)
}

/// A span of seconds for a person: `45 s`, `14 min 59 s`, `2 h 5 min`, `3 d 4 h`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) if s == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_a_person_says_them() {
        assert_eq!(span(0), "0 s");
        assert_eq!(span(45), "45 s");
        assert_eq!(span(900), "15 min");
        assert_eq!(span(899), "14 min 59 s");
        assert_eq!(span(7_500), "2 h 5 min");
        assert_eq!(span(2_592_000), "30 d 0 h");
    }

    #[test]
    fn status_arithmetic_never_underflows() {
        let mut s = WithdrawStatus {
            chain_id: 1,
            channel_id: B256::default(),
            balance: 10,
            total_claimed: 12,
            pending: None,
            now: 100,
        };
        assert_eq!(s.unclaimed(), 0);
        assert!(!s.due());
        assert_eq!(s.wait_secs(), None);
        s.pending = Some(PendingWithdrawal {
            amount: 5,
            initiated_at: 50,
            finalize_after: 150,
        });
        assert!(!s.due());
        assert_eq!(s.wait_secs(), Some(50));
        s.now = 150;
        assert!(s.due());
        assert_eq!(s.wait_secs(), Some(0));
    }

    #[test]
    fn the_contracts_refusals_become_words() {
        use alloy::sol_types::SolError;
        let data = IBatchSettlement::WithdrawNotReady {
            channelId: EvmB256::ZERO,
            finalizeAfter: EvmU256::from(1_000u64),
        }
        .abi_encode();
        let payload: ErrorPayload = serde_json::from_value(serde_json::json!({
            "code": 3,
            "message": "execution reverted",
            "data": format!("0x{}", hex::encode(data)),
        }))
        .unwrap();
        let e = revert_words(&payload, 400);
        assert!(
            matches!(
                e,
                ChainError::WithdrawNotReady {
                    finalize_after: 1_000,
                    now: 400
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("10 min"), "{e}");
        let garbage: ErrorPayload = serde_json::from_value(serde_json::json!({
            "code": 3, "message": "execution reverted", "data": "0xdeadbeef",
        }))
        .unwrap();
        assert!(matches!(revert_words(&garbage, 0), ChainError::Reverted(_)));
        let other: ErrorPayload = serde_json::from_value(serde_json::json!({
            "code": -32000, "message": "nonce too low",
        }))
        .unwrap();
        assert!(matches!(revert_words(&other, 0), ChainError::Rpc(_)));
    }
}
