//! Several endpoints sharing one store: what one commits, another imports,
//! and the rules hold across them (one credit per payload, renewals and
//! connections seen everywhere, a dead instance's settlement taken over).
//! The store here is two variables; the Redis store is tested with real
//! processes in `atomicstream-cli/tests/it/cluster.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use x402_session::*;
use x402_types::{CloseCode, ErrorCode, ServerMessage};

use crate::sim;

const U0: u64 = sim::UNIX0;

fn quote() -> Quote {
    sim::quote()
}

fn payment(seed: u64) -> PaymentIn {
    let payer = sim::payer(Arc::new(std::sync::atomic::AtomicU64::new(U0)), seed);
    PaymentIn::from_payload(&payer.sign(&sim::offer()).unwrap()).unwrap()
}

fn settled() -> SettleOutcome {
    SettleOutcome::Settled {
        header: Some("h".into()),
        payer: None,
        amount: None,
    }
}

fn head() -> StreamHead {
    StreamHead {
        next_seq: 0,
        oldest_seq: 0,
    }
}

/// An instance and the moment it lives at.
struct Inst {
    ep: ServerEndpoint,
    t0: Instant,
}

impl Inst {
    fn new(t0: Instant) -> Self {
        Inst {
            ep: ServerEndpoint::new(EndpointConfig::default(), t0, U0),
            t0,
        }
    }

    fn at(&self, s: u64) -> Instant {
        self.t0 + Duration::from_secs(s)
    }

    fn load(&mut self, at: u64, store: &Store) {
        let now = self.at(at);
        if let Some(s) = &store.session {
            self.ep.import_session(now, "q", Some(&quote()), s.clone());
        }
        for (k, r) in &store.records {
            self.ep.import_record(now, k, r.clone());
        }
    }

    fn transmits(&mut self) -> Vec<ServerTransmit> {
        std::iter::from_fn(|| self.ep.poll_transmit()).collect()
    }
}

#[derive(Default)]
struct Store {
    session: Option<SessionState>,
    records: Vec<(PaymentKey, PaymentRecord)>,
}

impl Store {
    fn commit(&mut self, ep: &ServerEndpoint, key: &PaymentKey) {
        self.session = ep.export_session("q");
        self.records.retain(|(k, _)| k != key);
        if let Some(r) = ep.export_record(key) {
            self.records.push((key.clone(), r));
        }
    }
}

fn settle_id(d: PaymentDecision) -> SettleId {
    match d {
        PaymentDecision::Settle(id) => id,
        other => panic!("expected Settle, got {other:?}"),
    }
}

#[test]
fn one_payload_is_credited_once_and_renewals_reach_the_socket_elsewhere() {
    let t0 = Instant::now();
    let (mut a, mut b, mut store) = (Inst::new(t0), Inst::new(t0), Store::default());
    let p1 = payment(1);

    // A claims p1 and commits the claim before settling.
    let id = settle_id(a.ep.handle_payment(a.at(0), &quote(), p1.clone()));
    store.commit(&a.ep, &p1.key);
    // B sees the claim: the same payload is pending there, never settled twice.
    b.load(0, &store);
    assert!(matches!(
        b.ep.handle_payment(b.at(0), &quote(), p1.clone()),
        PaymentDecision::Pending { .. }
    ));
    // A's outcome: planned against the store's session, committed, applied.
    let plan =
        a.ep.plan_settled(a.at(1), id, settled(), 0, store.session.clone())
            .unwrap();
    assert!(plan.is_final());
    assert_eq!(plan.session.as_ref().unwrap().slices, 1);
    a.ep.apply_settled(a.at(1), id, plan);
    store.commit(&a.ep, &p1.key);
    b.load(1, &store);
    let PaymentDecision::Credited(c) = b.ep.answer(&p1) else {
        panic!("B answers with A's credit");
    };
    assert_eq!(c.response.slices, 1);

    // A holds the socket; B sells the next slice; A's socket hears it.
    a.ep.connect(a.at(2), &quote(), ConnId(1), None, head())
        .unwrap();
    store.session = a.ep.export_session("q");
    b.load(2, &store);
    let p2 = payment(2);
    let id2 = settle_id(b.ep.handle_payment(b.at(3), &quote(), p2.clone()));
    store.commit(&b.ep, &p2.key);
    b.ep.handle_settled(b.at(3), id2, settled(), 0);
    store.commit(&b.ep, &p2.key);
    let _ = a.transmits();
    a.load(3, &store);
    let t = a.transmits();
    assert!(
        t.iter().any(|t| matches!(
            t,
            ServerTransmit::Message {
                conn: ConnId(1),
                msg: ServerMessage::Renewed { slices: 2, .. }
            }
        )),
        "{t:?}"
    );
    assert_eq!(a.ep.slices("q"), 2);
    assert_eq!(a.ep.expires_at("q"), U0 + 21);
}

