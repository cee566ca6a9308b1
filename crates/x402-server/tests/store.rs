//! The Redis store's scripts against a real `redis-server` (Debian's
//! package; `cargo xtask tools` installs it; never skipped): claims are all
//! or nothing, versions are compared, and outcomes are never lost when two
//! instances end up settling one payload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use atomicstream_testkit::Redis;
use x402_server::store::{Commit, RedisStore};
use x402_session::{
    Credit, PaymentIn, PaymentKey, PaymentRecord, PaymentStatus, Refusal, SessionState,
};
use x402_types::{ErrorCode, RenewResponse};

async fn store(r: &Redis) -> RedisStore {
    RedisStore::connect(&r.url(), "t:", Duration::from_secs(1))
        .await
        .unwrap()
}

fn record(status: PaymentStatus) -> PaymentRecord {
    PaymentRecord {
        session: "q".into(),
        payer: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse()
            .unwrap(),
        nonce: x402_types::FixedBytes([7; 32]),
        amount: 4000u64.into(),
        valid_before: 4_000_000_000,
        payment_id: Some("pid-0123456789abcdef".into()),
        status,
        attempts: 0,
        expires: 4_000_000_060,
    }
}

/// What the server reads from a payload, for the record's authorization.
fn payment_in(key: &PaymentKey, r: &PaymentRecord) -> PaymentIn {
    PaymentIn {
        key: key.clone(),
        payer: r.payer,
        nonce: r.nonce,
        amount: r.amount,
        valid_before: r.valid_before,
        payment_id: None,
    }
}

fn in_flight(key: &PaymentKey) -> SessionState {
    let mut s = SessionState::default();
    s.in_flight.insert(key.clone(), 4_000_000_060);
    s
}

fn credited(slices: u64) -> PaymentStatus {
    PaymentStatus::Credited(Credit {
        response: RenewResponse {
            session_id: "q".into(),
            expires_at: 10,
            slice_seconds: 4,
            slices,
        },
        settlement: None,
    })
}

#[tokio::test]
async fn claims_are_all_or_nothing_and_versions_are_compared() {
    let r = Redis::start();
    let (a, b) = (store(&r).await, store(&r).await);
    let key = PaymentKey::from_stored("n:s".into());
    let rec = record(PaymentStatus::Settling);
    let until = 4_000_001_000;
    assert_eq!(
        a.begin("q", 0, &in_flight(&key), until, &key, &rec, "{}")
            .await
            .unwrap(),
        Commit::Done
    );
    // B decided on version 0 too: conflict, nothing written.
    let other = PaymentKey::from_stored("m:s".into());
    let mut rec2 = rec.clone();
    rec2.nonce = x402_types::FixedBytes([8; 32]);
    rec2.payment_id = None;
    assert_eq!(
        b.begin("q", 0, &in_flight(&other), until, &other, &rec2, "{}")
            .await
            .unwrap(),
        Commit::Conflict
    );
    // The same authorization under another payload: conflict even on the right version.
    let loaded = b.load("q", None).await.unwrap();
    assert_eq!(loaded.session.version, 1);
    let mut dup = rec.clone();
    dup.payment_id = None;
    assert_eq!(
        b.begin("q", 1, &in_flight(&other), until, &other, &dup, "{}")
            .await
            .unwrap(),
        Commit::Conflict
    );
    // What B loads for that payload: A's record holds the authorization.
    let l = b.load("q", Some(&payment_in(&other, &dup))).await.unwrap();
    assert_eq!(l.records.len(), 1);
    assert_eq!(l.records[0].key, key);
    assert_eq!(l.records[0].owner, a.instance());
    assert!(!l.records[0].owner_alive, "A never beat its heart");
}

#[tokio::test]
async fn a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets() {
    let r = Redis::start();
    let (a, b) = (store(&r).await, store(&r).await);
    let key = PaymentKey::from_stored("n:s".into());
    let rec = record(PaymentStatus::Settling);
    let until = 4_000_001_000;
    a.begin("q", 0, &in_flight(&key), until, &key, &rec, "{}")
        .await
        .unwrap();
    // A looks dead; B takes the settlement over.
    assert!(b.adopt(&key, a.instance()).await.unwrap());
    // A may not forget a payload B is settling.
    assert_eq!(
        a.finish("q", 1, None, until, &key, &rec, None)
            .await
            .unwrap(),
        Commit::Lost
    );
    // B's retry cannot establish the outcome: unresolved.
    let unresolved = record(PaymentStatus::Refused(Refusal::new(
        ErrorCode::SettlementUnknown,
        "unknown",
    )));
    let released = SessionState::default();
    assert_eq!(
        b.finish(
            "q",
            1,
            Some(&released),
            until,
            &key,
            &rec,
            Some(&unresolved)
        )
        .await
        .unwrap(),
        Commit::Done
    );
    // Then A's answer arrives: settled. The fact replaces the ignorance.
    let paid = SessionState {
        slices: 1,
        paid_until_ms: Some(10_000),
        ..SessionState::default()
    };
    let done = record(credited(1));
    assert_eq!(
        a.finish("q", 2, Some(&paid), until, &key, &rec, Some(&done))
            .await
            .unwrap(),
        Commit::Done
    );
    let l = b.load("q", Some(&payment_in(&key, &rec))).await.unwrap();
    assert_eq!(l.session.state.slices, 1);
    assert_eq!(l.records[0].record.status, credited(1));
    // A final answer is final: a late refusal changes nothing.
    let refused = record(PaymentStatus::Refused(Refusal::new(
        ErrorCode::PaymentInvalid,
        "no",
    )));
    assert_eq!(
        b.finish("q", 3, None, until, &key, &rec, Some(&refused))
            .await
            .unwrap(),
        Commit::Lost
    );
}

#[tokio::test]
async fn two_publishers_never_share_a_sequence_number() {
    let r = Redis::start();
    let (a, b) = (store(&r).await, store(&r).await);
    let mut tasks = Vec::new();
    for s in [a, b] {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(
                    s.publish("e", 1000, &serde_json::json!({"i": i}))
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<u64>>());
}
