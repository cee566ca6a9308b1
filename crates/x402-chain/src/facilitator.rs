//! The settling EVM facilitator.
//!
//! Settles x402 `exact` EIP-3009 payments by calling the token's
//! `transferWithAuthorization` from a relayer key. Before sending it runs
//! every check of the embedded verifier, then reads the payer's balance and
//! the nonce's `authorizationState`, and simulates the exact call: a payment
//! that would revert is refused with a typed reason and costs no gas. The
//! relayer's nonces are handed out under a lock so settlements in flight never
//! collide; the transaction hash is known before it is sent, so a lost answer
//! is reconciled from the chain (`authorizationState`, the receipt, the
//! `AuthorizationUsed` logs), never guessed, never settled twice.
//!
//! Each settlement is answered `success: true` once: to the request that
//! sent it, or, when that answer was `settlement_pending` or lost in an
//! error, to the first retry of the same payload (as the official facilitator
//! answers a retry after `settlement_pending`). Any other request for a used
//! authorization, whoever sends it, is a replay: `success: false` with
//! `invalid_exact_evm_nonce_already_used`, naming the transaction that paid
//! this very transfer (and its amount) when there is one, so a stock resource
//! server never grants twice for one payment. Answers name the network as the
//! request's version does (v1 `base-sepolia`, v2 `eip155:84532`).
//!
//! `batch-settlement` payloads (payment channels) are verified and settled by
//! the `batch` module with the same relayer, nonces and receipt wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address as EvmAddress, B256, Bytes, U256 as EvmU256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use async_trait::async_trait;
use x402_facilitator::{Facilitator, FacilitatorError};
use x402_payer::{Clock, SystemClock, verify_exact};
use x402_types::{
    FacilitatorReason, FacilitatorRequest, Network, SettleResponse, SupportedKind,
    SupportedResponse, VerifyResponse,
};

use crate::token::IEip3009Token;
use crate::{ChainError, rpc};

/// How to reach the chain and who pays the gas.
#[derive(Clone)]
pub struct EvmConfig {
    /// JSON-RPC URL (`http://` or `https://`: alloy's reqwest is the workspace's, with rustls).
    pub rpc_url: String,
    /// The network settled on (its chain id is checked against the node).
    pub network: Network,
    /// Relayer private key (hex). Never printed.
    pub relayer_key: String,
    /// Blocks a receipt must be buried under before success is reported (1 = mined).
    pub confirmations: u64,
    /// How long to wait for a receipt before answering `settlement_pending`.
    pub receipt_timeout: Duration,
    /// The `batch-settlement` `receiverAuthorizer` key (hex), which signs claim batches and
    /// refunds for channels that name it; `None`: the relayer key. Never printed.
    pub authorizer_key: Option<String>,
}

impl std::fmt::Debug for EvmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmConfig")
            .field("network", &self.network)
            .field("relayer_key", &"<redacted>")
            .field("confirmations", &self.confirmations)
            .field("receipt_timeout", &self.receipt_timeout)
            .field(
                "authorizer_key",
                &self.authorizer_key.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl EvmConfig {
    /// One confirmation, 20 s receipt wait.
    pub fn new(
        rpc_url: impl Into<String>,
        network: Network,
        relayer_key: impl Into<String>,
    ) -> Self {
        EvmConfig {
            rpc_url: rpc_url.into(),
            network,
            relayer_key: relayer_key.into(),
            confirmations: 1,
            receipt_timeout: Duration::from_secs(20),
            authorizer_key: None,
        }
    }
}

/// How far back reconciliation looks for an authorization's use (about a day on Base).
const LOG_WINDOW_BLOCKS: u64 = 50_000;

/// The settling EVM facilitator. See the module docs.
pub struct EvmFacilitator {
    pub(crate) provider: DynProvider,
    wallet: EthereumWallet,
    pub(crate) relayer: EvmAddress,
    pub(crate) chain_id: u64,
    pub(crate) network: Network,
    confirmations: u64,
    receipt_timeout: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    /// The `batch-settlement` scheme's authorizer and its transactions in flight.
    pub(crate) batch: crate::batch::BatchState,
    /// The relayer's next nonce (None: read it from the node).
    next_nonce: tokio::sync::Mutex<Option<u64>>,
    /// Transactions this facilitator signed, by authorization (payer, nonce).
    sent: Mutex<HashMap<(EvmAddress, B256), Sent>>,
}

/// A settlement this facilitator sent, and whether its success was answered.
struct Sent {
    hash: B256,
    /// The payload's signature: only the same payload learns an unreported success.
    signature: [u8; 65],
    /// A success was answered for it: any later request for the authorization
    /// is a replay (`invalid_exact_evm_nonce_already_used`).
    reported: bool,
}

impl std::fmt::Debug for EvmFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Facilitator::describe(self))
    }
}

