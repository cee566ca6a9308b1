//! Self-contained, tamper-proof session tokens (HMAC-SHA256).
//!
//! `token = base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims JSON))`.
//! The claims bind the version, stream, quote id, issue time, quote expiry and
//! the exact requirement (price, payTo, asset, network).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x402_types::PathVersion;

type HmacSha256 = Hmac<Sha256>;

/// Largest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Path version.
    pub v: PathVersion,
    /// Stream id.
    pub s: String,
    /// Quote id (the session key).
    pub q: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Unpaid quote expiry (unix seconds).
    pub exp: u64,
    /// Price per slice (atomic units).
    pub amt: String,
    /// payTo.
    pub to: String,
    /// Asset.
    pub asset: String,
    /// Network (CAIP-2).
    pub net: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `claims.mac`, bad base64, bad JSON, too long.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match.
    #[error("token signature invalid")]
    BadMac,
    /// The token names another stream or version than the URL.
    #[error("token is for another stream or version")]
    WrongScope,
}

/// Signs and checks tokens with a server secret.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    /// From secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        TokenKey {
            key: secret.to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// Issues a token.
    pub fn issue(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut m = self.mac();
        m.update(&json);
        let tag = m.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks the MAC (constant time) and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let mut m = self.mac();
        m.update(&json);
        m.verify_slice(&tag).map_err(|_| TokenError::BadMac)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }

    /// Checks the MAC and that the token belongs to `version` and `stream`.
    pub fn verify_for(
        &self,
        token: &str,
        version: PathVersion,
        stream: &str,
    ) -> Result<Claims, TokenError> {
        let c = self.verify(token)?;
        if c.v != version || c.s != stream {
            return Err(TokenError::WrongScope);
        }
        Ok(c)
    }
}

/// A short, loggable prefix of a token or signature (never log them in full).
///
/// The text comes from a request: anything but a token's own alphabet is
/// escaped, so a crafted token (`%0A%1B[8m…`) cannot forge or hide log lines.
pub fn redact(s: &str) -> String {
    let head: String = s
        .chars()
        .take(8)
        .flat_map(|c| {
            let plain = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=');
            let escaped: Vec<char> = if plain {
                vec![c]
            } else {
                c.escape_default().collect()
            };
            escaped
        })
        .collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_escapes_what_a_request_could_smuggle_into_logs() {
        let r = redact("ab\n\u{1b}[8mINFO forged");
        assert!(!r.chars().any(char::is_control), "{r:?}");
        assert!(r.starts_with("ab\\n\\u{1b}"), "{r:?}");
        assert_eq!(redact("abcdefghijkl"), "abcdefgh…");
    }

    fn claims() -> Claims {
        Claims {
            v: PathVersion::V2,
            s: "btc".into(),
            q: "q1".into(),
            iat: 1,
            exp: 61,
            amt: "1000".into(),
            to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            net: "eip155:84532".into(),
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let k = TokenKey::new(b"hunter2");
        let t = k.issue(&claims());
        assert_eq!(k.verify_for(&t, PathVersion::V2, "btc").unwrap(), claims());
        assert_eq!(
            k.verify_for(&t, PathVersion::V1, "btc"),
            Err(TokenError::WrongScope)
        );
        assert_eq!(
            k.verify_for(&t, PathVersion::V2, "eth"),
            Err(TokenError::WrongScope)
        );
        assert_eq!(TokenKey::new(b"other").verify(&t), Err(TokenError::BadMac));
        // Flip one character of the claims: the MAC no longer matches (or it no longer decodes).
        let mut bytes = t.clone().into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(k.verify(&tampered).is_err());
        assert_eq!(k.verify("nodot"), Err(TokenError::Malformed));
        assert_eq!(k.verify(&"a".repeat(5000)), Err(TokenError::Malformed));
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
