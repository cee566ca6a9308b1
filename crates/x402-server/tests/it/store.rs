//! One suite, two stores: the Redis store's scripts against a real
//! `redis-server` (Debian's package; `cargo xtask tools` installs it; never
//! skipped) and the in-memory store give the same answers: claims are all or
//! nothing, versions are compared, refused payloads free their claims,
//! orphans are listed and adopted once, and outcomes are never lost when two
//! instances end up settling one payload.

use std::time::Duration;

use atomicstream_testkit::{DEV_ADDRESS, Redis};
use x402_server::store::{Begin, Commit, Finish, MemoryStore, PaymentStore, RedisStore};
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
        scheme: x402_session::EXACT.into(),
        session: "q".into(),
        payer: DEV_ADDRESS.parse().unwrap(),
        nonce: x402_types::FixedBytes([7; 32]),
        amount: 4000u64.into(),
        valid_before: 4_000_000_000,
        payment_id: Some("pid-0123456789abcdef".into()),
        account: None,
        status,
        attempts: 0,
        expires: 4_000_000_060,
        slice_seconds: 4,
        stream: "s".into(),
    }
}

/// What the server reads from a payload, for the record's authorization.
fn payment_in(key: &PaymentKey, r: &PaymentRecord) -> PaymentIn {
    PaymentIn {
        scheme: r.scheme.clone(),
        key: key.clone(),
        payer: r.payer,
        nonce: r.nonce,
        amount: r.amount,
        valid_before: r.valid_before,
        payment_id: None,
        account: None,
        request: None,
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

const UNTIL: u64 = 4_000_001_000;

fn begin<'a>(
    version: u64,
    state: &'a SessionState,
    key: &'a PaymentKey,
    record: &'a PaymentRecord,
) -> Begin<'a> {
    Begin {
        session: "q",
        version,
        state,
        session_until: UNTIL,
        key,
        record,
        request: None,
    }
}

fn finish<'a>(
    version: u64,
    state: Option<&'a SessionState>,
    key: &'a PaymentKey,
    before: &'a PaymentRecord,
    record: Option<&'a PaymentRecord>,
) -> Finish<'a> {
    Finish {
        session: "q",
        version,
        state,
        session_until: UNTIL,
        key,
        before,
        record,
    }
}

/// Two instances on one store; `kill_a` makes A's settlements orphans.
struct Pair {
    a: Box<dyn PaymentStore>,
    b: Box<dyn PaymentStore>,
    kill_a: Box<dyn Fn()>,
    _redis: Option<Redis>,
}

async fn redis_pair() -> Pair {
    let r = Redis::start();
    let (a, b) = (store(&r).await, store(&r).await);
    // A never beats its heart: it counts as dead from the start. B lives.
    b.heartbeat(Duration::from_secs(60)).await.unwrap();
    Pair {
        a: Box::new(a),
        b: Box::new(b),
        kill_a: Box::new(|| {}),
        _redis: Some(r),
    }
}

fn memory_pair() -> Pair {
    let a = MemoryStore::new("a");
    let b = a.instance_handle("b");
    let killer = a.clone();
    Pair {
        a: Box::new(a),
        b: Box::new(b),
        kill_a: Box::new(move || killer.kill("a")),
        _redis: None,
    }
}

async fn claims_are_all_or_nothing_and_versions_are_compared(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    (p.kill_a)();
    let key = PaymentKey::from_stored("n:s".into());
    let rec = record(PaymentStatus::Settling);
    let st = in_flight(&key);
    assert_eq!(
        a.begin(begin(0, &st, &key, &rec)).await.unwrap(),
        Commit::Done
    );
    // B decided on version 0 too: conflict, nothing written.
    let other = PaymentKey::from_stored("m:s".into());
    let mut rec2 = rec.clone();
    rec2.nonce = x402_types::FixedBytes([8; 32]);
    rec2.payment_id = None;
    let st2 = in_flight(&other);
    assert_eq!(
        b.begin(begin(0, &st2, &other, &rec2)).await.unwrap(),
        Commit::Conflict
    );
    // The same authorization under another payload: conflict even on the right version.
    let loaded = b.load("q", None).await.unwrap();
    assert_eq!(loaded.session.version, 1);
    let mut dup = rec.clone();
    dup.payment_id = None;
    assert_eq!(
        b.begin(begin(1, &st2, &other, &dup)).await.unwrap(),
        Commit::Conflict
    );
    // What B loads for that payload: A's record holds the authorization.
    let l = b.load("q", Some(&payment_in(&other, &dup))).await.unwrap();
    assert_eq!(l.records.len(), 1);
    assert_eq!(l.records[0].key, key);
    assert_eq!(l.records[0].owner, a.instance());
    assert!(!l.records[0].owner_alive, "A is dead");
}

