//! EVM addresses (EIP-55) and fixed-size hex values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tiny_keccak::{Hasher, Keccak};

use crate::error::{Error, truncate};

/// Keccak-256 of `data` (the hash Ethereum uses everywhere).
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    let mut k = Keccak::v256();
    k.update(data);
    let mut out = [0u8; 32];
    k.finalize(&mut out);
    out
}

/// A 20-byte EVM address.
///
/// Parses any case; when the input mixes upper and lower case its EIP-55
/// checksum must be right. Prints checksummed.
///
/// ```
/// use x402_types::Address;
/// let a: Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap();
/// assert_eq!(a.to_string(), "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
/// assert!("0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266".parse::<Address>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The ABI encoding: 12 zero bytes then the address.
    pub fn to_word(&self) -> [u8; 32] {
        let mut w = [0u8; 32];
        w[12..].copy_from_slice(&self.0);
        w
    }

    /// The EIP-55 checksummed form, `0x`-prefixed.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason| Error::Address {
            input: truncate(s),
            reason,
        };
        let body = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(err("missing 0x prefix"))?;
        if body.len() != 40 {
            return Err(err("expected 40 hex digits"));
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(body, &mut bytes).map_err(|_| err("not hex"))?;
        let addr = Address(bytes);
        let has_upper = body.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = body.bytes().any(|b| b.is_ascii_lowercase());
        if has_upper && has_lower && addr.to_checksum()[2..] != *body {
            return Err(err("bad EIP-55 checksum"));
        }
        Ok(addr)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.to_checksum())
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_checksum())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A fixed-size byte string written as `0x`-prefixed hex (any case in, lower case out).
///
/// [`Nonce`] (32 bytes) is the EIP-3009 nonce; [`B65`] holds a 65-byte
/// `r || s || v` signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedBytes<const N: usize>(pub [u8; N]);

/// The 32-byte EIP-3009 authorization nonce.
pub type Nonce = FixedBytes<32>;
/// A 65-byte ECDSA signature `r || s || v`.
pub type B65 = FixedBytes<65>;
/// A 32-byte hash.
pub type B256 = FixedBytes<32>;

impl<const N: usize> FixedBytes<N> {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> Default for FixedBytes<N> {
    fn default() -> Self {
        FixedBytes([0u8; N])
    }
}

impl<const N: usize> FromStr for FixedBytes<N> {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = || Error::Hex {
            input: truncate(s),
            expected_bytes: N,
        };
        let body = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(err)?;
        if body.len() != 2 * N {
            return Err(err());
        }
        let mut bytes = [0u8; N];
        hex::decode_to_slice(body, &mut bytes).map_err(|_| err())?;
        Ok(FixedBytes(bytes))
    }
}

impl<const N: usize> fmt::Display for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl<const N: usize> fmt::Debug for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for FixedBytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_vectors() {
        // From the EIP-55 specification.
        for s in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(s.to_lowercase().parse::<Address>().unwrap(), a);
            assert_eq!(
                format!("0x{}", s[2..].to_uppercase())
                    .parse::<Address>()
                    .unwrap(),
                a
            );
        }
        assert!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"
                .parse::<Address>()
                .is_err()
        );
        assert!(
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
                .parse::<Address>()
                .is_err()
        );
        assert!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA"
                .parse::<Address>()
                .is_err()
        );
    }

    #[test]
    fn nonce_hex() {
        let n: Nonce = "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
            .parse()
            .unwrap();
        assert_eq!(
            n.to_string(),
            "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
        );
        assert!("0x1234".parse::<Nonce>().is_err());
        assert!(
            "0xzz746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
                .parse::<Nonce>()
                .is_err()
        );
    }
}
