//! `batch-settlement` channels: the EIP-712 digests (channel id, voucher, refund, claim
//! batch, the deposit's `ReceiveWithAuthorization`), signing them and recovering their
//! signers.
//!
//! All digests are `keccak256(0x19 0x01 || domainSeparator || hashStruct(message))`; the
//! channel id is the digest of the `ChannelConfig` itself. The domain of everything but
//! the deposit is `{name: "x402 Batch Settlement", version: "1", chainId,
//! verifyingContract: x402BatchSettlement}`; the deposit is signed under the token's
//! domain.
//!
//! ```
//! use x402_payer::channel::{ChannelDomain, sign_voucher, voucher_signer};
//! use x402_payer::{DigestSigner, LocalSigner};
//! use x402_types::batch::ChannelConfig;
//!
//! let payer = LocalSigner::random().unwrap();
//! let config = ChannelConfig {
//!     payer: payer.address(),
//!     payer_authorizer: payer.address(),
//!     receiver: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".parse().unwrap(),
//!     receiver_authorizer: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".parse().unwrap(),
//!     token: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".parse().unwrap(),
//!     withdraw_delay: 900,
//!     salt: Default::default(),
//! };
//! let domain = ChannelDomain::new(84532);
//! let id = domain.channel_id(&config);
//! let voucher = sign_voucher(&payer, &domain, id, 10_000).unwrap();
//! assert_eq!(voucher_signer(&domain, &voucher).unwrap(), payer.address());
//! ```

use x402_types::batch::{Bytes, ChannelConfig, ClaimVoucher, SignedVoucher, VoucherClaim};
use x402_types::{Address, Authorization, B65, B256, FixedBytes, U256, keccak256};

use crate::eip712::{Domain, struct_hash_with};
use crate::error::{Error, SignatureError};
use crate::signer::{DigestSigner, recover};

/// `ChannelConfig(...)` type string.
pub const CHANNEL_CONFIG_TYPE: &str = "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)";
/// `Voucher(...)` type string.
pub const VOUCHER_TYPE: &str = "Voucher(bytes32 channelId,uint128 maxClaimableAmount)";
/// `Refund(...)` type string.
pub const REFUND_TYPE: &str = "Refund(bytes32 channelId,uint256 nonce,uint128 amount)";
/// `ClaimBatch(...)` type string, with its referenced `ClaimEntry`.
pub const CLAIM_BATCH_TYPE: &str = "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)";
/// `ClaimEntry(...)` type string.
pub const CLAIM_ENTRY_TYPE: &str =
    "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)";
/// ERC-3009 `ReceiveWithAuthorization(...)` type string (the deposit).
pub const RECEIVE_TYPE: &str = "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)";

