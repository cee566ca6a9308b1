//! The verifier: a payload signed here verifies; every failure reason is reachable.

use std::sync::Arc;

use atomicstream_testkit::{DEV_ADDRESS, DEV_KEY};
use x402_payer::*;
use x402_types::{
    Amount, ExactEvmPayload, Network, PathVersion, PaymentPayload, PaymentRequirements,
    Requirement, SchemePayload, U256,
};

const NOW: u64 = 1_750_000_000;

fn req() -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(10_000),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        max_timeout_seconds: 60,
        extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
    }
}

fn payer() -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(DEV_KEY).unwrap())
        .with_clock(Arc::new(FixedClock(NOW)))
        .with_random(Arc::new(SeededRandom::new(1)))
}

fn signed(version: PathVersion, r: &Requirement) -> (PaymentPayload, PaymentRequirements) {
    let offer = Offer::from_requirement(version, r, "https://h/v2/stream/x", "x");
    let p = payer().sign(&offer).unwrap();
    let reqs = match offer {
        Offer::V1(r) => PaymentRequirements::V1(r),
        Offer::V2 { accepted, .. } => PaymentRequirements::V2(accepted.get().clone()),
    };
    (p, reqs)
}

fn reqs_of(version: PathVersion, r: &Requirement) -> PaymentRequirements {
    match version {
        PathVersion::V1 => PaymentRequirements::V1(r.to_v1("https://h/v2/stream/x", "x")),
        PathVersion::V2 => PaymentRequirements::V2(r.to_v2()),
    }
}

fn mutate(p: &PaymentPayload, f: impl FnOnce(&mut ExactEvmPayload)) -> PaymentPayload {
    let mut p = p.clone();
    let sp = match &mut p {
        PaymentPayload::V1(x) => &mut x.payload,
        PaymentPayload::V2(x) => &mut x.payload,
    };
    if let SchemePayload::ExactEvm(e) = sp {
        f(e);
    }
    p
}

#[test]
fn signed_payload_verifies_on_both_versions() {
    for v in [PathVersion::V1, PathVersion::V2] {
        let (p, r) = signed(v, &req());
        let from = verify_exact(&p, &r, NOW).unwrap();
        assert_eq!(from.to_string(), DEV_ADDRESS);
        let e = p.exact_evm().unwrap();
        assert_eq!(e.authorization.valid_after, U256::from_u64(NOW - 600));
        assert_eq!(e.authorization.valid_before, U256::from_u64(NOW + 60));
        assert_eq!(e.authorization.value, Amount::from(10_000));
        assert!(e.signature.0[64] == 27 || e.signature.0[64] == 28);
        // Survives the header round trip.
        let back = PaymentPayload::from_header(v, &p.to_header()).unwrap();
        assert_eq!(verify_exact(&back, &r, NOW).unwrap(), from);
    }
}

#[test]
fn fresh_nonce_per_payment_and_extra_fallback() {
    let mut r = req();
    r.extra = None; // falls back to the known-asset table
    let offer = Offer::from_requirement(PathVersion::V2, &r, "u", "d");
    let p = payer();
    let a = p.sign(&offer).unwrap();
    let b = p.sign(&offer).unwrap();
    assert_ne!(
        a.exact_evm().unwrap().authorization.nonce,
        b.exact_evm().unwrap().authorization.nonce
    );
    assert!(verify_exact(&a, &reqs_of(PathVersion::V2, &r), NOW).is_ok());
    // Unknown asset, no extra: refused, never guessed.
    r.asset = "0x0000000000000000000000000000000000000001".into();
    let offer = Offer::from_requirement(PathVersion::V2, &r, "u", "d");
    assert!(matches!(p.sign(&offer), Err(Error::UnknownAsset { .. })));
    // Non-EVM network: unsupported.
    let mut s = req();
    s.network = "solana".parse().unwrap();
    assert!(matches!(
        p.sign(&Offer::from_requirement(PathVersion::V2, &s, "u", "d")),
        Err(Error::Unsupported { .. })
    ));
    assert!(!p.supports("exact", &s.network));
    assert!(p.supports("exact", &Network::BASE));
}

