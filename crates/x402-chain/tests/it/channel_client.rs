//! Our own client pays a stream by channel on anvil: one gasless deposit on the
//! upgrade, then every renewal as a voucher in-band on the socket (no renew request),
//! then a cooperative refund. The payer loses exactly what was charged, the payee
//! gains the same, and the budget bounded what was signed.

use std::sync::Arc;
use std::time::Duration;

use atomicstream::{Amount, Client, ClientEvent, EndReason, EvmChannelPayer, SpendPolicy};
use futures::StreamExt;
use x402_chain::EvmU256;
use x402_payer::LocalSigner;

use crate::channel_rig::{PAYEE, PRICE, Rig};

/// A funded buyer of stream `s` paying by channel, and the balances before it buys.
struct Buying {
    me: x402_types::Address,
    before: EvmU256,
    payee_before: EvmU256,
    payer: Arc<EvmChannelPayer>,
    client: Client,
}

/// Reads the session to its end (30 s at most between events): why it ended.
async fn ended(session: &mut atomicstream::StreamSession) -> EndReason {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), session.next())
            .await
            .unwrap()
        {
            Some(ClientEvent::Ended(r)) => return r,
            Some(_) => {}
            None => return EndReason::Stopped,
        }
    }
}

async fn buying(rig: &Rig, slices: u64) -> Buying {
    let policy =
        SpendPolicy::new(Amount::from(PRICE)).with_lifetime_budget(Amount::from(10 * PRICE));
    buying_with(rig, policy, 12, Some(slices)).await
}

