//! Paying with x402 `batch-settlement` channels: one deposit, then a cumulative
//! voucher per slice, and the unused deposit back by a cooperative refund.
//!
//! [`EvmChannelPayer`] pays `exact` offers as [`EvmExactPayer`] does and
//! `batch-settlement` offers from a channel it keeps per (receiver, token, terms):
//! its first payment deposits (an ERC-3009 `ReceiveWithAuthorization` to the deposit
//! collector, relayed by the facilitator: no gas for the payer) and signs the first
//! voucher; every later one signs `charged + price`. It learns the charge from each
//! accepted payment's `PAYMENT-RESPONSE` ([`Payer::accepted`]) and never believes a
//! charge above what it signed.
//!
//! Money rules: a deposit is money at risk (refundable), not spent: it is bounded by
//! the deposit cap ([`PolicyError::DepositCap`]), checked before anything is signed.
//! A voucher's increment (one slice's price) is what the spending policy reserves, as
//! for `exact`. Channels persist in a file (mode 0600) so a later run reuses them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use x402_types::batch::{
    BATCH_SETTLEMENT, BatchExtra, BatchPayload, BatchReceiptExtra, Bytes, ChannelConfig, Deposit,
    DepositAuthorization, ERC3009_DEPOSIT_COLLECTOR, Erc3009Deposit, MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY, dec_u128,
};
use x402_types::{
    Amount, Authorization, B256, FixedBytes, Network, Offer, PaymentPayload, PaymentPayloadV2,
    SchemePayload, SettleResponse, U256,
};

use crate::channel::{ChannelDomain, deposit_nonce, receive_digest, sign_voucher};
use crate::error::{Error, PolicyError, Result};
use crate::payer::{Clock, EvmExactPayer, OsRandom, Payer, RandomSource, SystemClock, domain_for};
use crate::signer::DigestSigner;

/// Slices a first deposit covers when the server asks for less (`minDeposit`).
pub const DEFAULT_DEPOSIT_SLICES: u64 = 12;

/// A channel as its payer keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientChannel {
    /// The configuration.
    pub config: ChannelConfig,
    /// Its id.
    pub channel_id: B256,
    /// The network (CAIP-2).
    pub network: String,
    /// The channel's balance as last reported (deposits minus refunds and withdrawals).
    #[serde(with = "dec_u128")]
    pub balance: u128,
    /// What the receiver charged, as confirmed by its receipts.
    #[serde(with = "dec_u128")]
    pub charged: u128,
    /// The highest voucher signed: the most the receiver can ever claim.
    #[serde(with = "dec_u128")]
    pub signed_max: u128,
    /// A deposit signed and not yet confirmed (added to `balance` on acceptance).
    #[serde(default, with = "dec_u128")]
    pub pending_deposit: u128,
}

impl ClientChannel {
    /// What a cooperative refund returns now (balance minus charged).
    pub fn refundable(&self) -> u128 {
        self.balance.saturating_sub(self.charged)
    }
}

/// Pays `exact` and `batch-settlement`. See the module docs.
pub struct EvmChannelPayer<S = crate::LocalSigner> {
    exact: EvmExactPayer<S>,
    max_deposit: u128,
    deposit_slices: u64,
    salt: B256,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    file: Option<PathBuf>,
    channels: Mutex<BTreeMap<B256, ClientChannel>>,
    /// Channels with a voucher signed and its payment not yet accepted.
    in_flight: Mutex<std::collections::BTreeSet<B256>>,
}

impl<S: DigestSigner> EvmChannelPayer<S> {
    /// A payer whose deposits never exceed `max_deposit` (atomic units).
    pub fn new(signer: S, max_deposit: Amount) -> Self {
        EvmChannelPayer {
            exact: EvmExactPayer::new(signer),
            max_deposit: max_deposit.atomic().to_u128().unwrap_or(u128::MAX),
            deposit_slices: DEFAULT_DEPOSIT_SLICES,
            salt: B256::default(),
            clock: Arc::new(SystemClock),
            random: Arc::new(OsRandom),
            file: None,
            channels: Mutex::default(),
            in_flight: Mutex::default(),
        }
    }