#[test]
fn every_failure_reason() {
    let (p, r) = signed(PathVersion::V1, &req());
    let check = |payload: &PaymentPayload, reqs: &PaymentRequirements, now: u64| {
        verify_exact(payload, reqs, now).unwrap_err()
    };

    let mut other = req();
    other.scheme = "upto".into();
    assert!(matches!(
        check(&p, &reqs_of(PathVersion::V1, &other), NOW),
        VerifyFailure::Scheme { .. }
    ));

    let mut other = req();
    other.network = Network::BASE;
    assert!(matches!(
        check(&p, &reqs_of(PathVersion::V1, &other), NOW),
        VerifyFailure::Network { .. }
    ));

    let mut other = req();
    other.pay_to = "0x0000000000000000000000000000000000000002".into();
    assert!(matches!(
        check(&p, &reqs_of(PathVersion::V1, &other), NOW),
        VerifyFailure::Recipient { .. }
    ));

    // payTo compared case-insensitively.
    let mut lower = req();
    lower.pay_to = lower.pay_to.to_lowercase();
    assert!(verify_exact(&p, &reqs_of(PathVersion::V1, &lower), NOW).is_ok());

    let mut under = req();
    under.amount = Amount::from(20_000);
    let f = check(&p, &reqs_of(PathVersion::V1, &under), NOW);
    assert!(matches!(f, VerifyFailure::Amount { .. }));
    assert_eq!(
        f.reason().as_str(),
        "invalid_exact_evm_payload_authorization_value"
    );
    let mut over = req();
    over.amount = Amount::from(5_000);
    assert!(matches!(
        check(&p, &reqs_of(PathVersion::V1, &over), NOW),
        VerifyFailure::Amount { .. }
    ));

    let mut asset = req();
    asset.asset = "0x0000000000000000000000000000000000000001".into();
    asset.extra = None;
    assert!(matches!(
        check(&p, &reqs_of(PathVersion::V1, &asset), NOW),
        VerifyFailure::Domain(_)
    ));

    assert!(matches!(
        check(&p, &r, NOW - 601),
        VerifyFailure::NotYetValid { .. }
    ));
    assert!(matches!(
        check(&p, &r, NOW + 55),
        VerifyFailure::Expired { .. }
    ));
    assert!(verify_exact(&p, &r, NOW + 54).is_ok());

    // Tampered value: signature no longer matches `from`.
    let tampered = mutate(&p, |e| e.authorization.nonce.0[0] ^= 1);
    assert!(matches!(
        check(&tampered, &r, NOW),
        VerifyFailure::SignerMismatch { .. }
    ));
    let bad_v = mutate(&p, |e| e.signature.0[64] = 9);
    assert!(matches!(
        check(&bad_v, &r, NOW),
        VerifyFailure::Signature(SignatureError::BadV(9))
    ));
    let high_s = mutate(&p, |e| e.signature.0[32] = 0xff);
    assert!(matches!(
        check(&high_s, &r, NOW),
        VerifyFailure::Signature(SignatureError::HighS)
    ));
    let zero = mutate(&p, |e| e.signature.0 = [0u8; 65]);
    assert!(matches!(check(&zero, &r, NOW), VerifyFailure::Signature(_)));

    // v2: accepted must deep-equal the offered requirement.
    let (p2, _) = signed(PathVersion::V2, &req());
    let mut changed = req();
    changed.max_timeout_seconds = 61;
    assert_eq!(
        check(&p2, &reqs_of(PathVersion::V2, &changed), NOW),
        VerifyFailure::AcceptedMismatch
    );
    assert_eq!(
        check(&p2, &reqs_of(PathVersion::V1, &req()), NOW),
        VerifyFailure::AcceptedMismatch
    );

    // Non-EVM payload.
    let mut other_payload = p.clone();
    if let PaymentPayload::V1(x) = &mut other_payload {
        x.payload = SchemePayload::Other(serde_json::Map::new());
    }
    assert_eq!(
        check(&other_payload, &r, NOW),
        VerifyFailure::UnsupportedPayload
    );
}
