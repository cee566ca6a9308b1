//! Row 9a: `batch-settlement` vouchers verified per second on the server's path, against
//! bare recovery of the same digests.

use std::time::Instant;

use x402_payer::channel::{ChannelDomain, sign_voucher, voucher_signer};
use x402_payer::{DigestSigner, LocalSigner, recover};
use x402_server::DEV_PAY_TO;
use x402_session::channel::{ChannelRecord, Judgement};
use x402_types::batch::{ChannelConfig, SignedVoucher};
use x402_types::{B65, FixedBytes};

use crate::fixture::KEY;
use crate::report::{ROUNDS, Report};

/// One slice's price (atomic units): each voucher signs the previous total plus this.
const PRICE: u128 = 10_000;

/// Ours: what the server does with a voucher on a channel it holds
/// (`x402_server::channels`): recover its signer from the voucher digest
/// (`voucher_signer` on `ChannelDomain::voucher_digest`), compare with
/// `payerAuthorizer`, judge it by the session rule (`ChannelRecord::judge`: the
/// cumulative rule, balance, claimed total) and record it (`accept`), in order, on a
/// fresh record each round. The baseline: `x402_payer::recover` (k256 recovery and the
/// address) of the same precomputed digests and signatures.
pub(crate) fn bench_vouchers(r: &mut Report) {
    let payer = LocalSigner::from_hex(KEY).unwrap_or_else(|_| unreachable!("constant key"));
    let config = ChannelConfig {
        payer: payer.address(),
        payer_authorizer: payer.address(),
        receiver: DEV_PAY_TO.parse().unwrap_or_default(),
        receiver_authorizer: x402_server::facilitator::EMBEDDED_RECEIVER_AUTHORIZER,
        token: "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
            .parse()
            .unwrap_or_default(),
        withdraw_delay: 900,
        salt: FixedBytes([1; 32]),
    };
    let domain = ChannelDomain::new(84532);
    let id = domain.channel_id(&config);
    let n: u128 = 2_000;
    let vouchers: Vec<SignedVoucher> = (1..=n)
        .filter_map(|i| sign_voucher(&payer, &domain, id, i * PRICE).ok())
        .collect();
    let bare_inputs: Vec<([u8; 32], B65)> = vouchers
        .iter()
        .filter_map(|v| {
            let sig: [u8; 65] = v.signature.as_slice().try_into().ok()?;
            Some((
                domain.voucher_digest(&v.channel_id, v.max_claimable_amount),
                FixedBytes(sig),
            ))
        })
        .collect();
    let mut fresh = ChannelRecord::new(config.clone(), id);
    fresh.balance = n * PRICE;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut refused = 0usize;
    for _ in 0..ROUNDS {
        let mut rec = fresh.clone();
        let t = Instant::now();
        for v in &vouchers {
            let signed = voucher_signer(&domain, v).is_ok_and(|a| a == config.payer_authorizer);
            match rec.judge(v, PRICE, now) {
                Judgement::Accept { charge } if signed => rec.accept(v, charge),
                _ => refused += 1,
            }
        }
        ours.push(vouchers.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (d, s) in &bare_inputs {
            let _ = std::hint::black_box(recover(d, s));
        }
        bare.push(bare_inputs.len() as f64 / t.elapsed().as_secs_f64());
    }
    if refused != 0 || vouchers.len() != n as usize || bare_inputs.len() != vouchers.len() {
        r.plain(
            &format!("9a. voucher verify: {refused} good vouchers refused"),
            f64::NAN,
            "",
            "every voucher accepted",
            Some(false),
        );
        return;
    }
    r.rounds(
        "9a. verify a voucher (recover + judge + accept)",
        &ours,
        "ops/s",
        "bare k256 recovery of the same digests (x402_payer::recover)",
        &bare,
        0.9,
    );
}
