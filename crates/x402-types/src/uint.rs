//! 256-bit unsigned integers and atomic-unit amounts.
//!
//! On the wire every amount and EIP-3009 time bound is a decimal string
//! (`"10000"`). [`U256`] parses exactly that form and nothing else: no sign,
//! no fraction, no exponent, no leading zeros, no overflow. Arithmetic is
//! checked only.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, IntegerError, truncate};

/// An unsigned 256-bit integer (four little-endian 64-bit limbs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct U256([u64; 4]);

impl U256 {
    /// Zero.
    pub const ZERO: U256 = U256([0; 4]);
    /// 2^256 - 1.
    pub const MAX: U256 = U256([u64::MAX; 4]);

    /// From a `u64`.
    pub const fn from_u64(v: u64) -> Self {
        U256([v, 0, 0, 0])
    }

    /// From a `u128`.
    pub const fn from_u128(v: u128) -> Self {
        U256([v as u64, (v >> 64) as u64, 0, 0])
    }

    /// The value as `u64` if it fits.
    pub fn to_u64(&self) -> Option<u64> {
        if self.0[1] == 0 && self.0[2] == 0 && self.0[3] == 0 {
            Some(self.0[0])
        } else {
            None
        }
    }

    /// The value as `u128` if it fits.
    pub fn to_u128(&self) -> Option<u128> {
        if self.0[2] == 0 && self.0[3] == 0 {
            Some(u128::from(self.0[0]) | (u128::from(self.0[1]) << 64))
        } else {
            None
        }
    }

    /// Whether this is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Big-endian 32 bytes (the ABI encoding of `uint256`).
    pub fn to_be_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().rev().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    /// From big-endian 32 bytes.
    pub fn from_be_bytes(bytes: [u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().rev().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *limb = u64::from_be_bytes(b);
        }
        U256(limbs)
    }

    /// `self + rhs`, or `None` on overflow.
    pub fn checked_add(self, rhs: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(rhs.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *o = s2;
            carry = c1 || c2;
        }
        if carry { None } else { Some(U256(out)) }
    }

    /// `self - rhs`, or `None` if `rhs > self`.
    pub fn checked_sub(self, rhs: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (d1, b1) = self.0[i].overflowing_sub(rhs.0[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *o = d2;
            borrow = b1 || b2;
        }
        if borrow { None } else { Some(U256(out)) }
    }

    /// `self - rhs`, or zero if `rhs > self`.
    pub fn saturating_sub(self, rhs: U256) -> U256 {
        self.checked_sub(rhs).unwrap_or(U256::ZERO)
    }

    /// `self * rhs` for a `u64` factor, or `None` on overflow.
    pub fn checked_mul_u64(self, rhs: u64) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry: u128 = 0;
        for (i, o) in out.iter_mut().enumerate() {
            let p = u128::from(self.0[i]) * u128::from(rhs) + carry;
            *o = p as u64;
            carry = p >> 64;
        }
        if carry != 0 { None } else { Some(U256(out)) }
    }

    /// `(self / rhs, self % rhs)` for a non-zero `u64` divisor; `None` if `rhs == 0`.
    pub fn div_rem_u64(self, rhs: u64) -> Option<(U256, u64)> {
        if rhs == 0 {
            return None;
        }
        let mut out = [0u64; 4];
        let mut rem: u128 = 0;
        for i in (0..4).rev() {
            let cur = (rem << 64) | u128::from(self.0[i]);
            out[i] = (cur / u128::from(rhs)) as u64;
            rem = cur % u128::from(rhs);
        }
        Some((U256(out), rem as u64))
    }