/// A buyer with its own policy, depositing `deposit_slices` slices at first.
async fn buying_with(
    rig: &Rig,
    policy: SpendPolicy,
    deposit_slices: u64,
    slices: Option<u64>,
) -> Buying {
    let wallet = LocalSigner::random().unwrap();
    let me: x402_types::Address = wallet.to_string().parse().unwrap();
    rig.anvil
        .mint(rig.token, wallet.to_string().parse().unwrap(), 1_000_000)
        .await
        .unwrap();
    let before = rig.usdc(me).await;
    let payee_before = rig.payee_usdc().await;
    let payer = Arc::new(
        EvmChannelPayer::new(wallet, Amount::from(100_000u64)).deposit_slices(deposit_slices),
    );
    let mut builder = Client::builder()
        .base_url(&rig.base)
        .scheme("batch-settlement")
        .payer(payer.clone())
        .policy(policy);
    if let Some(n) = slices {
        builder = builder.max_slices(n);
    }
    let client = builder.build().unwrap();
    Buying {
        me,
        before,
        payee_before,
        payer,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pays_in_band_and_gets_the_rest_back() {
    let rig = Rig::start(100).await;
    let Buying {
        me,
        before,
        payee_before,
        payer,
        client,
    } = buying(&rig, 3).await;
    let mut session = client.open("s").await.unwrap();
    assert_eq!(ended(&mut session).await, EndReason::SliceLimit);
    let p = session.progress();
    assert_eq!(p.slices, 3);
    // Both renewals went in-band; none needed the renew URL.
    assert_eq!(p.in_band_payments, 2, "{p:?}");
    assert_eq!(p.renew_retries, 0);
    let ch = payer.channels().pop().unwrap();
    assert_eq!(
        (ch.charged, ch.signed_max),
        (3 * u128::from(PRICE), 3 * u128::from(PRICE))
    );
    // One deposit of 12 slices left the wallet.
    assert_eq!(rig.usdc(me).await, before - EvmU256::from(12 * PRICE));

    let r = client.refund_channel("s").await.unwrap();
    assert_eq!(r.amount, Some(Amount::from(9 * PRICE)));
    let charged = EvmU256::from(3 * PRICE);
    assert_eq!(
        rig.usdc(me).await,
        before - charged,
        "the payer lost exactly the charge"
    );
    rig.until("the payee gained exactly the charge", || async {
        rig.payee_usdc().await == payee_before + charged
    })
    .await;
    assert_eq!(rig.payee_usdc().await, payee_before + charged, "{PAYEE}");
}

/// A buyer that leaves without refunding gets the unused deposit back anyway: the
/// seller's channel manager refunds a channel idle for `idle_refund_secs`, claiming what
/// was charged in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_channel_is_refunded_by_the_seller() {
    let rig = Rig::start_with(100, 2).await;
    let Buying {
        me,
        before,
        payee_before,
        client,
        ..
    } = buying(&rig, 2).await;
    let mut session = client.open("s").await.unwrap();
    assert_eq!(ended(&mut session).await, EndReason::SliceLimit);
    // No refund from the buyer: the seller's manager returns the rest.
    let charged = EvmU256::from(2 * PRICE);
    rig.until("the idle channel was refunded", || async {
        rig.usdc(me).await == before - charged
    })
    .await;
    rig.until("the charge reached the payee", || async {
        rig.payee_usdc().await == payee_before + charged
    })
    .await;
}

/// Per-second billing: a buyer that stops a few seconds into a 30-second slice pays
/// for the seconds it had. The server gives the rest of the slice's charge back to the
/// channel when the socket closes; the refund that follows returns it, after our
/// client adopts the lower total from the corrective 402.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_early_pays_for_the_seconds_it_had() {
    // A slice of "long": 30 s at 0.06 USDC a minute.
    const SLICE: u128 = 30_000;
    let rig = Rig::start(100).await;
    let policy =
        SpendPolicy::new(Amount::from_u128(SLICE)).with_lifetime_budget(Amount::from_u128(SLICE));
    let Buying {
        me,
        before,
        payee_before,
        payer,
        client,
    } = buying_with(&rig, policy, 2, None).await;
    let mut session = client.open("long").await.unwrap();
    let mut events = 0;
    let watching = tokio::time::Instant::now();
    // Watch about two seconds of events, then leave.
    while watching.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_secs(10), session.next())
            .await
            .unwrap()
        {
            Some(ClientEvent::Data(_)) => events += 1,
            Some(ClientEvent::Ended(r)) => panic!("ended early: {r}"),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }
    let left = watching.elapsed();
    session.stop();
    assert_eq!(ended(&mut session).await, EndReason::Stopped);
    assert!(events > 10, "events flowed ({events})");
    // One slice was signed; the payer still believes it was charged in full.
    let ch = payer.channels().pop().unwrap();
    assert_eq!((ch.charged, ch.signed_max), (SLICE, SLICE));

    let r = client.refund_channel("long").await.unwrap();
    // The vouchers' total stays one slice; what the seller claimed is the metered charge.
    assert_eq!(payer.channels().pop().unwrap().charged, SLICE);
    let charged = r
        .claimed
        .expect("the refund's receipt names the claimed total");
    // Billed per started second of the time the socket was open: at least the two
    // seconds watched, and far less than the slice.
    let per_second = SLICE / 30;
    assert!(
        charged >= 2 * per_second && charged <= 6 * per_second,
        "charged {charged} for about {left:?}"
    );
    assert_eq!(charged % per_second, 0, "whole seconds: {charged}");
    assert_eq!(r.amount, Some(Amount::from_u128(2 * SLICE - charged)));
    assert_eq!(
        rig.usdc(me).await,
        before - EvmU256::from(charged),
        "the payer lost exactly the metered charge"
    );
    rig.until("the payee gained exactly the metered charge", || async {
        rig.payee_usdc().await == payee_before + EvmU256::from(charged)
    })
    .await;
}

/// A server holding its own `receiverAuthorizer` key: the offer names it, the server
/// signs the manager's claims and the refund, and the facilitator (whose own authorizer
/// is another key) only executes them. Balances stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_its_own_authorizer_key_claims_and_refunds() {
    let own = LocalSigner::random().unwrap();
    let own_address: x402_types::Address = own.to_string().parse().unwrap();
    let rig = Rig::start_signing(1, own).await;
    let Buying {
        me,
        before,
        payee_before,
        payer,
        client,
    } = buying(&rig, 2).await;
    let mut session = client.open("s").await.unwrap();
    assert_eq!(ended(&mut session).await, EndReason::SliceLimit);
    let ch = payer.channels().pop().unwrap();
    assert_eq!(
        ch.config.receiver_authorizer, own_address,
        "the offer names our key"
    );
    let charged = EvmU256::from(2 * PRICE);
    // The manager claims past one slice, signing the batch itself.
    rig.until("the manager claimed and swept the charge", || async {
        rig.payee_usdc().await == payee_before + charged
    })
    .await;
    let r = client.refund_channel("s").await.unwrap();
    assert_eq!(r.amount, Some(Amount::from(10 * PRICE)));
    assert_eq!(rig.usdc(me).await, before - charged);
    assert_eq!(
        rig.channel(&ch.config).await,
        (2 * u128::from(PRICE), 2 * u128::from(PRICE))
    );
}