    /// Keeps channels in `path` (read now if it exists; written after every
    /// signature and receipt, mode 0600).
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<ClientChannel> = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::KeySource(format!("channel file {}: {e}", path.display()))
                })?;
                let mut m = self.lock();
                for c in list {
                    m.insert(c.channel_id, c);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::KeySource(format!(
                    "channel file {}: {e}",
                    path.display()
                )));
            }
        }
        self.file = Some(path);
        Ok(self)
    }

    /// A first deposit covers this many slices (unless `minDeposit` asks for more).
    pub fn deposit_slices(mut self, n: u64) -> Self {
        self.deposit_slices = n.max(1);
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock.clone();
        self.exact = self.exact.with_clock(clock);
        self
    }

    /// The signer.
    pub fn signer(&self) -> &S {
        self.exact.signer()
    }

    /// The channels this payer holds.
    pub fn channels(&self) -> Vec<ClientChannel> {
        self.lock().values().cloned().collect()
    }

    /// Records the balance the chain reports for channel `id` (after a timed withdrawal,
    /// or a refund made elsewhere) and writes the file. `false` when no such channel is held.
    pub fn set_balance(&self, id: &B256, balance: u128) -> Result<bool> {
        let mut m = self.lock();
        let Some(ch) = m.get_mut(id) else {
            return Ok(false);
        };
        ch.balance = balance;
        self.save(&m)?;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<B256, ClientChannel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, m: &BTreeMap<B256, ClientChannel>) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let list: Vec<&ClientChannel> = m.values().collect();
        let json = serde_json::to_vec_pretty(&list)
            .map_err(|e| Error::KeySource(format!("channel file: {e}")))?;
        // The default place (~/.local/share/atomicstream/) may not exist yet: made
        // readable by its owner only.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                b.mode(0o700);
            }
            b.create(dir).map_err(|e| {
                Error::KeySource(format!("channel file directory {}: {e}", dir.display()))
            })?;
        }
        write_private(path, &json)
            .map_err(|e| Error::KeySource(format!("channel file {}: {e}", path.display())))
    }

    /// The channel an offer's terms name, and those terms.
    fn terms(&self, offer: &Offer) -> Result<(ChannelDomain, ChannelConfig, BatchExtra, u128)> {
        let req = offer.requirement();
        let chain_id = req.network.chain_id().ok_or_else(|| Error::Unsupported {
            scheme: req.scheme.clone(),
            network: req.network.clone(),
        })?;
        let extra = BatchExtra::from_extra(req.extra.as_ref())
            .map_err(|e| Error::InvalidRequirement(e.to_string()))?;
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&extra.withdraw_delay) {
            return Err(Error::InvalidRequirement(format!(
                "withdrawDelay {} is outside the contract's range",
                extra.withdraw_delay
            )));
        }
        let bad = |f: &str, e: x402_types::Error| Error::InvalidRequirement(format!("{f}: {e}"));
        let me = self.signer().address();
        let config = ChannelConfig {
            payer: me,
            payer_authorizer: me,
            receiver: req.pay_to.parse().map_err(|e| bad("payTo", e))?,
            receiver_authorizer: extra.receiver_authorizer,
            token: req.asset.parse().map_err(|e| bad("asset", e))?,
            withdraw_delay: extra.withdraw_delay,
            salt: self.salt,
        };
        let price = req
            .amount
            .atomic()
            .to_u128()
            .ok_or_else(|| Error::InvalidRequirement("amount does not fit uint128".into()))?;
        Ok((ChannelDomain::new(chain_id), config, extra, price))
    }

    /// Signs a `batch-settlement` payment: a deposit and the first voucher, or a voucher.
    pub fn sign_channel(&self, offer: &Offer) -> Result<PaymentPayload> {
        let Offer::V2 { accepted, resource } = offer else {
            return Err(Error::InvalidRequirement(
                "batch-settlement is paid on x402 v2 only".into(),
            ));
        };
        let (domain, config, extra, price) = self.terms(offer)?;
        let id = domain.channel_id(&config);
        let signer = self.signer();
        let mut m = self.lock();
        let ch = m.entry(id).or_insert_with(|| ClientChannel {
            config: config.clone(),
            channel_id: id,
            network: offer.requirement().network.caip2(),
            balance: 0,
            charged: 0,
            signed_max: 0,
            pending_deposit: 0,
        });
        adopt_correction(ch, &domain, &extra)?;
        let max = ch.charged.checked_add(price).ok_or(PolicyError::Overflow)?;
        let deposit = if max <= ch.balance {
            None
        } else {
            let amount = (max - ch.balance)
                .max(extra.min_deposit.unwrap_or(0))
                .max(price.saturating_mul(u128::from(self.deposit_slices)));
            // The cap bounds what is at risk in the channel (unspent balance plus this
            // deposit), not each deposit alone.
            let at_risk = ch.balance.saturating_sub(ch.charged).saturating_add(amount);
            if at_risk > self.max_deposit {
                return Err(PolicyError::DepositCap {
                    limit: Amount::from_u128(self.max_deposit),
                    requested: Amount::from_u128(at_risk),
                }
                .into());
            }
            Some(amount)
        };
        let voucher = sign_voucher(signer, &domain, id, max)?;
        let body = match deposit {
            None => BatchPayload::Voucher {
                channel_config: config,
                voucher,
            },
            Some(amount) => {
                let token_domain = domain_for(&offer.requirement())?;
                let mut salt = [0u8; 32];
                self.random.fill(&mut salt)?;
                let salt = FixedBytes(salt);
                let valid_before = U256::from_u64(
                    self.clock
                        .unix_now()
                        .saturating_add(accepted.get().max_timeout_seconds),
                );
                let auth = Authorization {
                    from: signer.address(),
                    to: ERC3009_DEPOSIT_COLLECTOR,
                    value: Amount::from_u128(amount),
                    valid_after: U256::ZERO,
                    valid_before,
                    nonce: deposit_nonce(&id, &salt),
                };
                let sig = signer.sign_digest(&receive_digest(&token_domain, &auth))?;
                BatchPayload::Deposit {
                    channel_config: config,
                    voucher,
                    deposit: Deposit {
                        amount,
                        authorization: DepositAuthorization {
                            erc3009_authorization: Some(Erc3009Deposit {
                                valid_after: U256::ZERO,
                                valid_before,
                                salt,
                                signature: Bytes(sig.0.to_vec()),
                            }),
                            permit2_authorization: None,
                        },
                    },
                }
            }
        };
        ch.signed_max = ch.signed_max.max(max);
        ch.pending_deposit = deposit.unwrap_or(0);
        self.save(&m)?;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(PaymentPayload::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource: resource.clone(),
            accepted: accepted.clone(),
            payload: SchemePayload::Other(body.to_map()),
            extensions: None,
        }))
    }

    /// Signs a cooperative refund of the channel `offer` names: a zero-charge voucher
    /// (`maxClaimableAmount` = the charged total). `None` when no channel is held.
    pub fn sign_refund(&self, offer: &Offer) -> Result<Option<PaymentPayload>> {
        let Offer::V2 { accepted, resource } = offer else {
            return Err(Error::InvalidRequirement(
                "batch-settlement is paid on x402 v2 only".into(),
            ));
        };
        let (domain, config, extra, _) = self.terms(offer)?;
        let id = domain.channel_id(&config);
        let mut m = self.lock();
        // No channel, or one on which nothing was ever signed (a deposit refused by the
        // policy before its signature): nothing to refund.
        let Some(ch) = m.get_mut(&id).filter(|c| c.signed_max > 0) else {
            return Ok(None);
        };
        adopt_correction(ch, &domain, &extra)?;
        let voucher = sign_voucher(self.signer(), &domain, id, ch.charged)?;
        self.save(&m)?;
        // Its receipt is a refund's, not a payment's: nothing is in flight any more.
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let body = BatchPayload::Refund {
            channel_config: config,
            voucher,
            amount: None,
            refund_nonce: None,
            claims: None,
            refund_authorizer_signature: None,
            claim_authorizer_signature: None,
        };
        Ok(Some(PaymentPayload::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource: resource.clone(),
            accepted: accepted.clone(),
            payload: SchemePayload::Other(body.to_map()),
            extensions: None,
        })))
    }

    /// Learns from an accepted payment: the charge (never above what was signed) and
    /// the balance from its receipt; without a receipt (the acceptance came another
    /// way, as a `renewed` notice on the socket), the voucher in flight was accepted
    /// whole: the charged total is what it signed.
    fn learn(&self, receipt: Option<&SettleResponse>) {
        let extra = receipt
            .and_then(|r| r.extra.clone())
            .and_then(|x| serde_json::from_value::<BatchReceiptExtra>(x).ok());
        // The channels first, then the in-flight set, as the signing paths take them.
        let mut m = self.lock();
        let mut flying = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match extra {
            Some(x) => {
                let id = x.channel_state.channel_id;
                if let Some(ch) = m.get_mut(&id) {
                    // A payment's receipt (a charge, or our payment on that channel in
                    // flight: a facilitator's deposit receipt has no charge): it was
                    // accepted, with its deposit, if any. The balance is ours to keep
                    // (our deposits), never a server's number; the charge never above
                    // what was signed.
                    let ours = flying.remove(&id);
                    if ours || x.charged_amount.is_some() {
                        let c = x.charged_amount.unwrap_or(0);
                        ch.charged = ch.charged.saturating_add(c).min(ch.signed_max);
                        ch.balance = ch.balance.saturating_add(ch.pending_deposit);
                        ch.pending_deposit = 0;
                    } else {
                        // A refund's receipt (no charge, nothing in flight): the balance
                        // after it, which only ever shrinks it.
                        ch.balance = x.channel_state.balance.min(ch.balance);
                    }
                }
            }
            // Accepted without a receipt (a socket notice): the voucher in flight, whole.
            // With payments in flight on several channels (a payer shared by sessions)
            // which one is not known: nothing is guessed; the next voucher's corrective
            // 402, backed by our own voucher, tells the total.
            None => {
                let only = (flying.len() == 1).then(|| flying.pop_first()).flatten();
                if let Some(ch) = only.and_then(|id| m.get_mut(&id)) {
                    ch.charged = ch.signed_max;
                    ch.balance = ch.balance.saturating_add(ch.pending_deposit);
                    ch.pending_deposit = 0;
                }
            }
        }
        let _ = self.save(&m);
    }
}