fn word_u128(v: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

fn word_u64(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

fn hash_words(words: &[[u8; 32]]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(words.len() * 32);
    for w in words {
        buf.extend_from_slice(w);
    }
    keccak256(&buf)
}

fn envelope(separator: &[u8; 32], struct_hash: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(separator);
    buf[34..].copy_from_slice(struct_hash);
    keccak256(&buf)
}

/// The settlement contract's EIP-712 domain on one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelDomain {
    /// Chain id.
    pub chain_id: u64,
    separator: [u8; 32],
}

impl ChannelDomain {
    /// The domain of the canonical `x402BatchSettlement` on `chain_id`.
    pub fn new(chain_id: u64) -> Self {
        Self::at(chain_id, x402_types::batch::SETTLEMENT_CONTRACT)
    }

    /// The domain of a settlement contract at another address.
    pub fn at(chain_id: u64, contract: Address) -> Self {
        let separator = Domain {
            name: "x402 Batch Settlement".into(),
            version: "1".into(),
            chain_id,
            verifying_contract: contract,
        }
        .separator();
        ChannelDomain {
            chain_id,
            separator,
        }
    }

    /// The domain separator.
    pub fn separator(&self) -> [u8; 32] {
        self.separator
    }

    /// The channel id: the EIP-712 digest of the configuration.
    pub fn channel_id(&self, c: &ChannelConfig) -> B256 {
        let h = hash_words(&[
            keccak256(CHANNEL_CONFIG_TYPE.as_bytes()),
            c.payer.to_word(),
            c.payer_authorizer.to_word(),
            c.receiver.to_word(),
            c.receiver_authorizer.to_word(),
            c.token.to_word(),
            word_u64(c.withdraw_delay),
            c.salt.0,
        ]);
        FixedBytes(envelope(&self.separator, &h))
    }

    /// The digest a voucher signs.
    pub fn voucher_digest(&self, channel_id: &B256, max_claimable: u128) -> [u8; 32] {
        let h = hash_words(&[
            keccak256(VOUCHER_TYPE.as_bytes()),
            channel_id.0,
            word_u128(max_claimable),
        ]);
        envelope(&self.separator, &h)
    }

    /// The digest a cooperative refund signs (`nonce` = the chain's `refundNonce`).
    pub fn refund_digest(&self, channel_id: &B256, nonce: U256, amount: u128) -> [u8; 32] {
        let h = hash_words(&[
            keccak256(REFUND_TYPE.as_bytes()),
            channel_id.0,
            nonce.to_be_bytes(),
            word_u128(amount),
        ]);
        envelope(&self.separator, &h)
    }

    /// The digest a claim batch signs.
    pub fn claim_batch_digest(&self, claims: &[VoucherClaim]) -> [u8; 32] {
        let entry_type = keccak256(CLAIM_ENTRY_TYPE.as_bytes());
        let entries: Vec<[u8; 32]> = claims
            .iter()
            .map(|c| {
                hash_words(&[
                    entry_type,
                    self.channel_id(&c.voucher.channel).0,
                    word_u128(c.voucher.max_claimable_amount),
                    word_u128(c.total_claimed),
                ])
            })
            .collect();
        let h = hash_words(&[keccak256(CLAIM_BATCH_TYPE.as_bytes()), hash_words(&entries)]);
        envelope(&self.separator, &h)
    }
}

/// The ERC-3009 nonce of a deposit: `keccak256(abi.encode(bytes32 channelId, uint256 salt))`.
pub fn deposit_nonce(channel_id: &B256, salt: &B256) -> B256 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&channel_id.0);
    buf[32..].copy_from_slice(&salt.0);
    FixedBytes(keccak256(&buf))
}

/// The digest of a deposit's `ReceiveWithAuthorization` under the token's domain.
pub fn receive_digest(token_domain: &Domain, auth: &Authorization) -> [u8; 32] {
    let h = struct_hash_with(&keccak256(RECEIVE_TYPE.as_bytes()), auth);
    envelope(&token_domain.separator(), &h)
}

/// The deposit collector's `collectorData`:
/// `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)`.
pub fn collector_data(valid_after: U256, valid_before: U256, salt: &B256, sig: &[u8]) -> Vec<u8> {
    let padded = sig.len().div_ceil(32) * 32;
    let mut out = Vec::with_capacity(32 * 5 + padded);
    out.extend_from_slice(&valid_after.to_be_bytes());
    out.extend_from_slice(&valid_before.to_be_bytes());
    out.extend_from_slice(&salt.0);
    out.extend_from_slice(&word_u64(4 * 32)); // offset of `signature`
    out.extend_from_slice(&word_u64(sig.len() as u64));
    out.extend_from_slice(sig);
    out.resize(32 * 5 + padded, 0);
    out
}

fn sig65(bytes: &Bytes) -> Result<B65, SignatureError> {
    let arr: [u8; 65] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Malformed)?;
    Ok(FixedBytes(arr))
}