    /// Parses the canonical decimal wire form.
    pub fn from_dec_str(s: &str) -> Result<Self, Error> {
        let err = |reason| Error::Integer {
            input: truncate(s),
            reason,
        };
        let first = s
            .as_bytes()
            .first()
            .copied()
            .ok_or(err(IntegerError::Empty))?;
        match first {
            b'-' => return Err(err(IntegerError::Negative)),
            b'+' => return Err(err(IntegerError::NotCanonical)),
            _ => {}
        }
        if s.contains(['e', 'E']) {
            return Err(err(IntegerError::Exponent));
        }
        if s.contains('.') {
            return Err(err(IntegerError::Fraction));
        }
        if s.len() > 1 && first == b'0' {
            return Err(err(IntegerError::NotCanonical));
        }
        Self::parse_digits(s.as_bytes()).ok_or_else(|| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                err(IntegerError::Overflow)
            } else {
                err(IntegerError::InvalidDigit)
            }
        })
    }

    fn parse_digits(digits: &[u8]) -> Option<U256> {
        let mut acc = U256::ZERO;
        for &b in digits {
            if !b.is_ascii_digit() {
                return None;
            }
            acc = acc
                .checked_mul_u64(10)?
                .checked_add(U256::from_u64(u64::from(b - b'0')))?;
        }
        Some(acc)
    }

    /// `self * 10^exp`, or `None` on overflow.
    pub fn checked_mul_pow10(self, exp: u8) -> Option<U256> {
        let mut acc = self;
        for _ in 0..exp {
            acc = acc.checked_mul_u64(10)?;
        }
        Some(acc)
    }
}

impl Ord for U256 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for U256 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl From<u64> for U256 {
    fn from(v: u64) -> Self {
        U256::from_u64(v)
    }
}

impl fmt::Display for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.pad("0");
        }
        // 78 digits hold 2^256 - 1.
        let mut buf = [0u8; 78];
        let mut pos = buf.len();
        let mut cur = *self;
        while !cur.is_zero() {
            // Divide by 10^19 at a time for speed.
            let (q, mut r) = cur
                .div_rem_u64(10_000_000_000_000_000_000)
                .unwrap_or((U256::ZERO, 0));
            let last = q.is_zero();
            let mut n = 0;
            while (r > 0 || !last) && n < 19 {
                pos -= 1;
                buf[pos] = b'0' + (r % 10) as u8;
                r /= 10;
                n += 1;
            }
            cur = q;
        }
        // Only ASCII digits were written.
        f.pad(std::str::from_utf8(&buf[pos..]).unwrap_or("0"))
    }
}

impl fmt::Debug for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for U256 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        U256::from_dec_str(s)
    }
}

impl Serialize for U256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for U256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        U256::from_dec_str(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of an asset in its smallest (atomic) unit: `10000` is 0.01 USDC.
///
/// Serialized as the decimal string of x402 (`"10000"`). Decimal display
/// strings exist only for people: [`Amount::from_display`] and
/// [`Amount::to_display`].
///
/// ```
/// use x402_types::Amount;
/// let a = Amount::from_display("0.01", 6).unwrap();
/// assert_eq!(a, Amount::from(10_000u64));
/// assert_eq!(a.to_display(6), "0.01");
/// assert!("-1".parse::<Amount>().is_err());
/// assert!("1e6".parse::<Amount>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Amount(pub U256);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(U256::ZERO);

    /// The raw integer.
    pub fn atomic(&self) -> U256 {
        self.0
    }

    /// Checked addition.
    pub fn checked_add(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_add(rhs.0).map(Amount)
    }

    /// Checked subtraction.
    pub fn checked_sub(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_sub(rhs.0).map(Amount)
    }

    /// Saturating subtraction (zero when `rhs > self`).
    pub fn saturating_sub(self, rhs: Amount) -> Amount {
        Amount(self.0.saturating_sub(rhs.0))
    }

    /// Checked multiplication by a count.
    pub fn checked_mul(self, n: u64) -> Option<Amount> {
        self.0.checked_mul_u64(n).map(Amount)
    }

    /// Parses what a person types (`"0.05"`, `"12"`, `"1.000001"`) for an
    /// asset with `decimals` decimals. Refuses signs, exponents, more decimals
    /// than the asset has, and overflow.
    pub fn from_display(s: &str, decimals: u8) -> Result<Amount, Error> {
        let err = |reason| Error::DisplayAmount {
            input: truncate(s),
            decimals,
            reason,
        };
        if s.is_empty() {
            return Err(err(IntegerError::Empty));
        }
        if s.starts_with('-') {
            return Err(err(IntegerError::Negative));
        }
        if s.contains(['e', 'E']) {
            return Err(err(IntegerError::Exponent));
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err(IntegerError::Empty));
        }
        if frac.len() > usize::from(decimals) {
            return Err(err(IntegerError::Fraction));
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(err(IntegerError::InvalidDigit));
        }
        let int_v = U256::parse_digits(int.as_bytes()).ok_or(err(IntegerError::Overflow))?;
        let frac_v = U256::parse_digits(frac.as_bytes()).ok_or(err(IntegerError::Overflow))?;
        let whole = int_v
            .checked_mul_pow10(decimals)
            .ok_or(err(IntegerError::Overflow))?;
        let frac_v = frac_v
            .checked_mul_pow10(decimals - frac.len() as u8)
            .ok_or(err(IntegerError::Overflow))?;
        whole
            .checked_add(frac_v)
            .map(Amount)
            .ok_or(err(IntegerError::Overflow))
    }

    /// The decimal display form for an asset with `decimals` decimals, with
    /// trailing zeros of the fraction removed (`10000` with 6 -> `"0.01"`).
    pub fn to_display(&self, decimals: u8) -> String {
        let digits = self.0.to_string();
        let d = usize::from(decimals);
        if d == 0 {
            return digits;
        }
        let padded = if digits.len() <= d {
            format!("{}{}", "0".repeat(d + 1 - digits.len()), digits)
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - d);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        }
    }
}