/// A corrective 402 (the offer's `extra` carries the server's `channelState`, and
/// `voucherState`, the last voucher it holds): the server's charged total is adopted
/// when it is lower than ours (a metered session that stopped early gave charge
/// back; lower is only ever in the payer's favour), or when a voucher this payer
/// signed backs it (the official client's rule). A higher total without that proof
/// is refused before anything is signed.
fn adopt_correction(
    ch: &mut ClientChannel,
    domain: &ChannelDomain,
    extra: &BatchExtra,
) -> Result<()> {
    let Some(state) = extra
        .channel_state
        .as_ref()
        .filter(|s| s.channel_id == ch.channel_id)
    else {
        return Ok(());
    };
    let Some(theirs) = state.charged_cumulative_amount else {
        return Ok(());
    };
    if theirs <= ch.charged {
        ch.charged = theirs;
        return Ok(());
    }
    let backed = extra.voucher_state.as_ref().is_some_and(|vs| {
        let v = x402_types::batch::SignedVoucher {
            channel_id: ch.channel_id,
            max_claimable_amount: vs.signed_max_claimable,
            signature: vs.signature.clone(),
        };
        theirs <= vs.signed_max_claimable
            && vs.signed_max_claimable <= ch.signed_max
            && crate::channel::voucher_signer(domain, &v)
                .is_ok_and(|a| a == ch.config.payer_authorizer)
    });
    if !backed {
        return Err(Error::InvalidRequirement(format!(
            "the server says channel {} was charged {theirs}, above the {} this payer agreed to, \
             and no voucher of this payer backs it",
            ch.channel_id, ch.charged
        )));
    }
    ch.charged = theirs;
    Ok(())
}