#[test]
fn a_connection_elsewhere_supersedes_the_socket_here() {
    let t0 = Instant::now();
    let (mut a, mut b, mut store) = (Inst::new(t0), Inst::new(t0), Store::default());
    let p = payment(1);
    let id = settle_id(a.ep.handle_payment(a.at(0), &quote(), p.clone()));
    a.ep.handle_settled(a.at(0), id, settled(), 0);
    a.ep.connect(a.at(0), &quote(), ConnId(1), None, head())
        .unwrap();
    store.commit(&a.ep, &p.key);
    b.load(1, &store);
    let c =
        b.ep.connect(b.at(1), &quote(), ConnId(7), Some(0), head())
            .unwrap();
    assert!(
        c.hello.resumed,
        "the session was connected before, elsewhere"
    );
    store.session = b.ep.export_session("q");
    let _ = a.transmits();
    a.load(1, &store);
    assert_eq!(
        a.transmits(),
        vec![ServerTransmit::Close {
            conn: ConnId(1),
            code: CloseCode::Superseded
        }]
    );
    assert_eq!(a.ep.deliver_until(ConnId(1)), None);
}

#[test]
fn a_dead_instances_settlement_is_adopted_as_a_retry() {
    let t0 = Instant::now();
    let (mut a, mut b, mut store) = (Inst::new(t0), Inst::new(t0), Store::default());
    let p = payment(1);
    let _ = settle_id(a.ep.handle_payment(a.at(0), &quote(), p.clone()));
    store.commit(&a.ep, &p.key);
    // A dies. B takes the record over: its first attempt's fate is unknown,
    // so "nonce used" now is not a refusal but an unresolved outcome.
    b.load(5, &store);
    let rec = store.records[0].1.clone();
    let id = b.ep.adopt(b.at(5), &p.key, rec, None);
    assert!(b.ep.is_settling(id));
    // The takeover is a retry and leaves through `poll_settle` at once.
    let job = b.ep.poll_settle().unwrap();
    assert_eq!(
        (
            job.id,
            job.attempt,
            job.session.as_str(),
            job.stream.as_str()
        ),
        (id, 1, "q", "btc")
    );
    assert_eq!(b.ep.poll_settle(), None);
    b.ep.handle_settled(
        b.at(6),
        id,
        SettleOutcome::Refused {
            code: ErrorCode::PaymentUsed,
            message: "nonce used".into(),
        },
        0,
    );
    let PaymentDecision::Refused(r) = b.ep.answer(&p) else {
        panic!("final");
    };
    assert_eq!(r.code, ErrorCode::SettlementUnknown);
    assert!(matches!(
        b.ep.poll_event(),
        Some(ServerEvent::Unresolved { .. })
    ));
    // Adopted and settled: credited once.
    let (mut c, store2) = (Inst::new(t0), store);
    c.load(5, &store2);
    let id =
        c.ep.adopt(c.at(5), &p.key, store2.records[0].1.clone(), None);
    c.ep.handle_settled(c.at(6), id, settled(), 0);
    assert_eq!(c.ep.slices("q"), 1);
    assert_eq!(c.ep.stats().settling, 0);
}

