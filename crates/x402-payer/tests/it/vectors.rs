//! Known-answer vectors: the one of x402-facts.md and 24 produced by eth-account.

use atomicstream_testkit::{DEV_ADDRESS, DEV_KEY};
use serde::Deserialize;
use x402_payer::eip712::{Domain, digest, transfer_typehash};
use x402_payer::{DigestSigner, LocalSigner, recover};
use x402_types::{Address, Authorization, B65};

fn kat_auth() -> Authorization {
    serde_json::from_str(r#"{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"10000","validAfter":"1740672089","validBefore":"1740672154","nonce":"0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"}"#).unwrap()
}

fn hex32(s: &str) -> [u8; 32] {
    let mut b = [0u8; 32];
    hex::decode_to_slice(&s[2..], &mut b).unwrap();
    b
}

#[test]
fn typehash() {
    assert_eq!(
        transfer_typehash(),
        hex32("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
    );
}

#[test]
fn facts_known_answer() {
    let signer = LocalSigner::from_hex(DEV_KEY).unwrap();
    assert_eq!(signer.address().to_string(), DEV_ADDRESS);
    let domain = Domain {
        name: "USDC".into(),
        version: "2".into(),
        chain_id: 84532,
        verifying_contract: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
            .parse()
            .unwrap(),
    };
    let sep = domain.separator();
    assert_eq!(
        sep,
        hex32("0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
    );
    let d = digest(&sep, &kat_auth());
    assert_eq!(
        d,
        hex32("0x50708d3bf7216e1aeabe7bf22081b9f36c7c287530f92510318f13a03d89dc86")
    );
    let sig = signer.sign_digest(&d).unwrap();
    assert_eq!(
        sig.to_string(),
        "0xdc53a4a579de989368a0fae2ef2172ff2f474b4297013f865d171239f17ef4c3157b4b4030f1bebc53d55ace15c2377dff501a60e1e56c291f1000d6e78f082f1b"
    );
    assert_eq!(recover(&d, &sig).unwrap(), signer.address());

    let base = Domain {
        name: "USD Coin".into(),
        version: "2".into(),
        chain_id: 8453,
        verifying_contract: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
            .parse()
            .unwrap(),
    };
    assert_eq!(
        digest(&base.separator(), &kat_auth()),
        hex32("0x7e9613714edd92ad20fa5b252ec168245031911a3438dd20225f083b6a688f8a")
    );
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    private_key: String,
    address: Address,
    domain: VDomain,
    authorization: Authorization,
    domain_separator: String,
    digest: String,
    signature: B65,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VDomain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
}

#[test]
fn eth_account_vectors() {
    let vectors: Vec<Vector> = serde_json::from_str(include_str!("vectors/eip3009.json")).unwrap();
    assert!(vectors.len() >= 20);
    for (i, v) in vectors.iter().enumerate() {
        let signer = LocalSigner::from_hex(&v.private_key).unwrap();
        assert_eq!(signer.address(), v.address, "vector {i}");
        let domain = Domain {
            name: v.domain.name.clone(),
            version: v.domain.version.clone(),
            chain_id: v.domain.chain_id,
            verifying_contract: v.domain.verifying_contract,
        };
        let sep = domain.separator();
        assert_eq!(sep, hex32(&v.domain_separator), "separator {i}");
        let d = digest(&sep, &v.authorization);
        assert_eq!(d, hex32(&v.digest), "digest {i}");
        // Both sides use RFC 6979 deterministic nonces and low-s: byte-equal signatures.
        assert_eq!(
            signer.sign_digest(&d).unwrap(),
            v.signature,
            "signature {i}"
        );
        assert_eq!(recover(&d, &v.signature).unwrap(), v.address, "recover {i}");
    }
}

#[test]
fn recover_accepts_v01_and_rejects_bad_v_and_high_s() {
    let signer = LocalSigner::from_hex(DEV_KEY).unwrap();
    let d = [7u8; 32];
    let sig = signer.sign_digest(&d).unwrap();
    let mut b = sig.0;
    assert!(b[64] == 27 || b[64] == 28);
    b[64] -= 27;
    assert_eq!(
        recover(&d, &x402_types::FixedBytes(b)).unwrap(),
        signer.address()
    );
    b[64] = 5;
    assert_eq!(
        recover(&d, &x402_types::FixedBytes(b)),
        Err(x402_payer::SignatureError::BadV(5))
    );
    // s' = n - s is the malleable twin.
    let n = hex32("0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig.0[32..64]);
    let mut borrow = 0i16;
    let mut high = [0u8; 32];
    for i in (0..32).rev() {
        let v = n[i] as i16 - s[i] as i16 - borrow;
        high[i] = v.rem_euclid(256) as u8;
        borrow = if v < 0 { 1 } else { 0 };
    }
    let mut m = sig.0;
    m[32..64].copy_from_slice(&high);
    m[64] = if sig.0[64] == 27 { 28 } else { 27 };
    assert_eq!(
        recover(&d, &x402_types::FixedBytes(m)),
        Err(x402_payer::SignatureError::HighS)
    );
    assert!(recover(&d, &x402_types::FixedBytes([0u8; 65])).is_err());
}

#[test]
fn debug_shows_only_the_address() {
    let signer = LocalSigner::from_hex(DEV_KEY).unwrap();
    let shown = format!("{signer:?} {signer}");
    assert!(shown.contains(DEV_ADDRESS));
    assert!(!shown.contains(&DEV_KEY[2..18]));
    assert!(LocalSigner::from_hex("0x1234").is_err());
    assert!(LocalSigner::from_hex(&"00".repeat(32)).is_err());
    assert!(LocalSigner::from_env("X402_SURELY_NOT_SET_VARIABLE").is_err());
}