impl<S: DigestSigner> std::fmt::Debug for EvmChannelPayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmChannelPayer")
            .field("address", &self.signer().address())
            .field("max_deposit", &self.max_deposit)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: DigestSigner> Payer for EvmChannelPayer<S> {
    fn supports(&self, scheme: &str, network: &Network) -> bool {
        (scheme == "exact" || scheme == BATCH_SETTLEMENT) && network.chain_id().is_some()
    }

    fn address(&self) -> Option<String> {
        Some(self.signer().address().to_string())
    }

    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload> {
        if offer.requirement().scheme == BATCH_SETTLEMENT {
            self.sign_channel(offer)
        } else {
            self.exact.sign(offer)
        }
    }

    fn accepted(&self, receipt: Option<&SettleResponse>) {
        self.learn(receipt);
    }

    fn refund(&self, offer: &Offer) -> Result<Option<PaymentPayload>> {
        self.sign_refund(offer)
    }
}

/// Writes `bytes` to `path` readable by its owner only: a temporary file
/// in the same directory (mode 0600 from its creation), synced, then
/// renamed over `path`, so a reader never sees half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session".into());
    // A fresh, unguessable name created exclusively (O_CREAT|O_EXCL, which
    // follows no symlink): in a shared directory nobody can plant the file
    // or a link to it first, and it has mode 0600 from its creation.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let suffix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_file_name(format!(".{name}.{suffix}.tmp"));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let r = (|| {
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
