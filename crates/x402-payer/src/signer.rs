//! secp256k1 signing and recovery (k256), and the local-key signer.

use std::fmt;
use std::path::Path;

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use x402_types::{Address, B65, FixedBytes, keccak256};

use crate::error::{Error, SignatureError};

/// Half the secp256k1 group order: signatures with `s` above it are malleable.
const HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// Something that signs 32-byte EVM digests with a secp256k1 key.
///
/// Implemented by [`LocalSigner`]; a hardware wallet or remote signer implements it too.
pub trait DigestSigner: Send + Sync {
    /// The signer's address.
    fn address(&self) -> Address;
    /// Signs a prehashed digest: 65 bytes `r || s || v`, `v` in {27, 28}, low `s`.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<B65, Error>;
}

/// A private key held in memory. `Debug` and `Display` show only the address;
/// the key is zeroized on drop (k256's `SigningKey` zeroizes its scalar).
pub struct LocalSigner {
    key: SigningKey,
    address: Address,
}

impl LocalSigner {
    /// From 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let key = SigningKey::from_slice(bytes)
            .map_err(|_| Error::InvalidKey("not a valid secp256k1 scalar"))?;
        let address = address_of(key.verifying_key());
        Ok(LocalSigner { key, address })
    }

    /// From hex (`0x` optional, surrounding whitespace ignored).
    pub fn from_hex(hex_key: &str) -> Result<Self, Error> {
        let t = hex_key.trim();
        let body = t.strip_prefix("0x").unwrap_or(t);
        if body.len() != 64 {
            return Err(Error::InvalidKey("expected 32 bytes of hex"));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(body, bytes.as_mut()).map_err(|_| Error::InvalidKey("not hex"))?;
        Self::from_bytes(&bytes)
    }

    /// From an environment variable holding hex.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let v = Zeroizing::new(
            std::env::var(var)
                .map_err(|_| Error::KeySource(format!("environment variable {var} is not set")))?,
        );
        Self::from_hex(&v)
    }

    /// From a file holding hex.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let v = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::KeySource(format!("cannot read {}: {e}", path.display())))?,
        );
        Self::from_hex(&v)
    }

    /// A fresh random key from the OS generator (development wallets).
    pub fn random() -> Result<Self, Error> {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(bytes.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
            if let Ok(s) = Self::from_bytes(&bytes) {
                return Ok(s);
            }
        }
    }

    /// The key as `0x` hex, for writing a key file. Handle with care.
    pub fn to_hex_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("0x{}", hex::encode(self.key.to_bytes())))
    }
}

impl DigestSigner for LocalSigner {
    fn address(&self) -> Address {
        self.address
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<B65, Error> {
        // Fails only if RFC 6979 yields r or s = 0 (probability ~2^-256).
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest)
            .map_err(|_| Error::Signer("secp256k1 signing failed".into()))?;
        // Low s (k256 already returns it): flip the parity if s had to change.
        let (sig, flip) = match sig.normalize_s() {
            Some(low) => (low, true),
            None => (sig, false),
        };
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + (recid.is_y_odd() ^ flip) as u8;
        Ok(FixedBytes(out))
    }
}

impl fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSigner")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for LocalSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)
    }
}

/// The address of a public key: the last 20 bytes of keccak256 of the uncompressed point.
pub fn address_of(vk: &VerifyingKey) -> Address {
    let point = vk.to_encoded_point(false);
    let bytes = point.as_bytes();
    let hash = keccak256(&bytes[1..]);
    let mut a = [0u8; 20];
    a.copy_from_slice(&hash[12..]);
    Address(a)
}

/// Recovers the signer of a digest. Accepts `v` in {0, 1, 27, 28}; refuses high `s`.
pub fn recover(digest: &[u8; 32], sig: &B65) -> Result<Address, SignatureError> {
    let bytes = sig.as_bytes();
    let v = match bytes[64] {
        0 | 27 => 0u8,
        1 | 28 => 1u8,
        other => return Err(SignatureError::BadV(other)),
    };
    if bytes[32..64] > HALF_N[..] {
        return Err(SignatureError::HighS);
    }
    let signature = Signature::from_slice(&bytes[..64]).map_err(|_| SignatureError::Malformed)?;
    let recid = RecoveryId::from_byte(v).ok_or(SignatureError::Malformed)?;
    let vk = VerifyingKey::recover_from_prehash(digest, &signature, recid)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&vk))
}
