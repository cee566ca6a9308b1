//! Bad input and faults on `batch-settlement` channels, end to end on anvil: payloads
//! signed in Rust (`channel_rig::Buyer`) sent to our server's renew URL, our EVM
//! facilitator and channel contracts underneath. Each case checks what the server
//! answers, what it charged (its `atomicstream_channel_charged_atomic` metric) and, where
//! money moves, the balances on chain to the unit: nothing charged beyond accepted
//! vouchers, nothing credited twice, nothing lost.

use std::time::Duration;

use x402_chain::EvmU256;
use x402_payer::LocalSigner;
use x402_payer::channel::{sign_voucher, voucher_signer};
use x402_types::batch::{BatchPayload, Bytes, ChannelConfig, SignedVoucher, VoucherState, reasons};

use crate::channel_rig::{
    Answer, Buyer, MIN_DEPOSIT, PRICE, Quote, Rig, WITHDRAW_DELAY, sol_config,
};

const P: u128 = PRICE as u128;
const FUND: u64 = 1_000_000;
/// A claim threshold the tests never reach: only a withdrawal makes the manager claim.
const NEVER: u64 = 1_000;

/// Opens channel `salt` with a deposit of `amount` and its first voucher (one slice).
async fn opened(rig: &Rig, q: &Quote, b: &Buyer, salt: u8, amount: u128) -> ChannelConfig {
    let c = b.config(q, salt);
    let a = q.send(&rig.http, &b.deposit(q, &c, amount, P, salt)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let receipt = a.receipt.as_ref().expect("PAYMENT-RESPONSE");
    assert_eq!(receipt["extra"]["chargedAmount"], P.to_string());
    assert!(receipt["transaction"].as_str().unwrap().starts_with("0x"));
    c
}

fn slices(a: &Answer) -> u64 {
    a.body["slices"].as_u64().unwrap_or_else(|| panic!("{a:?}"))
}

fn accepted(a: &Answer, charged_total: u128) {
    assert_eq!(a.status, 200, "{a:?}");
    let extra = &a.receipt.as_ref().expect("PAYMENT-RESPONSE")["extra"];
    assert_eq!(extra["chargedAmount"], P.to_string(), "{a:?}");
    assert_eq!(
        extra["channelState"]["chargedCumulativeAmount"],
        charged_total.to_string(),
        "{a:?}"
    );
}

fn refused(a: &Answer, reason: &str) {
    assert_eq!(a.status, 402, "{a:?}");
    assert_eq!(a.reason(), reason, "{a:?}");
    assert!(a.receipt.is_none(), "{a:?}");
}

/// The corrective 402: the server's charged total, and its last voucher, signed by
/// the payer (the client checks that before adopting the total).
fn corrective(a: &Answer, b: &Buyer, c: &ChannelConfig, charged: u128) {
    assert_eq!(a.status, 402, "{a:?}");
    assert_eq!(
        a.body["error"],
        reasons::CUMULATIVE_AMOUNT_MISMATCH,
        "{a:?}"
    );
    assert_eq!(
        a.required.as_ref().expect("PAYMENT-REQUIRED")["error"],
        reasons::CUMULATIVE_AMOUNT_MISMATCH
    );
    let extra = a.corrective();
    let state = &extra["channelState"];
    assert_eq!(state["channelId"], b.id(c).to_string(), "{a:?}");
    assert_eq!(
        state["chargedCumulativeAmount"],
        charged.to_string(),
        "{a:?}"
    );
    let vs: VoucherState = serde_json::from_value(extra["voucherState"].clone()).unwrap();
    assert_eq!(vs.signed_max_claimable, charged);
    let held = SignedVoucher {
        channel_id: b.id(c),
        max_claimable_amount: vs.signed_max_claimable,
        signature: vs.signature,
    };
    assert_eq!(voucher_signer(&b.domain, &held).unwrap(), b.addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_below_or_above_the_charged_total_gets_the_corrective_402() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
    // Below the charged total (an old voucher among them), then above charged + price.
    for max in [P / 2, P, 2 * P - 1, 3 * P + 1, 5 * P] {
        let a = q.send(&rig.http, &b.pay(&c, max)).await;
        corrective(&a, &b, &c, 2 * P);
    }
    assert_eq!(rig.charged_metric().await, 2 * P, "nothing charged by them");
    // The client adopts the server's total: charged + price is accepted.
    let a = q.send(&rig.http, &b.pay(&c, 3 * P)).await;
    accepted(&a, 3 * P);
    assert_eq!(slices(&a), 3);
    assert_eq!(rig.charged_metric().await, 3 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_above_the_channels_balance_is_refused() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    // A deposit of one and a half slices: the second slice is not covered.
    let c = opened(&rig, &q, &b, 1, P + P / 2).await;
    let a = q.send(&rig.http, &b.pay(&c, 2 * P)).await;
    refused(&a, reasons::CUMULATIVE_EXCEEDS_BALANCE);
    assert_eq!(rig.charged_metric().await, P);
    assert_eq!(rig.channel(&c).await, (P + P / 2, 0));
    // A deposit whose first voucher exceeds it is refused before anything moves
    // (another session: one that is running is paid from one channel).
    let payer_before = rig.usdc(b.addr()).await;
    let q = rig.quote().await;
    let short = b.config(&q, 2);
    let a = q.send(&rig.http, &b.deposit(&q, &short, P / 2, P, 2)).await;
    refused(&a, reasons::CUMULATIVE_EXCEEDS_BALANCE);
    assert_eq!(rig.channel(&short).await, (0, 0));
    assert_eq!(rig.usdc(b.addr()).await, payer_before);
    assert_eq!(rig.charged_metric().await, P);
    // Nothing was recorded: a sufficient deposit with the same first voucher pays.
    let a = q
        .send(&rig.http, &b.deposit(&q, &short, MIN_DEPOSIT, P, 3))
        .await;
    accepted(&a, P);
    assert_eq!(rig.channel(&short).await, (MIN_DEPOSIT, 0));
    assert_eq!(
        rig.usdc(b.addr()).await,
        payer_before - EvmU256::from(MIN_DEPOSIT)
    );
    assert_eq!(rig.charged_metric().await, 2 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_for_another_channel_is_refused() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    let other = b.config(&q, 2);
    // This channel's config with the id (and signature) of another config.
    let crossed = BatchPayload::Voucher {
        channel_config: c.clone(),
        voucher: b.voucher(&other, 2 * P),
    };
    refused(
        &q.send(&rig.http, &crossed).await,
        reasons::CHANNEL_ID_MISMATCH,
    );
    // While its paid time runs, a session is paid from one channel.
    let a = q.send(&rig.http, &b.pay(&other, P)).await;
    assert_eq!(a.status, 402, "{a:?}");
    assert_eq!(a.body["error"], "payment_invalid", "{a:?}");
    // The other channel, consistent but never funded, on a session of its own:
    // the chain says so.
    let q2 = rig.quote().await;
    refused(
        &q2.send(&rig.http, &b.pay(&other, P)).await,
        reasons::CHANNEL_NOT_FOUND,
    );
    assert_eq!(rig.charged_metric().await, P);
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_with_a_bad_signature_is_refused() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    let stranger = LocalSigner::random().unwrap();
    let forged = BatchPayload::Voucher {
        channel_config: c.clone(),
        voucher: sign_voucher(&stranger, &b.domain, b.id(&c), 2 * P).unwrap(),
    };
    refused(
        &q.send(&rig.http, &forged).await,
        reasons::VOUCHER_SIGNATURE,
    );
    let garbled = BatchPayload::Voucher {
        channel_config: c.clone(),
        voucher: SignedVoucher {
            channel_id: b.id(&c),
            max_claimable_amount: 2 * P,
            signature: Bytes(vec![7; 64]),
        },
    };
    refused(
        &q.send(&rig.http, &garbled).await,
        reasons::VOUCHER_SIGNATURE,
    );
    assert_eq!(rig.charged_metric().await, P);
    // The payer's own voucher for the same total is not blocked by the forgeries.
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_voucher_is_answered_the_same_and_credited_and_charged_once() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    let first = q.send(&rig.http, &b.pay(&c, 2 * P)).await;
    accepted(&first, 2 * P);
    assert_eq!(slices(&first), 2);
    for _ in 0..3 {
        let again = q.send(&rig.http, &b.pay(&c, 2 * P)).await;
        assert_eq!(again, first, "the recorded answer, not a new credit");
    }
    assert_eq!(rig.charged_metric().await, 2 * P);
    // The deposit's payload replayed: its voucher is no longer the last one; the client
    // is told the total and the deposit does not run twice.
    let a = q
        .send(&rig.http, &b.deposit(&q, &c, MIN_DEPOSIT, P, 1))
        .await;
    corrective(&a, &b, &c, 2 * P);
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, 0));
    // The same voucher in another session buys nothing there.
    let q2 = rig.quote().await;
    let elsewhere = q2.send(&rig.http, &b.pay(&c, 2 * P)).await;
    assert_eq!(elsewhere.status, 409, "{elsewhere:?}");
    assert_eq!(elsewhere.body["error"], "payment_used");
    assert!(elsewhere.receipt.is_none());
    assert_eq!(rig.charged_metric().await, 2 * P);
    // The next voucher still counts once, in the first session.
    let next = q.send(&rig.http, &b.pay(&c, 3 * P)).await;
    accepted(&next, 3 * P);
    assert_eq!(slices(&next), 3);
    assert_eq!(rig.charged_metric().await, 3 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_vouchers_refuse_the_early_one_and_charge_nothing_for_it() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    let (second, third) = (b.pay(&c, 2 * P), b.pay(&c, 3 * P));
    corrective(&q.send(&rig.http, &third).await, &b, &c, P);
    assert_eq!(rig.charged_metric().await, P);
    let a = q.send(&rig.http, &second).await;
    accepted(&a, 2 * P);
    assert_eq!(slices(&a), 2);
    // Sent again in order, the early one now pays.
    let a = q.send(&rig.http, &third).await;
    accepted(&a, 3 * P);
    assert_eq!(slices(&a), 3);
    assert_eq!(rig.charged_metric().await, 3 * P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_deposit_authorization_moves_money_once() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    let after_deposit = EvmU256::from(FUND) - EvmU256::from(MIN_DEPOSIT);
    assert_eq!(rig.usdc(b.addr()).await, after_deposit);
    // The same authorization (same salt, amount, window) with the next voucher.
    let reused = b.deposit(&q, &c, MIN_DEPOSIT, 2 * P, 1);
    let a = q.send(&rig.http, &reused).await;
    refused(&a, reasons::DEPOSIT_SIMULATION_FAILED);
    // The same authorization into another channel: its nonce is that channel's, so
    // the signature is not the payer's for it.
    let other = b.config(&q, 2);
    let BatchPayload::Deposit { deposit, .. } = b.deposit(&q, &c, MIN_DEPOSIT, P, 1) else {
        unreachable!()
    };
    let moved = BatchPayload::Deposit {
        channel_config: other.clone(),
        voucher: b.voucher(&other, P),
        deposit,
    };
    refused(
        &q.send(&rig.http, &moved).await,
        reasons::RECEIVE_AUTHORIZATION_SIGNATURE,
    );
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, 0), "deposited once");
    assert_eq!(rig.channel(&other).await, (0, 0));
    assert_eq!(rig.usdc(b.addr()).await, after_deposit);
    assert_eq!(
        rig.anvil
            .settlements_of(rig.token, crate::channel_rig::evm(b.addr()))
            .await
            .unwrap()
            .len(),
        1,
        "one use of the authorization on chain"
    );
    assert_eq!(rig.charged_metric().await, P);
    // The refusals recorded nothing: the payer's own next voucher pays.
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_mid_stream_is_claimed_before_it_can_finalize() {
    let rig = Rig::start(NEVER).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let payee_before = rig.payee_usdc().await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
    accepted(&q.send(&rig.http, &b.pay(&c, 3 * P)).await, 3 * P);
    // Below the threshold the manager leaves the channel alone.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, 0));

    // The payer starts the timed withdrawal of everything, and keeps streaming.
    b.fund_gas(&rig).await;
    let contract = b.contract(&rig);
    let r = contract
        .initiateWithdraw(sol_config(&c), MIN_DEPOSIT)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());
    accepted(&q.send(&rig.http, &b.pay(&c, 4 * P)).await, 4 * P);
    let charged = 4 * P;
    rig.until("the manager claimed all that was charged", || async {
        rig.channel(&c).await == (MIN_DEPOSIT, charged)
    })
    .await;
    // Too early to finalize; then past withdrawDelay the payer gets the unclaimed rest.
    assert!(
        contract
            .finalizeWithdraw(sol_config(&c))
            .call()
            .await
            .is_err()
    );
    rig.advance_chain_time(WITHDRAW_DELAY + 1).await;
    let r = contract
        .finalizeWithdraw(sol_config(&c))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());
    assert_eq!(
        rig.usdc(b.addr()).await,
        EvmU256::from(FUND) - EvmU256::from(charged),
        "the payer got exactly balance - charged"
    );
    rig.until("the claimed total reached the payee", || async {
        rig.payee_usdc().await == payee_before + EvmU256::from(charged)
    })
    .await;
    assert_eq!(rig.channel(&c).await, (charged, charged));
    // The drained channel buys nothing more: the server reads it again while a
    // withdrawal was pending rather than trusting the balance it mirrored.
    let after = q.send(&rig.http, &b.pay(&c, 5 * P)).await;
    refused(&after, reasons::CUMULATIVE_EXCEEDS_BALANCE);
    assert_eq!(rig.charged_metric().await, charged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_racing_a_voucher_charges_nothing_beyond_what_was_accepted() {
    // The manager claims every slice, so it runs beside the refunds too.
    let rig = Rig::start(1).await;
    let b = rig.buyer(FUND).await;
    let payee_before = rig.payee_usdc().await;
    let mut paid = 0u128;
    let mut channels = Vec::new();
    for salt in 1..=3u8 {
        // A session per channel (a running session is paid from one channel).
        let q = rig.quote().await;
        let c = opened(&rig, &q, &b, salt, MIN_DEPOSIT).await;
        accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
        let (refund, voucher) = (b.refund(&c, 2 * P), b.pay(&c, 3 * P));
        let (r, v) = tokio::join!(q.send(&rig.http, &refund), q.send(&rig.http, &voucher));
        let charged = if v.status == 200 {
            // The voucher won: the refund heard the new total (or waited), and the
            // client refunds at that total.
            accepted(&v, 3 * P);
            assert_ne!(r.status, 200, "{r:?}");
            if r.body["error"] == reasons::CUMULATIVE_AMOUNT_MISMATCH {
                corrective(&r, &b, &c, 3 * P);
            } else {
                refused(&r, reasons::CHANNEL_BUSY);
            }
            let again = q.send(&rig.http, &b.refund(&c, 3 * P)).await;
            assert_eq!(again.status, 200, "{again:?}");
            3 * P
        } else {
            // The refund won: the voucher found the channel busy or emptied.
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                [reasons::CHANNEL_BUSY, reasons::CUMULATIVE_EXCEEDS_BALANCE]
                    .contains(&v.reason().as_str()),
                "{v:?}"
            );
            2 * P
        };
        assert_eq!(rig.channel(&c).await, (charged, charged), "salt {salt}");
        paid += charged;
        channels.push(c);
    }
    assert_eq!(
        rig.charged_metric().await,
        paid,
        "charged what was accepted"
    );
    let payer_loss = EvmU256::from(FUND) - rig.usdc(b.addr()).await;
    assert_eq!(payer_loss, EvmU256::from(paid));
    rig.until("the payee gained what the payer lost", || async {
        rig.payee_usdc().await - payee_before == payer_loss
    })
    .await;
    // Nothing more reaches the payee later: no channel is claimed twice.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(rig.payee_usdc().await - payee_before, payer_loss);
    for c in &channels {
        let (balance, claimed) = rig.channel(c).await;
        assert_eq!(balance, claimed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_gets_the_unclaimed_rest_by_its_withdrawal() {
    // The manager claims once two slices are unclaimed.
    let rig = Rig::start(2).await;
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let payee_before = rig.payee_usdc().await;
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    accepted(&q.send(&rig.http, &b.pay(&c, 2 * P)).await, 2 * P);
    let claimed = 2 * P;
    // No refund: the client is gone. The server claims and sweeps what it charged.
    rig.until("the charged total reached the payee", || async {
        rig.payee_usdc().await == payee_before + EvmU256::from(claimed)
    })
    .await;
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, claimed));
    // The payer's own timed withdrawal returns exactly balance - claimed.
    b.fund_gas(&rig).await;
    let contract = b.contract(&rig);
    let sent = contract
        .initiateWithdraw(sol_config(&c), MIN_DEPOSIT)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(sent.status());
    rig.advance_chain_time(WITHDRAW_DELAY + 1).await;
    let done = contract
        .finalizeWithdraw(sol_config(&c))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(done.status());
    assert_eq!(
        rig.usdc(b.addr()).await,
        EvmU256::from(FUND) - EvmU256::from(claimed)
    );
    assert_eq!(rig.channel(&c).await, (claimed, claimed));
    assert_eq!(
        rig.payee_usdc().await,
        payee_before + EvmU256::from(claimed)
    );
    assert_eq!(rig.charged_metric().await, claimed);
}
