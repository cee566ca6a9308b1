//! The `Payer` trait, injectable time and randomness, and the EVM `exact` payer.

use std::sync::Arc;

use async_trait::async_trait;
use x402_types::{
    Address, Authorization, ExactEvmPayload, FixedBytes, Network, Offer, PaymentPayload,
    PaymentPayloadV1, PaymentPayloadV2, Requirement, SchemePayload, U256, known_asset,
};

use crate::eip712::{Domain, digest};
use crate::error::{Error, Result};
use crate::signer::DigestSigner;

/// Turns payment requirements into signed x402 payloads.
///
/// Object-safe: store it as `Arc<dyn Payer>`. A local key, a remote signer, a
/// hardware wallet or another network's scheme (Solana `exact`, Permit2) each
/// implement it. The spending policy is checked by the caller *before* `pay`.
#[async_trait]
pub trait Payer: Send + Sync {
    /// Whether this payer can pay `scheme` on `network`.
    fn supports(&self, scheme: &str, network: &Network) -> bool;

    /// The paying address (for display), if it has one.
    fn address(&self) -> Option<String> {
        None
    }

    /// Signs a payment for `offer`. Each call makes a new payment (fresh nonce).
    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload>;

    /// The server accepted a payment this payer signed; `receipt` is its
    /// `PAYMENT-RESPONSE`, when it sent one. A channel payer learns the charge from
    /// it (and checks it); the default does nothing.
    fn accepted(&self, _receipt: Option<&x402_types::SettleResponse>) {}

    /// Signs a cooperative refund of the channel `offer` names (`batch-settlement`):
    /// `None` when this payer holds no such channel (the default: it holds none).
    fn refund(&self, _offer: &Offer) -> Result<Option<PaymentPayload>> {
        Ok(None)
    }
}

#[async_trait]
impl<P: Payer + ?Sized> Payer for Arc<P> {
    fn supports(&self, scheme: &str, network: &Network) -> bool {
        (**self).supports(scheme, network)
    }
    fn refund(&self, offer: &Offer) -> Result<Option<PaymentPayload>> {
        (**self).refund(offer)
    }
    fn accepted(&self, receipt: Option<&x402_types::SettleResponse>) {
        (**self).accepted(receipt)
    }
    fn address(&self) -> Option<String> {
        (**self).address()
    }
    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload> {
        (**self).pay(offer).await
    }
}

#[async_trait]
impl<P: Payer + ?Sized> Payer for Box<P> {
    fn supports(&self, scheme: &str, network: &Network) -> bool {
        (**self).supports(scheme, network)
    }
    fn refund(&self, offer: &Offer) -> Result<Option<PaymentPayload>> {
        (**self).refund(offer)
    }
    fn accepted(&self, receipt: Option<&x402_types::SettleResponse>) {
        (**self).accepted(receipt)
    }
    fn address(&self) -> Option<String> {
        (**self).address()
    }
    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload> {
        (**self).pay(offer).await
    }
}

#[async_trait]
impl<P: Payer + ?Sized> Payer for &P {
    fn supports(&self, scheme: &str, network: &Network) -> bool {
        (**self).supports(scheme, network)
    }
    fn refund(&self, offer: &Offer) -> Result<Option<PaymentPayload>> {
        (**self).refund(offer)
    }
    fn accepted(&self, receipt: Option<&x402_types::SettleResponse>) {
        (**self).accepted(receipt)
    }
    fn address(&self) -> Option<String> {
        (**self).address()
    }
    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload> {
        (**self).pay(offer).await
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<Box<dyn Payer>>();
    assert_send_sync::<Arc<dyn Payer>>();
};

/// Wall-clock time in unix seconds.
pub trait Clock: Send + Sync {
    /// Now, in unix seconds.
    fn unix_now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A fixed clock, for tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn unix_now(&self) -> u64 {
        self.0
    }
}

/// A source of random bytes for nonces.
pub trait RandomSource: Send + Sync {
    /// Fills `buf`.
    fn fill(&self, buf: &mut [u8]) -> Result<()>;
}

/// The OS generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
    }
}

/// A deterministic generator (splitmix64), for tests only.
#[derive(Debug, Default)]
pub struct SeededRandom(std::sync::Mutex<u64>);