/// Recovers the signer of a digest from a wire signature (EOA: exactly 65 bytes).
/// The settlement contract takes only `v` in {27, 28} (a voucher with `v` 0 or 1 would
/// verify here and revert at claim time: unclaimable), so only those are accepted.
pub fn recover_bytes(digest: &[u8; 32], sig: &Bytes) -> Result<Address, SignatureError> {
    let sig = sig65(sig)?;
    match sig.0[64] {
        27 | 28 => recover(digest, &sig),
        v => Err(SignatureError::BadV(v)),
    }
}

/// Signs a voucher for `channel_id` up to `max_claimable`.
pub fn sign_voucher(
    signer: &dyn DigestSigner,
    domain: &ChannelDomain,
    channel_id: B256,
    max_claimable: u128,
) -> Result<SignedVoucher, Error> {
    let sig = signer.sign_digest(&domain.voucher_digest(&channel_id, max_claimable))?;
    Ok(SignedVoucher {
        channel_id,
        max_claimable_amount: max_claimable,
        signature: Bytes(sig.0.to_vec()),
    })
}

/// Who signed a voucher (an EOA `payerAuthorizer`).
pub fn voucher_signer(
    domain: &ChannelDomain,
    v: &SignedVoucher,
) -> Result<Address, SignatureError> {
    recover_bytes(
        &domain.voucher_digest(&v.channel_id, v.max_claimable_amount),
        &v.signature,
    )
}

/// Signs a cooperative refund as the receiver's authorizer.
pub fn sign_refund(
    signer: &dyn DigestSigner,
    domain: &ChannelDomain,
    channel_id: &B256,
    nonce: U256,
    amount: u128,
) -> Result<Bytes, Error> {
    let sig = signer.sign_digest(&domain.refund_digest(channel_id, nonce, amount))?;
    Ok(Bytes(sig.0.to_vec()))
}

/// Signs a claim batch as the receiver's authorizer.
pub fn sign_claim_batch(
    signer: &dyn DigestSigner,
    domain: &ChannelDomain,
    claims: &[VoucherClaim],
) -> Result<Bytes, Error> {
    let sig = signer.sign_digest(&domain.claim_batch_digest(claims))?;
    Ok(Bytes(sig.0.to_vec()))
}

/// A claim row for a voucher the server holds.
pub fn claim_row(config: &ChannelConfig, voucher: &SignedVoucher, total: u128) -> VoucherClaim {
    VoucherClaim {
        voucher: ClaimVoucher {
            channel: config.clone(),
            max_claimable_amount: voucher.max_claimable_amount,
        },
        signature: voucher.signature.clone(),
        total_claimed: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalSigner;

    #[test]
    fn collector_data_is_abi_encoded() {
        let sig = [7u8; 65];
        let d = collector_data(U256::ZERO, U256::from(5u64), &FixedBytes([1; 32]), &sig);
        assert_eq!(d.len(), 32 * 5 + 96);
        assert_eq!(d[127], 128); // offset
        assert_eq!(d[159], 65); // length
        assert_eq!(&d[160..225], &sig[..]);
        assert!(d[225..].iter().all(|b| *b == 0));
    }

    #[test]
    fn signatures_bind_every_field() {
        let s = LocalSigner::random().unwrap();
        let d = ChannelDomain::new(84532);
        let id = FixedBytes([9; 32]);
        let v = sign_voucher(&s, &d, id, 5).unwrap();
        assert_eq!(voucher_signer(&d, &v).unwrap(), s.address());
        let mut more = v.clone();
        more.max_claimable_amount = 6;
        assert_ne!(voucher_signer(&d, &more).unwrap(), s.address());
        assert_ne!(
            voucher_signer(&ChannelDomain::new(8453), &v).unwrap(),
            s.address()
        );
        let mut short = v.clone();
        short.signature.0.pop();
        assert!(voucher_signer(&d, &short).is_err());
        // v of 0 or 1 recovers the same key but the contract refuses it: refused here too.
        let mut low_v = v.clone();
        low_v.signature.0[64] -= 27;
        assert_eq!(
            voucher_signer(&d, &low_v),
            Err(SignatureError::BadV(low_v.signature.0[64]))
        );
    }
}