impl From<u64> for Amount {
    fn from(v: u64) -> Self {
        Amount(U256::from_u64(v))
    }
}

impl Amount {
    /// From a `u128` (a `batch-settlement` amount).
    pub fn from_u128(v: u128) -> Self {
        Amount(U256::from_u128(v))
    }
}

impl FromStr for Amount {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        U256::from_dec_str(s).map(Amount)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_round_trips() {
        let s = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        let v: U256 = s.parse().unwrap();
        assert_eq!(v, U256::MAX);
        assert_eq!(v.to_string(), s);
        let over = "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert!(matches!(
            over.parse::<U256>(),
            Err(Error::Integer {
                reason: IntegerError::Overflow,
                ..
            })
        ));
    }

    #[test]
    fn refuses_non_canonical() {
        for (s, r) in [
            ("", IntegerError::Empty),
            ("-1", IntegerError::Negative),
            ("1.5", IntegerError::Fraction),
            ("1e6", IntegerError::Exponent),
            ("01", IntegerError::NotCanonical),
            ("+1", IntegerError::NotCanonical),
            ("12a", IntegerError::InvalidDigit),
            (" 1", IntegerError::InvalidDigit),
        ] {
            match s.parse::<U256>() {
                Err(Error::Integer { reason, .. }) => assert_eq!(reason, r, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!("0".parse::<U256>().unwrap(), U256::ZERO);
    }

    #[test]
    fn display_conversions() {
        assert_eq!(
            Amount::from_display("0.01", 6).unwrap(),
            Amount::from(10_000)
        );
        assert_eq!(
            Amount::from_display("12", 6).unwrap(),
            Amount::from(12_000_000)
        );
        assert_eq!(
            Amount::from_display(".5", 6).unwrap(),
            Amount::from(500_000)
        );
        assert_eq!(
            Amount::from_display("1.000001", 6).unwrap(),
            Amount::from(1_000_001)
        );
        assert!(Amount::from_display("0.0000001", 6).is_err());
        assert!(Amount::from_display("-0.1", 6).is_err());
        assert!(Amount::from_display("1e3", 6).is_err());
        assert!(Amount::from_display(".", 6).is_err());
        assert_eq!(Amount::from(10_000).to_display(6), "0.01");
        assert_eq!(Amount::from(1).to_display(6), "0.000001");
        assert_eq!(Amount::from(12_000_000).to_display(6), "12");
        assert_eq!(Amount::ZERO.to_display(6), "0");
        assert_eq!(Amount::from(5).to_display(0), "5");
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(U256::MAX.checked_add(U256::from_u64(1)), None);
        assert_eq!(U256::ZERO.checked_sub(U256::from_u64(1)), None);
        assert_eq!(U256::MAX.checked_mul_u64(2), None);
        let a = U256::from_u128(u128::MAX);
        let b = a.checked_add(U256::from_u64(1)).unwrap();
        assert_eq!(b.to_string(), "340282366920938463463374607431768211456");
        assert_eq!(b.checked_sub(U256::from_u64(1)).unwrap(), a);
        assert!(b > a);
        assert_eq!(U256::from_be_bytes(b.to_be_bytes()), b);
    }
}