impl SeededRandom {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        SeededRandom(std::sync::Mutex::new(seed))
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in buf.chunks_mut(8) {
            *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// `validAfter = now - VALID_AFTER_SKEW` tolerates clocks behind ours.
pub const VALID_AFTER_SKEW: u64 = 600;

/// The EIP-712 domain for a requirement: from `extra`, else the known-asset
/// table; unknown assets without `extra` are refused.
pub fn domain_for(req: &Requirement) -> Result<Domain> {
    let chain_id = req.network.chain_id().ok_or_else(|| Error::Unsupported {
        scheme: req.scheme.clone(),
        network: req.network.clone(),
    })?;
    let verifying_contract: Address = req
        .asset
        .parse()
        .map_err(|e| Error::InvalidRequirement(format!("asset: {e}")))?;
    if let Some(extra) = req.eip712_extra() {
        return Ok(Domain {
            name: extra.name,
            version: extra.version,
            chain_id,
            verifying_contract,
        });
    }
    let known =
        known_asset(&req.network, &verifying_contract).ok_or_else(|| Error::UnknownAsset {
            asset: req.asset.clone(),
            network: req.network.clone(),
        })?;
    Ok(Domain {
        name: known.eip712_name.into(),
        version: known.eip712_version.into(),
        chain_id,
        verifying_contract,
    })
}

/// Pays x402 `exact` on EVM chains with EIP-3009 `transferWithAuthorization`.
///
/// ```
/// use x402_payer::{EvmExactPayer, LocalSigner, Offer, Payer};
/// use x402_types::{Amount, Network, PathVersion, Requirement};
/// # tokio_test_block_on(async {
/// let signer = LocalSigner::random()?;
/// let payer = EvmExactPayer::new(signer);
/// let req = Requirement {
///     scheme: "exact".into(),
///     network: Network::BASE_SEPOLIA,
///     amount: Amount::from(10_000),
///     asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
///     pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
///     max_timeout_seconds: 60,
///     extra: None,
/// };
/// let offer = Offer::from_requirement(PathVersion::V2, &req, "https://example.com/v2/stream/btc", "BTC");
/// let payload = payer.pay(&offer).await?;
/// println!("PAYMENT-SIGNATURE: {}", payload.to_header());
/// # Ok::<(), x402_payer::Error>(()) }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct EvmExactPayer<S = crate::LocalSigner> {
    signer: S,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    /// The last (asset, payTo, chain, extra) resolved to (domain separator, recipient):
    /// a session pays the same terms slice after slice.
    terms: std::sync::Mutex<Option<(TermsKey, [u8; 32], Address)>>,
}

#[derive(Clone, PartialEq, Eq)]
struct TermsKey {
    asset: String,
    pay_to: String,
    chain_id: u64,
    extra: Option<serde_json::Value>,
}

impl<S: DigestSigner> EvmExactPayer<S> {
    /// With the system clock and the OS generator.
    pub fn new(signer: S) -> Self {
        EvmExactPayer {
            signer,
            clock: Arc::new(SystemClock),
            random: Arc::new(OsRandom),
            terms: std::sync::Mutex::new(None),
        }
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the random source.
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// The signer.
    pub fn signer(&self) -> &S {
        &self.signer
    }

    /// Signs synchronously (the async [`Payer::pay`] wraps this).
    pub fn sign(&self, offer: &Offer) -> Result<PaymentPayload> {
        let (scheme, network, amount, asset, pay_to, max_timeout, extra) = match offer {
            Offer::V1(r) => (
                &r.scheme,
                &r.network,
                r.max_amount_required,
                &r.asset,
                &r.pay_to,
                r.max_timeout_seconds,
                r.extra.as_ref(),
            ),
            Offer::V2 { accepted, .. } => {
                let a = accepted.get();
                (
                    &a.scheme,
                    &a.network,
                    a.amount,
                    &a.asset,
                    &a.pay_to,
                    a.max_timeout_seconds,
                    a.extra.as_ref(),
                )
            }
        };
        let Some(chain_id) = network.chain_id().filter(|_| scheme == "exact") else {
            return Err(Error::Unsupported {
                scheme: scheme.clone(),
                network: network.clone(),
            });
        };
        let cached = {
            let c = self.terms.lock().unwrap_or_else(|p| p.into_inner());
            c.as_ref()
                .filter(|(k, _, _)| {
                    k.chain_id == chain_id
                        && k.asset == *asset
                        && k.pay_to == *pay_to
                        && k.extra.as_ref() == extra
                })
                .map(|(_, sep, to)| (*sep, *to))
        };
        let (separator, to) = match cached {
            Some(x) => x,
            None => {
                let req = offer.requirement();
                let domain = domain_for(&req)?;
                let to: Address = req
                    .pay_to
                    .parse()
                    .map_err(|e| Error::InvalidRequirement(format!("payTo: {e}")))?;
                let sep = domain.separator();
                let key = TermsKey {
                    asset: req.asset,
                    pay_to: req.pay_to,
                    chain_id,
                    extra: req.extra,
                };
                *self.terms.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, sep, to));
                (sep, to)
            }
        };
        let now = self.clock.unix_now();
        let mut nonce = [0u8; 32];
        self.random.fill(&mut nonce)?;
        let authorization = Authorization {
            from: self.signer.address(),
            to,
            value: amount,
            valid_after: U256::from_u64(now.saturating_sub(VALID_AFTER_SKEW)),
            valid_before: U256::from_u64(now.saturating_add(max_timeout)),
            nonce: FixedBytes(nonce),
        };
        let d = digest(&separator, &authorization);
        let signature = self.signer.sign_digest(&d)?;
        let payload = SchemePayload::ExactEvm(ExactEvmPayload {
            signature,
            authorization,
        });
        Ok(match offer {
            Offer::V1(r) => PaymentPayload::V1(PaymentPayloadV1 {
                x402_version: 1,
                scheme: r.scheme.clone(),
                network: r.network.clone(),
                payload,
            }),
            Offer::V2 { accepted, resource } => PaymentPayload::V2(PaymentPayloadV2 {
                x402_version: 2,
                resource: resource.clone(),
                accepted: accepted.clone(),
                payload,
                extensions: None,
            }),
        })
    }
}

impl<S: DigestSigner> std::fmt::Debug for EvmExactPayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmExactPayer")
            .field("address", &self.signer.address())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: DigestSigner> Payer for EvmExactPayer<S> {
    fn supports(&self, scheme: &str, network: &Network) -> bool {
        scheme == "exact" && network.chain_id().is_some()
    }

    fn address(&self) -> Option<String> {
        Some(self.signer.address().to_string())
    }

    async fn pay(&self, offer: &Offer) -> Result<PaymentPayload> {
        self.sign(offer)
    }
}