#[test]
fn a_junk_copy_refused_elsewhere_frees_the_authorization_here() {
    let t0 = Instant::now();
    let (mut a, mut b, mut store) = (Inst::new(t0), Inst::new(t0), Store::default());
    let genuine = payment(1);
    // The same authorization with other signature bytes.
    let junk = PaymentIn {
        key: PaymentKey::from_stored(format!("{}-junk", genuine.key.as_str())),
        ..genuine.clone()
    };
    let jid = settle_id(a.ep.handle_payment(a.at(0), &quote(), junk.clone()));
    store.commit(&a.ep, &junk.key);
    a.ep.start_settlement(a.at(0), jid);
    // B sees A verifying it: the genuine payload waits.
    b.load(0, &store);
    let PaymentDecision::Refused(r) = b.ep.handle_payment(b.at(0), &quote(), genuine.clone())
    else {
        panic!("waits");
    };
    assert_eq!(r.code, ErrorCode::PaymentPending);
    // A's facilitator refuses the junk copy outright; B hears of it.
    let plan =
        a.ep.plan_settled(
            a.at(1),
            jid,
            SettleOutcome::Refused {
                code: ErrorCode::PaymentInvalid,
                message: "invalid signature".into(),
            },
            0,
            store.session.clone(),
        )
        .unwrap();
    assert!(plan.is_final());
    a.ep.apply_settled(a.at(1), jid, plan);
    store.commit(&a.ep, &junk.key);
    b.load(1, &store);
    assert_eq!(
        b.ep.stats().claims,
        0,
        "the refused copy holds nothing here either"
    );
    let gid = settle_id(b.ep.handle_payment(b.at(1), &quote(), genuine.clone()));
    b.ep.handle_settled(b.at(2), gid, settled(), 0);
    assert_eq!(b.ep.slices("q"), 1);
    // The junk bytes keep their answer on either instance.
    for ep in [&a.ep, &b.ep] {
        let PaymentDecision::Refused(r) = ep.answer(&junk) else {
            panic!("recorded");
        };
        assert_eq!(r.code, ErrorCode::PaymentInvalid);
    }
}

#[test]
fn a_lost_commit_is_abandoned_and_leaves_nothing() {
    let t0 = Instant::now();
    let mut a = Inst::new(t0);
    let p = payment(1);
    let id = settle_id(a.ep.handle_payment(a.at(0), &quote(), p.clone()));
    a.ep.abandon(a.at(0), id);
    let s = a.ep.stats();
    assert_eq!((s.records, s.claims, s.settling, s.sessions), (0, 0, 0, 0));
    // The same payload is decided afresh.
    assert!(matches!(
        a.ep.handle_payment(a.at(0), &quote(), p),
        PaymentDecision::Settle(_)
    ));
}

proptest! {
    /// Credits applied to a session's state, at any times and through any
    /// number of instances, never lose a slice: paid time is exactly the
    /// slices bought when bought back to back, and never less than one slice
    /// after the last credit.
    #[test]
    fn credits_never_lose_paid_time(gaps in proptest::collection::vec(0u64..30_000, 1..40)) {
        let mut st = SessionState::default();
        let mut now = 1_000_000u64;
        for (i, g) in gaps.iter().enumerate() {
            now += g;
            let key = PaymentKey::from_stored(format!("k{i}"));
            st.in_flight.insert(key.clone(), u64::MAX);
            let before = st.paid_until_ms.unwrap_or(0).max(now);
            st.credit(&key, None, now, 10, 0);
            prop_assert_eq!(st.paid_until_ms, Some(before + 10_000));
            prop_assert!(!st.in_flight.contains_key(&key));
        }
        prop_assert_eq!(st.slices, gaps.len() as u64);
    }

    /// The horizon admits at most `horizon` slices ahead, counting those in flight.
    #[test]
    fn the_horizon_holds(horizon in 1u64..5, tries in 1usize..12, paid in 0u64..40_000) {
        let mut st = SessionState { paid_until_ms: Some(1_000_000 + paid), ..Default::default() };
        let mut admitted = 0u64;
        for i in 0..tries {
            let k = PaymentKey::from_stored(format!("k{i}"));
            if st.admit(&k, u64::MAX, 1_000_000, 10, horizon).is_ok() {
                admitted += 1;
            }
        }
        // Whatever was paid before, nothing is admitted beyond the horizon.
        if admitted > 0 {
            prop_assert!(paid + admitted * 10_000 <= horizon * 10_000);
        }
        // And it is not stingier than that: one more would not fit.
        prop_assert!(paid + (admitted + 1) * 10_000 > horizon * 10_000 || admitted as usize == tries);
    }
}

#[test]
fn an_older_copy_never_takes_paid_time_back() {
    let t0 = Instant::now();
    let mut a = Inst::new(t0);
    let (p1, p2) = (payment(1), payment(2));
    let id = settle_id(a.ep.handle_payment(a.at(0), &quote(), p1));
    a.ep.handle_settled(a.at(0), id, settled(), 0);
    let old = a.ep.export_session("q").unwrap();
    let id = settle_id(a.ep.handle_payment(a.at(1), &quote(), p2));
    a.ep.handle_settled(a.at(1), id, settled(), 0);
    let expires = a.ep.expires_at("q");
    // A load that started before the second credit lands after it.
    a.ep.import_session(a.at(2), "q", None, old);
    assert_eq!(a.ep.slices("q"), 2);
    assert_eq!(a.ep.expires_at("q"), expires);
}