/// A checked authorization, in chain types.
struct Auth {
    from: EvmAddress,
    to: EvmAddress,
    value: EvmU256,
    valid_after: EvmU256,
    valid_before: EvmU256,
    nonce: B256,
    signature: [u8; 65],
    token: EvmAddress,
}

enum Check {
    Ok(Auth),
    Invalid(VerifyResponse),
}

fn invalid(reason: FacilitatorReason, message: String, payer: Option<String>) -> VerifyResponse {
    VerifyResponse {
        extra: None,
        is_valid: false,
        invalid_reason: Some(reason.into()),
        invalid_message: Some(message),
        payer,
    }
}

/// A failed RPC exchange. Only the text (causes included, URLs scrubbed) is
/// kept: alloy's errors name the RPC URL, which often carries an API key.
pub(crate) fn transport<E: std::fmt::Display>(e: E) -> FacilitatorError {
    FacilitatorError::transport(crate::scrub_urls(&e.to_string()))
}

/// [`transport`] for an error value: its text with its causes.
pub(crate) fn transport_err<E: std::error::Error>(e: E) -> FacilitatorError {
    transport(crate::with_causes(&e))
}

impl EvmFacilitator {
    /// Connects to the node and checks it serves `cfg.network`.
    pub async fn connect(cfg: EvmConfig) -> Result<Self, ChainError> {
        let chain_id = cfg
            .network
            .chain_id()
            .ok_or_else(|| ChainError::Config(format!("{} is not an EVM network", cfg.network)))?;
        let signer: PrivateKeySigner = cfg
            .relayer_key
            .trim()
            .parse()
            .map_err(|_| ChainError::Config("relayer key: not a 32-byte hex secret".into()))?;
        let relayer = signer.address();
        let wallet = EthereumWallet::from(signer);
        let batch = crate::batch::BatchState::new(
            cfg.authorizer_key.as_deref().unwrap_or(&cfg.relayer_key),
        )?;
        let url = cfg
            .rpc_url
            .parse()
            .map_err(|e| ChainError::Config(format!("rpc url: {e}")))?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(url)
            .erased();
        let found = provider.get_chain_id().await.map_err(rpc)?;
        if found != chain_id {
            return Err(ChainError::WrongChain {
                expected: chain_id,
                found,
            });
        }
        Ok(EvmFacilitator {
            provider,
            wallet,
            relayer,
            chain_id,
            network: cfg.network,
            confirmations: cfg.confirmations.max(1),
            receipt_timeout: cfg.receipt_timeout,
            clock: Arc::new(SystemClock),
            batch,
            next_nonce: tokio::sync::Mutex::new(None),
            sent: Mutex::new(HashMap::new()),
        })
    }

    /// The relayer's address (who pays the gas).
    pub fn relayer(&self) -> x402_types::Address {
        x402_types::Address(self.relayer.0.0)
    }

