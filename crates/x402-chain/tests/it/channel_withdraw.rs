//! The payer's escape hatch on anvil (`x402_chain::withdraw`): a channel opened through
//! our server with a deposit and vouchers, the seller's manager claiming what it charged,
//! then the payer's own timed withdrawal from its key: initiated, refused while early with
//! the time it becomes possible, and after the delay paying exactly `balance - claimed`.
//! Also the refusals that must reach a person as words: no ether for gas, another chain,
//! a key that is not the payer's, nothing pending, one already pending, no answer.

use x402_chain::{
    ChainError, EvmU256, PendingWithdrawal, channel_status, finalize_withdraw, initiate_withdraw,
};
use x402_payer::{DigestSigner, LocalSigner};
use x402_types::Network;
use x402_types::batch::ChannelConfig;

use crate::channel_rig::{Buyer, MIN_DEPOSIT, PRICE, Quote, Rig, WITHDRAW_DELAY};

const P: u128 = PRICE as u128;
const FUND: u64 = 1_000_000;
const NET: Network = Network::BASE_SEPOLIA;

/// Opens channel `salt` with a deposit of `amount` and its first voucher (one slice).
async fn opened(rig: &Rig, q: &Quote, b: &Buyer, salt: u8, amount: u128) -> ChannelConfig {
    let c = b.config(q, salt);
    let a = q.send(&rig.http, &b.deposit(q, &c, amount, P, salt)).await;
    assert_eq!(a.status, 200, "{a:?}");
    c
}