/// A channel shared by two instances: its record is compared and swapped by version, so
/// two vouchers decided on the same version cannot both be written (one charge is never
/// lost or doubled), and both instances list it for their channel manager.
async fn channel_records_are_compared_and_swapped(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    assert_eq!(a.load_channel("0xc1").await.unwrap(), (0, None));
    assert_eq!(
        a.commit_channel("0xc1", 0, r#"{"charged":1}"#)
            .await
            .unwrap(),
        Commit::Done
    );
    // B decided on "absent" too: conflict, A's record stays.
    assert_eq!(
        b.commit_channel("0xc1", 0, r#"{"charged":9}"#)
            .await
            .unwrap(),
        Commit::Conflict
    );
    let (v, j) = b.load_channel("0xc1").await.unwrap();
    assert_eq!((v, j.as_deref()), (1, Some(r#"{"charged":1}"#)));
    // Both decide on version 1: the first write wins, the second must load again.
    assert_eq!(
        b.commit_channel("0xc1", 1, r#"{"charged":2}"#)
            .await
            .unwrap(),
        Commit::Done
    );
    assert_eq!(
        a.commit_channel("0xc1", 1, r#"{"charged":3}"#)
            .await
            .unwrap(),
        Commit::Conflict
    );
    assert_eq!(
        a.load_channel("0xc1").await.unwrap(),
        (2, Some(r#"{"charged":2}"#.to_string()))
    );
    a.commit_channel("0xc2", 0, "{}").await.unwrap();
    for s in [a, b] {
        let mut ids = s.channels().await.unwrap();
        ids.sort();
        assert_eq!(ids, ["0xc1", "0xc2"]);
    }
}

/// A metered session's stop is committed by version: two instances cutting it on the
/// same version write once (its unused charge goes back to the channel once), and a
/// session the store does not hold is never created by a cut.
async fn session_cuts_are_compared_and_swapped(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    let key = PaymentKey::from_stored("n:s".into());
    let rec = record(PaymentStatus::Settling);
    let st = in_flight(&key);
    a.begin(begin(0, &st, &key, &rec)).await.unwrap();
    let mut cut = SessionState {
        paid_until_ms: Some(4_000_000_000_000),
        slices: 1,
        account: Some("0xc1".into()),
        returned_ms: 6_500,
        ..SessionState::default()
    };
    // A socket opened meanwhile (the connection count moved): the cut is refused.
    let n = b.connect_session("q").await.unwrap().unwrap();
    assert_eq!(
        a.commit_session("q", 1, n - 1, &cut, UNTIL).await.unwrap(),
        Commit::Conflict
    );
    assert_eq!(
        a.commit_session("q", 1, n, &cut, UNTIL).await.unwrap(),
        Commit::Done
    );
    cut.returned_ms = 7_000;
    assert_eq!(
        b.commit_session("q", 1, n, &cut, UNTIL).await.unwrap(),
        Commit::Conflict
    );
    let loaded = b.load_session("q").await.unwrap();
    assert_eq!(loaded.version, 2);
    assert_eq!(
        (loaded.state.returned_ms, loaded.state.account.as_deref()),
        (6_500, Some("0xc1"))
    );
    assert_eq!(
        b.commit_session("gone", 0, 0, &cut, UNTIL).await.unwrap(),
        Commit::Conflict
    );
    assert!(!b.load_session("gone").await.unwrap().exists);
}

#[tokio::test]
async fn session_cuts_are_compared_and_swapped_redis() {
    session_cuts_are_compared_and_swapped(redis_pair().await).await;
}

#[tokio::test]
async fn session_cuts_are_compared_and_swapped_memory() {
    session_cuts_are_compared_and_swapped(memory_pair()).await;
}

#[tokio::test]
async fn channel_records_are_compared_and_swapped_redis() {
    channel_records_are_compared_and_swapped(redis_pair().await).await;
}

#[tokio::test]
async fn channel_records_are_compared_and_swapped_memory() {
    channel_records_are_compared_and_swapped(memory_pair()).await;
}

#[tokio::test]
async fn claims_are_all_or_nothing_and_versions_are_compared_redis() {
    claims_are_all_or_nothing_and_versions_are_compared(redis_pair().await).await;
}

#[tokio::test]
async fn claims_are_all_or_nothing_and_versions_are_compared_memory() {
    claims_are_all_or_nothing_and_versions_are_compared(memory_pair()).await;
}

async fn a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    let key = PaymentKey::from_stored("n:s".into());
    let rec = record(PaymentStatus::Settling);
    let st = in_flight(&key);
    a.begin(begin(0, &st, &key, &rec)).await.unwrap();
    // A looks dead; B lists the orphan and takes the settlement over, once.
    (p.kill_a)();
    let orphans = b.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].key, key);
    assert!(b.adopt(&key, a.instance()).await.unwrap());
    assert!(!b.adopt(&key, a.instance()).await.unwrap(), "adopted twice");
    // Now B's own: listed for B (to restart if it has no task), as B's.
    let own = b.orphans().await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].owner, b.instance());
    // A may not forget a payload B is settling, nor refuse it (B's retry
    // may yet settle: only a settlement is still A's to write).
    assert_eq!(
        a.finish(finish(1, None, &key, &rec, None)).await.unwrap(),
        Commit::Lost
    );
    let refused_by_a = record(PaymentStatus::Refused(Refusal::new(
        ErrorCode::PaymentUsed,
        "nonce used",
    )));
    assert_eq!(
        a.finish(finish(1, None, &key, &rec, Some(&refused_by_a)))
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
        b.finish(finish(1, Some(&released), &key, &rec, Some(&unresolved)))
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
        a.finish(finish(2, Some(&paid), &key, &rec, Some(&done)))
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
        b.finish(finish(3, None, &key, &rec, Some(&refused)))
            .await
            .unwrap(),
        Commit::Lost
    );
}

#[tokio::test]
async fn a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets_redis() {
    a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets(redis_pair().await).await;
}

#[tokio::test]
async fn a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets_memory() {
    a_settlement_beats_an_unresolved_answer_and_only_the_owner_forgets(memory_pair()).await;
}

/// A junk copy of a genuine authorization, refused by verification, keeps
/// its answer but frees the authorization for the genuine payload.
async fn a_refused_payload_frees_its_claims(p: Pair) {
    let a = &p.a;
    let junk = PaymentKey::from_stored("n:junk".into());
    let rec = record(PaymentStatus::Settling);
    let st = in_flight(&junk);
    assert_eq!(
        a.begin(begin(0, &st, &junk, &rec)).await.unwrap(),
        Commit::Done
    );
    let refused = record(PaymentStatus::Refused(Refusal::new(
        ErrorCode::PaymentInvalid,
        "invalid_exact_evm_payload_signature",
    )));
    let empty = SessionState::default();
    assert_eq!(
        a.finish(finish(1, Some(&empty), &junk, &rec, Some(&refused)))
            .await
            .unwrap(),
        Commit::Done
    );
    // The same bytes again: the recorded refusal.
    let l = a.load("q", Some(&payment_in(&junk, &rec))).await.unwrap();
    assert_eq!(l.records.len(), 1);
    assert_eq!(l.records[0].record.status, refused.status);
    // The genuine payload: nothing holds its authorization or identifier.
    let genuine = PaymentKey::from_stored("n:genuine".into());
    let mut gp = payment_in(&genuine, &rec);
    gp.payment_id = rec.payment_id.clone();
    let l = a.load("q", Some(&gp)).await.unwrap();
    assert!(l.records.is_empty() && !l.orphan_claim, "{l:?}");
    let st = in_flight(&genuine);
    assert_eq!(
        a.begin(begin(2, &st, &genuine, &rec)).await.unwrap(),
        Commit::Done
    );
}

#[tokio::test]
async fn a_refused_payload_frees_its_claims_redis() {
    a_refused_payload_frees_its_claims(redis_pair().await).await;
}

#[tokio::test]
async fn a_refused_payload_frees_its_claims_memory() {
    a_refused_payload_frees_its_claims(memory_pair()).await;
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