    /// The chain id settled on.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Every check of the embedded verifier, then the network.
    fn check_offline(&self, req: &FacilitatorRequest) -> Check {
        let requirement = req.payment_requirements.requirement();
        if requirement.network != self.network {
            return Check::Invalid(invalid(
                FacilitatorReason::InvalidNetwork,
                format!(
                    "this facilitator settles on {}",
                    self.network.for_x402_version(req.x402_version())
                ),
                None,
            ));
        }
        let from = match verify_exact(
            &req.payment_payload,
            &req.payment_requirements,
            self.clock.unix_now(),
        ) {
            Ok(from) => from,
            Err(f) => return Check::Invalid(invalid(f.reason(), f.to_string(), None)),
        };
        match Self::auth_of(req) {
            Some(a) if a.from == EvmAddress::from(from.0) => Check::Ok(a),
            _ => Check::Invalid(invalid(
                FacilitatorReason::InvalidPayload,
                "not an exact EVM payment".into(),
                None,
            )),
        }
    }

    /// The exact settlement call, in the (v,r,s) form with `v` normalised to
    /// 27/28 as USDC requires. x402 `exact` signatures are 65 bytes today; the
    /// token's `bytes` overload (`transferWithAuthorization_1Call`, used by the
    /// tests) is the one contract-wallet signatures will take.
    fn calldata(a: &Auth) -> Bytes {
        let sig = a.signature;
        let mut v = sig[64];
        if v < 27 {
            v += 27;
        }
        IEip3009Token::transferWithAuthorization_0Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: a.nonce,
            v,
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
        .into()
    }