/// Pays the next voucher, up to `max`.
async fn pay(rig: &Rig, q: &Quote, b: &Buyer, c: &ChannelConfig, max: u128) {
    let a = q.send(&rig.http, &b.pay(c, max)).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payer_withdraws_exactly_the_unclaimed_rest_after_the_delay() {
    // The seller's manager claims once two slices are unclaimed, and at once when a
    // withdrawal is pending.
    let rig = Rig::start(2).await;
    let url = rig.anvil.url();
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    let key = b.key.to_hex_secret();
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;
    pay(&rig, &q, &b, &c, 2 * P).await;
    rig.until("the manager claimed two slices", || async {
        rig.channel(&c).await == (MIN_DEPOSIT, 2 * P)
    })
    .await;
    // A third slice is charged and not yet claimed.
    pay(&rig, &q, &b, &c, 3 * P).await;

    let s = channel_status(&url, &NET, &c).await.unwrap();
    assert_eq!(s.chain_id, 84532);
    assert_eq!(s.channel_id, b.id(&c));
    assert_eq!((s.balance, s.total_claimed), (MIN_DEPOSIT, 2 * P));
    assert_eq!(s.unclaimed(), MIN_DEPOSIT - 2 * P);
    assert_eq!(s.pending, None);
    assert!(!s.due());

    // Without ether the payer cannot pay the gas: said so, nothing sent.
    let e = initiate_withdraw(&url, &NET, &key, &c, s.unclaimed())
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::NoGas { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&b.addr().to_string()) && text.contains("ETH") && text.contains("gas"),
        "{text}"
    );
    // Nothing is pending yet: finalizing is refused before any gas is needed.
    let e = finalize_withdraw(&url, &NET, &key, &c).await.unwrap_err();
    assert!(matches!(e, ChainError::NoPendingWithdrawal), "{e:?}");

    b.fund_gas(&rig).await;
    let tx = initiate_withdraw(&url, &NET, &key, &c, s.unclaimed())
        .await
        .unwrap();
    let s = channel_status(&url, &NET, &c).await.unwrap();
    let Some(PendingWithdrawal {
        amount,
        initiated_at,
        finalize_after,
    }) = s.pending
    else {
        panic!("no pending withdrawal after {tx}: {s:?}");
    };
    assert_eq!(amount, MIN_DEPOSIT - 2 * P);
    assert_eq!(finalize_after, initiated_at + WITHDRAW_DELAY);
    assert!(!s.due());
    assert!(s.wait_secs().unwrap() > WITHDRAW_DELAY - 60, "{s:?}");
    // A second initiation is refused in words.
    let e = initiate_withdraw(&url, &NET, &key, &c, 1)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::WithdrawAlreadyPending), "{e:?}");

    // Too early: refused, saying when it becomes possible; nothing moved.
    let payer_before = rig.usdc(b.addr()).await;
    let e = finalize_withdraw(&url, &NET, &key, &c).await.unwrap_err();
    match &e {
        ChainError::WithdrawNotReady {
            finalize_after: at,
            now,
        } => {
            assert_eq!(*at, finalize_after);
            assert!(now < at);
        }
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("too early") && text.contains(&finalize_after.to_string()),
        "{text}"
    );
    assert!(text.contains(" min"), "says how long is left: {text}");
    assert_eq!(rig.usdc(b.addr()).await, payer_before);

    // The pending withdrawal makes the seller claim what it charged, before the delay ends.
    let charged = 3 * P;
    rig.until("the manager claimed the third slice", || async {
        rig.channel(&c).await == (MIN_DEPOSIT, charged)
    })
    .await;
    rig.advance_chain_time(WITHDRAW_DELAY + 1).await;
    let s = channel_status(&url, &NET, &c).await.unwrap();
    assert!(s.due(), "{s:?}");
    assert_eq!(s.wait_secs(), Some(0));

    let (tx, paid) = finalize_withdraw(&url, &NET, &key, &c).await.unwrap();
    assert_eq!(paid, MIN_DEPOSIT - charged, "exactly balance - claimed");
    assert_eq!(
        rig.usdc(b.addr()).await,
        EvmU256::from(FUND) - EvmU256::from(charged),
        "the payer lost exactly what was charged ({tx})"
    );
    let s = channel_status(&url, &NET, &c).await.unwrap();
    assert_eq!((s.balance, s.total_claimed), (charged, charged));
    assert_eq!((s.pending, s.unclaimed()), (None, 0));
    // Finalized once: a second finalize has nothing pending.
    let e = finalize_withdraw(&url, &NET, &key, &c).await.unwrap_err();
    assert!(matches!(e, ChainError::NoPendingWithdrawal), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chains_keys_and_endpoints_are_refused_before_anything_is_sent() {
    let rig = Rig::start(1_000).await;
    let url = rig.anvil.url();
    let q = rig.quote().await;
    let b = rig.buyer(FUND).await;
    b.fund_gas(&rig).await;
    let key = b.key.to_hex_secret();
    let c = opened(&rig, &q, &b, 1, MIN_DEPOSIT).await;

    // The node serves base-sepolia's chain id; the channel is said to be on Base.
    let e = channel_status(&url, &Network::BASE, &c).await.unwrap_err();
    assert!(
        matches!(
            e,
            ChainError::WrongChain {
                expected: 8453,
                found: 84532
            }
        ),
        "{e:?}"
    );
    let e = initiate_withdraw(&url, &Network::BASE, &key, &c, 1)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::WrongChain { .. }), "{e:?}");

    // Another key is not the channel's payer.
    let stranger = LocalSigner::random().unwrap();
    let e = initiate_withdraw(&url, &NET, &stranger.to_hex_secret(), &c, 1)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::NotPayer { .. }), "{e:?}");
    assert!(e.to_string().contains(&stranger.address().to_string()));
    let e = initiate_withdraw(&url, &NET, "not a key", &c, 1)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::Config(_)), "{e:?}");
    assert!(!e.to_string().contains("not a key"), "{e}");

    // Nothing answers on a port that was just released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = channel_status(&format!("http://127.0.0.1:{closed}/v2/SECRET"), &NET, &c)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::Unreachable(_)), "{e:?}");
    assert!(
        !e.to_string().contains("SECRET"),
        "the URL is not echoed: {e}"
    );

    // None of it moved anything.
    assert_eq!(rig.channel(&c).await, (MIN_DEPOSIT, 0));
    let s = channel_status(&url, &NET, &c).await.unwrap();
    assert_eq!(s.pending, None);
}
