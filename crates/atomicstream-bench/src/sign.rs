//! Rows 1a and 1b: signing and verifying a payment against bare k256.

use std::time::Instant;

use x402_payer::verify_exact;
use x402_types::PaymentRequirements;

use crate::fixture::{bench_offer, hex_key, signer_payer};
use crate::report::{ROUNDS, Report};

pub(crate) fn bench_signing(r: &mut Report) {
    use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
    let payer = signer_payer();
    let (req, offer) = bench_offer();
    let n = 2_000;
    let key = SigningKey::from_slice(&hex_key()).unwrap_or_else(|_| unreachable!("constant key"));
    let digest = [7u8; 32];
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut last = None;
    let mut sig = None;
    // Alternate rounds: noise hits both alike; medians and the spread are reported.
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..n {
            last = payer.sign(&offer).ok();
        }
        ours.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..n {
            let mut d = digest;
            d[0] = i as u8;
            sig = key.sign_prehash_recoverable(&d).ok();
        }
        bare.push(n as f64 / t.elapsed().as_secs_f64());
    }
    r.rounds(
        "1a. sign EIP-3009 payment via Payer",
        &ours,
        "ops/s",
        "bare k256 sign_prehash_recoverable",
        &bare,
        0.9,
    );

    let payload = last.unwrap_or_else(|| unreachable!("signing works"));
    let reqs = PaymentRequirements::V2(req.to_v2());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (s, rid): (Signature, RecoveryId) = sig.unwrap_or_else(|| unreachable!());
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(verify_exact(&payload, &reqs, now));
        }
        ours.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(VerifyingKey::recover_from_prehash(&digest, &s, rid));
        }
        bare.push(n as f64 / t.elapsed().as_secs_f64());
    }
    r.rounds(
        "1b. verify payment (all checks + recovery)",
        &ours,
        "ops/s",
        "bare k256 recover_from_prehash",
        &bare,
        0.9,
    );
}