    fn call_request(&self, a: &Auth) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.relayer)
            .with_to(a.token)
            .with_input(Self::calldata(a))
    }

    async fn authorization_used(&self, a: &Auth) -> Result<bool, FacilitatorError> {
        IEip3009Token::new(a.token, self.provider.clone())
            .authorizationState(a.from, a.nonce)
            .call()
            .await
            .map_err(transport_err)
    }

    /// The on-chain checks: nonce unused, balance, simulation, relayer gas.
    /// `Ok(Some(refusal))` is a definite refusal; `Err` means nothing can be said now.
    async fn check_chain(&self, a: &Auth) -> Result<Option<VerifyResponse>, FacilitatorError> {
        let payer = Some(a.from.to_string());
        if self.authorization_used(a).await? {
            return Ok(Some(invalid(
                FacilitatorReason::NonceAlreadyUsed,
                "authorization already used on chain".into(),
                payer,
            )));
        }
        let balance = IEip3009Token::new(a.token, self.provider.clone())
            .balanceOf(a.from)
            .call()
            .await
            .map_err(transport_err)?;
        if balance < a.value {
            return Ok(Some(invalid(
                FacilitatorReason::InsufficientFunds,
                format!("payer balance {balance} is below {}", a.value),
                payer,
            )));
        }
        let tx = self.call_request(a);
        if let Err(e) = self.provider.call(tx.clone()).await {
            return Ok(Some(invalid(
                FacilitatorReason::SimulationFailed,
                format!("the settlement would revert: {e}"),
                payer,
            )));
        }
        self.ensure_gas(tx).await?;
        Ok(None)
    }

    /// The relayer must be able to pay for `tx`'s gas, or nothing is sent
    /// ([`FacilitatorError::Unavailable`]).
    pub(crate) async fn ensure_gas(&self, tx: TransactionRequest) -> Result<(), FacilitatorError> {
        let gas = self
            .provider
            .estimate_gas(tx)
            .await
            .map_err(transport_err)?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(transport_err)?;
        let cost = EvmU256::from(gas) * EvmU256::from(fees.max_fee_per_gas);
        let gas_balance = self
            .provider
            .get_balance(self.relayer)
            .await
            .map_err(transport_err)?;
        if gas_balance < cost {
            return Err(FacilitatorError::Unavailable(format!(
                "relayer {} has {gas_balance} wei, a settlement needs about {cost}: fund it",
                self.relayer
            )));
        }
        Ok(())
    }

    /// The transaction this facilitator signed for authorization `a`, if any.
    fn sent_tx(&self, a: &Auth) -> Option<B256> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(a.from, a.nonce))
            .map(|s| s.hash)
    }

    /// Marks `tx`'s success as answered; true for the one caller that may
    /// answer it: the first, with the payload this facilitator sent. Every
    /// other request for the authorization is a replay.
    fn report(&self, a: &Auth, tx: B256) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        match sent.get_mut(&(a.from, a.nonce)) {
            Some(s) if s.hash == tx && s.signature == a.signature && !s.reported => {
                s.reported = true;
                true
            }
            _ => false,
        }
    }

    /// The authorization of a request as it stands, before any check.
    fn auth_of(req: &FacilitatorRequest) -> Option<Auth> {
        let evm = req.payment_payload.exact_evm()?;
        let token = req
            .payment_requirements
            .requirement()
            .asset
            .parse::<x402_types::Address>()
            .ok()?;
        let a = &evm.authorization;
        Some(Auth {
            from: EvmAddress::from(a.from.0),
            to: EvmAddress::from(a.to.0),
            value: EvmU256::from_be_bytes(a.value.atomic().to_be_bytes()),
            valid_after: EvmU256::from_be_bytes(a.valid_after.to_be_bytes()),
            valid_before: EvmU256::from_be_bytes(a.valid_before.to_be_bytes()),
            nonce: B256::from(a.nonce.0),
            signature: evm.signature.0,
            token: EvmAddress::from(token.0),
        })
    }

    /// The transaction that used authorization `a`, if it settled it to the
    /// payee for the amount: ours (remembered) or found in the
    /// `AuthorizationUsed` logs. Reconciliation reads the chain, never guesses.
    async fn find_settlement(&self, a: &Auth) -> Result<Option<B256>, FacilitatorError> {
        // Ours first (no log query); if it did not settle the authorization (it
        // reverted because another transaction used it first), the logs say which did.
        if let Some(h) = self.sent_tx(a)
            && self.settled_by(h, a).await?
        {
            return Ok(Some(h));
        }
        // An authorization lives for minutes: a recent window of blocks holds its
        // use, and RPC providers refuse log queries over the whole history.
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(transport_err)?;
        let filter = Filter::new()
            .address(a.token)
            .event_signature(IEip3009Token::AuthorizationUsed::SIGNATURE_HASH)
            .topic1(a.from.into_word())
            .topic2(a.nonce)
            .from_block(BlockNumberOrTag::Number(
                head.saturating_sub(LOG_WINDOW_BLOCKS),
            ));
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(transport_err)?;
        for h in logs.into_iter().filter_map(|l| l.transaction_hash) {
            if self.settled_by(h, a).await? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// Whether transaction `h` succeeded and moved the authorization's amount
    /// from the payer to the payee on the token.
    async fn settled_by(&self, h: B256, a: &Auth) -> Result<bool, FacilitatorError> {
        let Some(r) = self
            .provider
            .get_transaction_receipt(h)
            .await
            .map_err(transport_err)?
        else {
            return Ok(false);
        };
        Ok(r.status()
            && r.inner.logs().iter().any(|l| {
                l.address() == a.token
                    && IEip3009Token::Transfer::decode_log(&l.inner)
                        .is_ok_and(|t| t.from == a.from && t.to == a.to && t.value == a.value)
            }))
    }

    fn amount(a: &Auth) -> x402_types::Amount {
        x402_types::Amount(x402_types::U256::from_be_bytes(a.value.to_be_bytes::<32>()))
    }

    /// `tx` settled `a`: success for the one request that may learn it
    /// ([`report`](Self::report)), a replay refusal naming `tx` for any other.
    fn settled(&self, a: &Auth, tx: B256, version: u8) -> SettleResponse {
        if !self.report(a, tx) {
            return self.replayed(a, tx, version);
        }
        SettleResponse {
            extra: None,
            success: true,
            error_reason: None,
            payer: Some(a.from.to_string()),
            transaction: tx.to_string(),
            network: self.network.for_x402_version(version),
            amount: Some(Self::amount(a)),
        }
    }

    /// The official facilitator's answer to a replay (`success: false`,
    /// `invalid_exact_evm_nonce_already_used`), which also names the
    /// transaction that settled the authorization and its amount: fields
    /// stock parsers read without complaint (`transaction` is always there).
    fn replayed(&self, a: &Auth, tx: B256, version: u8) -> SettleResponse {
        SettleResponse {
            extra: None,
            amount: Some(Self::amount(a)),
            ..self.failure(a, FacilitatorReason::NonceAlreadyUsed, Some(tx), version)
        }
    }

    fn failure(
        &self,
        a: &Auth,
        reason: FacilitatorReason,
        tx: Option<B256>,
        version: u8,
    ) -> SettleResponse {
        SettleResponse {
            extra: None,
            success: false,
            error_reason: Some(reason.into()),
            payer: Some(a.from.to_string()),
            transaction: tx.map(|t| t.to_string()).unwrap_or_default(),
            network: self.network.for_x402_version(version),
            amount: None,
        }
    }

    /// The answer for an authorization already used on chain: its settlement
    /// if this facilitator still owes it to this payload (answered pending, or
    /// lost in an error), else a replay refusal naming the transaction that
    /// used it when that transaction paid this very transfer.
    async fn used(&self, a: &Auth, version: u8) -> Result<SettleResponse, FacilitatorError> {
        Ok(match self.find_settlement(a).await? {
            Some(tx) => self.settled(a, tx, version),
            None => self.failure(a, FacilitatorReason::NonceAlreadyUsed, None, version),
        })
    }

    /// Signs and sends the settlement with the relayer's next nonce. The hash
    /// is recorded before the send, so a lost answer can be reconciled.
    async fn send(&self, a: &Auth) -> Result<B256, FacilitatorError> {
        self.send_request(self.call_request(a), |hash| {
            self.sent.lock().unwrap_or_else(|p| p.into_inner()).insert(
                (a.from, a.nonce),
                Sent {
                    hash,
                    signature: a.signature,
                    reported: false,
                },
            );
        })
        .await
    }

    /// Signs and sends `tx` from the relayer with its next nonce; `record` is
    /// given the hash before the send, so a lost answer can be reconciled.
    pub(crate) async fn send_request(
        &self,
        tx: TransactionRequest,
        record: impl FnOnce(B256) + Send,
    ) -> Result<B256, FacilitatorError> {
        let gas = self
            .provider
            .estimate_gas(tx.clone())
            .await
            .map_err(transport_err)?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(transport_err)?;
        let mut next = self.next_nonce.lock().await;
        let nonce = match *next {
            Some(n) => n,
            None => self
                .provider
                .get_transaction_count(self.relayer)
                .pending()
                .await
                .map_err(transport_err)?,
        };
        let tx = tx
            .with_nonce(nonce)
            .with_chain_id(self.chain_id)
            .with_gas_limit(gas.saturating_mul(12) / 10)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let envelope = tx
            .build(&self.wallet)
            .await
            .map_err(|e| FacilitatorError::Unavailable(format!("cannot sign: {e}")))?;
        let hash = *envelope.tx_hash();
        record(hash);
        let raw = alloy::eips::Encodable2718::encoded_2718(&envelope);
        match self.provider.send_raw_transaction(&raw).await {
            Ok(_) => {
                *next = Some(nonce + 1);
                Ok(hash)
            }
            Err(e) => {
                // Was it sent? Ask the node for the hash we computed.
                let known = self
                    .provider
                    .get_transaction_by_hash(hash)
                    .await
                    .ok()
                    .flatten()
                    .is_some();
                if known {
                    *next = Some(nonce + 1);
                    return Ok(hash);
                }
                // Not known: the node refused it or never got it. Read the
                // nonce again next time (a gap or a refusal must not stick).
                *next = None;
                let e = crate::scrub_urls(&crate::with_causes(&e));
                tracing::warn!(%hash, error = %e, "settlement send failed; will reconcile");
                Err(transport(format!("send failed: {e}")))
            }
        }
    }

    /// Waits for `hash`'s receipt with the configured confirmations, bounded.
    pub(crate) async fn wait(&self, hash: B256) -> Result<Option<bool>, FacilitatorError> {
        let deadline = tokio::time::Instant::now() + self.receipt_timeout;
        loop {
            if let Ok(Some(r)) = self.provider.get_transaction_receipt(hash).await {
                let mined = r.block_number.unwrap_or(0);
                let head = self.provider.get_block_number().await.unwrap_or(0);
                if head + 1 >= mined + self.confirmations {
                    return Ok(Some(r.status()));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl Facilitator for EvmFacilitator {
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        if req.payment_payload.scheme() == x402_types::batch::BATCH_SETTLEMENT {
            return self.batch_verify(req).await;
        }
        let a = match self.check_offline(req) {
            Check::Invalid(v) => return Ok(v),
            Check::Ok(a) => a,
        };
        if let Some(refusal) = self.check_chain(&a).await? {
            return Ok(refusal);
        }
        Ok(VerifyResponse {
            extra: None,
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(a.from.to_string()),
        })
    }

    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        // Answers name the network as the request's version does (v1: `base-sepolia`).
        let version = req.x402_version();
        if req.payment_payload.scheme() == x402_types::batch::BATCH_SETTLEMENT {
            return self.batch_settle(req).await;
        }
        let a = match self.check_offline(req) {
            Check::Invalid(v) => {
                // A settled authorization sent again after its window closed is
                // a replay (or a retry owed its answer), not an expired payment.
                if let Some(a) = Self::auth_of(req)
                    && self.network == req.payment_requirements.requirement().network
                    && self.authorization_used(&a).await.unwrap_or(false)
                {
                    return self.used(&a, version).await;
                }
                return Ok(SettleResponse {
                    extra: None,
                    success: false,
                    error_reason: v.invalid_reason,
                    payer: v.payer,
                    transaction: String::new(),
                    network: self.network.for_x402_version(version),
                    amount: None,
                });
            }
            Check::Ok(a) => a,
        };
        // Already used on chain: a retry after a lost answer, or a replay.
        if self.authorization_used(&a).await? {
            return self.used(&a, version).await;
        }
        // Sent before but not mined yet (a retry while pending): wait for it, never resend.
        let pending = self.sent_tx(&a);
        let hash = match pending {
            Some(h)
                if self
                    .provider
                    .get_transaction_by_hash(h)
                    .await
                    .map_err(transport_err)?
                    .is_some() =>
            {
                h
            }
            _ => {
                if let Some(refusal) = self.check_chain(&a).await? {
                    let reason = refusal
                        .reason()
                        .unwrap_or(FacilitatorReason::Other(String::new()));
                    return Ok(self.failure(&a, reason, None, version));
                }
                match self.send(&a).await {
                    Ok(h) => h,
                    // A concurrent request with the same authorization won the
                    // race (the send reverts "authorization is used"): answer
                    // as to any replay, not with the node's error text.
                    Err(e) => {
                        if self.authorization_used(&a).await.unwrap_or(false) {
                            return self.used(&a, version).await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        match self.wait(hash).await? {
            Some(true) => Ok(self.settled(&a, hash, version)),
            Some(false) => {
                // Reverted: did something else use the authorization first?
                if let Some(tx) = self.find_settlement(&a).await? {
                    return Ok(self.replayed(&a, tx, version));
                }
                Ok(self.failure(&a, FacilitatorReason::TransactionState, Some(hash), version))
            }
            // Broadcast, receipt not yet seen: pending, as the official facilitator answers.
            None => Ok(self.failure(
                &a,
                FacilitatorReason::SettlementPending,
                Some(hash),
                version,
            )),
        }
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = vec![SupportedKind {
            x402_version: 2,
            scheme: "exact".into(),
            network: self.network.caip2(),
            extra: None,
        }];
        kinds.push(SupportedKind {
            x402_version: 1,
            scheme: "exact".into(),
            network: self.network.v1_name(),
            extra: None,
        });
        kinds.push(self.batch_kind());
        Ok(SupportedResponse {
            kinds,
            extensions: Some(Vec::new()),
            signers: Some(serde_json::json!({ "eip155:*": [self.relayer.to_string()] })),
        })
    }

    fn describe(&self) -> String {
        format!(
            "evm: settles on {} (chain {}) with relayer {}",
            self.network, self.chain_id, self.relayer
        )
    }
}
