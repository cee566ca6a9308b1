//! The server endpoint's rules, input by input: payments and their recorded
//! outcomes, pending settlements, nonce claims, payment identifiers, the
//! horizon, paid-time delivery floors, timers and bounded memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use x402_payer::EvmExactPayer;
use x402_session::*;
use x402_types::{CloseCode, ErrorCode, PaymentPayload, ServerMessage};

use crate::sim;

const U0: u64 = sim::UNIX0;

struct Fixture {
    t0: Instant,
    ep: ServerEndpoint,
    quote: Quote,
    payer: EvmExactPayer,
}

fn fixture() -> Fixture {
    let t0 = Instant::now();
    Fixture {
        t0,
        ep: ServerEndpoint::new(EndpointConfig::default(), t0, U0),
        quote: sim::quote(),
        payer: sim::payer(Arc::new(std::sync::atomic::AtomicU64::new(U0)), 3),
    }
}

impl Fixture {
    fn payload(&self) -> PaymentPayload {
        self.payer.sign(&sim::offer()).unwrap()
    }

    fn pay(&mut self, at: u64, p: &PaymentPayload) -> PaymentDecision {
        let q = self.quote.clone();
        let now = self.t0 + Duration::from_secs(at);
        self.ep
            .handle_payment(now, &q, PaymentIn::from_payload(p).unwrap())
    }

    fn settle(&mut self, at: u64, id: SettleId, outcome: SettleOutcome, head: u64) {
        self.ep
            .handle_settled(self.t0 + Duration::from_secs(at), id, outcome, head);
    }
}

fn settled() -> SettleOutcome {
    SettleOutcome::Settled {
        header: Some("h".into()),
        payer: None,
        amount: None,
    }
}

fn settle_id(d: PaymentDecision) -> SettleId {
    match d {
        PaymentDecision::Settle(id) => id,
        other => panic!("expected Settle, got {other:?}"),
    }
}

fn refused(d: PaymentDecision) -> ErrorCode {
    match d {
        PaymentDecision::Refused(r) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn one_payment_one_slice_and_the_same_payload_gets_the_first_answer() {
    let mut f = fixture();
    let p1 = f.payload();
    let id = settle_id(f.pay(0, &p1));
    // While settling, the same payload attaches: pending, never payment_used.
    assert!(matches!(f.pay(0, &p1), PaymentDecision::Pending { id: i, .. } if i == id));
    f.settle(0, id, settled(), 0);
    let PaymentDecision::Credited(c) = f.pay(1, &p1) else {
        panic!()
    };
    assert_eq!((c.response.slices, c.response.expires_at), (1, U0 + 10));
    assert_eq!(c.settlement.as_deref(), Some("h"));
    assert_eq!(f.ep.slices("q"), 1, "credited once");
    // The horizon (two slices): a second payment extends from the current end, a third is refused.
    let p2 = f.payload();
    let id2 = settle_id(f.pay(0, &p2));
    f.settle(0, id2, settled(), 0);
    assert_eq!(
        f.ep.expires_at("q"),
        U0 + 20,
        "extends from the current end"
    );
    let p3 = f.payload();
    assert_eq!(refused(f.pay(0, &p3)), ErrorCode::HorizonExceeded);
    let mut credited = 0;
    while let Some(e) = f.ep.poll_event() {
        credited += matches!(e, ServerEvent::Credited { .. }) as u32;
    }
    assert_eq!(credited, 2);
}

#[test]
fn a_slow_settlement_is_credited_when_it_answers_and_retries_never_see_payment_used() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    // The server's wait ran out (the driver answered 202). The retry attaches.
    for at in [3, 6, 9] {
        assert!(matches!(
            f.pay(at, &p),
            PaymentDecision::Pending { retry_after: 2, .. }
        ));
    }
    // The facilitator answers late: success. Credited once.
    f.settle(12, id, settled(), 0);
    assert!(matches!(f.pay(13, &p), PaymentDecision::Credited(_)));
    assert_eq!(f.ep.slices("q"), 1);
    assert_eq!(
        f.ep.expires_at("q"),
        U0 + 22,
        "paid time starts when credited"
    );
}

#[test]
fn settlement_pending_and_lost_answers_are_retried_with_the_same_payload() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(1, id, SettleOutcome::Pending, 0);
    assert!(matches!(f.pay(1, &p), PaymentDecision::Pending { .. }));
    assert_eq!(f.ep.slices("q"), 0, "pending is not success");
    // The endpoint asks for the same settlement again after its retry delay.
    let t = f.ep.poll_timeout().unwrap();
    assert_eq!(t, f.t0 + Duration::from_secs(3));
    f.ep.handle_timeout(t);
    let job = f.ep.poll_settle().unwrap();
    assert_eq!(
        (
            job.id,
            job.attempt,
            job.session.as_str(),
            job.stream.as_str()
        ),
        (id, 1, "q", "btc")
    );
    assert_eq!(job.request, None, "the payment came without a request");
    assert_eq!(f.ep.poll_settle(), None);
    f.settle(
        4,
        id,
        SettleOutcome::Unknown {
            reason: "timeout".into(),
        },
        0,
    );
    f.ep.handle_timeout(f.t0 + Duration::from_secs(6));
    let job = f.ep.poll_settle().unwrap();
    assert_eq!((job.id, job.attempt), (id, 2));
    assert_eq!(f.ep.poll_settle(), None);
    f.settle(6, id, settled(), 0);
    assert_eq!(f.ep.slices("q"), 1);
}

#[test]
fn a_refusal_after_an_unknown_attempt_is_unresolved_not_a_refusal() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(
        1,
        id,
        SettleOutcome::Unknown {
            reason: "cut".into(),
        },
        0,
    );
    f.settle(
        3,
        id,
        SettleOutcome::Refused {
            code: ErrorCode::PaymentUsed,
            message: "nonce used".into(),
        },
        0,
    );
    // Money may have moved: nothing credited, the payer is told it may be spent, operators too.
    let code = refused(f.pay(4, &p));
    assert_eq!(code, ErrorCode::SettlementUnknown);
    assert!(code.maybe_spent());
    assert_eq!(f.ep.slices("q"), 0);
    assert!(
        std::iter::from_fn(|| f.ep.poll_event())
            .any(|e| matches!(e, ServerEvent::Unresolved { .. }))
    );
}

#[test]
fn facilitator_success_for_another_payer_or_amount_credits_nothing() {
    for outcome in [
        SettleOutcome::Settled {
            header: None,
            payer: Some(
                "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
                    .parse()
                    .unwrap(),
            ),
            amount: None,
        },
        SettleOutcome::Settled {
            header: None,
            payer: None,
            amount: Some(x402_types::Amount::from(1u64)),
        },
    ] {
        let mut f = fixture();
        let p = f.payload();
        let id = settle_id(f.pay(0, &p));
        f.settle(1, id, outcome, 0);
        assert_eq!(refused(f.pay(2, &p)), ErrorCode::SettlementUnknown);
        assert_eq!(f.ep.slices("q"), 0);
    }
}

#[test]
fn unreachable_facilitator_frees_the_payload_and_definite_refusals_are_recorded() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(
        0,
        id,
        SettleOutcome::NotAttempted {
            reason: "down".into(),
        },
        0,
    );
    assert_eq!(
        f.ep.stats().sessions,
        0,
        "a failed first payment leaves no session"
    );
    assert_eq!(f.ep.stats().claims, 0);
    // The same payload later starts over.
    let id = settle_id(f.pay(1, &p));
    f.settle(
        1,
        id,
        SettleOutcome::Refused {
            code: ErrorCode::PaymentInvalid,
            message: "bad signature".into(),
        },
        0,
    );
    assert_eq!(refused(f.pay(2, &p)), ErrorCode::PaymentInvalid);
    assert!(!ErrorCode::PaymentInvalid.maybe_spent());
}

#[test]
fn nonce_claims_and_payment_identifiers() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(0, id, settled(), 0);
    // Same authorization, other signature bytes (v = 0 instead of 27): payment_used.
    let mut other = PaymentIn::from_payload(&p).unwrap();
    let mut twin = p.clone();
    if let PaymentPayload::V2(v) = &mut twin
        && let x402_types::SchemePayload::ExactEvm(e) = &mut v.payload
    {
        e.signature.0[64] -= 27;
    }
    other = PaymentIn {
        key: PaymentIn::from_payload(&twin).unwrap().key,
        ..other
    };
    let q = f.quote.clone();
    assert_eq!(
        refused(f.ep.handle_payment(f.t0, &q, other)),
        ErrorCode::PaymentUsed
    );
    // The same payload on another session: payment_used, not a second credit.
    let q2 = Quote {
        id: "other".into(),
        ..f.quote.clone()
    };
    assert_eq!(
        refused(f.ep.handle_payment(f.t0, &q2, PaymentIn::from_payload(&p).unwrap())),
        ErrorCode::PaymentUsed
    );
    // payment-identifier: same id, other payload -> 409 conflict.
    let with_id = |p: &PaymentPayload| {
        let mut i = PaymentIn::from_payload(p).unwrap();
        i.payment_id = Some("pay_0123456789abcdef".into());
        i
    };
    let a = f.payload();
    let b = f.payload();
    let ia = settle_id(f.ep.handle_payment(f.t0, &q, with_id(&a)));
    f.settle(0, ia, settled(), 0);
    assert!(matches!(
        f.ep.handle_payment(f.t0, &q, with_id(&a)),
        PaymentDecision::Credited(_)
    ));
    assert_eq!(
        refused(f.ep.handle_payment(f.t0, &q, with_id(&b))),
        ErrorCode::PaymentIdConflict
    );
}

#[test]
fn quotes_expire_and_sessions_are_bounded() {
    let mut f = fixture();
    let p = f.payload();
    // The quote expired before any payment: 410.
    assert_eq!(refused(f.pay(61, &p)), ErrorCode::QuoteExpired);
    let q = f.quote.clone();
    assert_eq!(
        f.ep.check_connect(f.t0 + Duration::from_secs(61), &q),
        Err(Refusal::new(
            ErrorCode::QuoteExpired,
            "the unpaid quote expired; request the schema again"
        ))
    );
    let mut small = ServerEndpoint::new(
        EndpointConfig {
            max_sessions: 1,
            ..Default::default()
        },
        f.t0,
        U0,
    );
    let _ = settle_id(small.handle_payment(f.t0, &q, PaymentIn::from_payload(&p).unwrap()));
    let q2 = Quote {
        id: "q2".into(),
        ..q
    };
    let p2 = f.payload();
    assert_eq!(
        refused(small.handle_payment(f.t0, &q2, PaymentIn::from_payload(&p2).unwrap())),
        ErrorCode::TooManySessions
    );
}

#[test]
fn delivery_starts_at_the_first_paid_event_and_unpaid_gaps_are_skipped() {
    let mut f = fixture();
    let q = f.quote.clone();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    // 500 events were published before the purchase.
    f.settle(0, id, settled(), 500);
    let head = StreamHead {
        next_seq: 537,
        oldest_seq: 0,
    };
    // A buyer asking for everything from 0 gets from 500 on, told 500 were skipped.
    let c = f.ep.connect(f.t0, &q, ConnId(1), Some(0), head).unwrap();
    assert_eq!((c.start, c.skipped, c.lost), (500, 500, 0));
    assert_eq!(c.hello.next_seq, 500);
    // Lapse: 10 s paid, then a renewal at 30 s when the stream is at 800.
    let p2 = f.payload();
    let id2 = settle_id(f.pay(29, &p2));
    f.settle(29, id2, settled(), 800);
    let t: Vec<ServerTransmit> = std::iter::from_fn(|| f.ep.poll_transmit()).collect();
    assert_eq!(
        t[0],
        ServerTransmit::Skip {
            conn: ConnId(1),
            seq: 800
        }
    );
    assert!(matches!(
        t[1],
        ServerTransmit::Message {
            msg: ServerMessage::Renewed { slices: 2, .. },
            ..
        }
    ));
    // A resume below the floor is raised too; the replay buffer's eviction is reported as lost.
    let c =
        f.ep.connect(
            f.t0 + Duration::from_secs(31),
            &q,
            ConnId(2),
            Some(700),
            StreamHead {
                next_seq: 900,
                oldest_seq: 850,
            },
        )
        .unwrap();
    assert_eq!((c.start, c.skipped, c.lost), (850, 100, 50));
    assert!(c.hello.resumed);
}

#[test]
fn timers_supersede_and_close_after_the_grace() {
    let mut f = fixture();
    let q = f.quote.clone();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(0, id, settled(), 0);
    let head = StreamHead {
        next_seq: 5,
        oldest_seq: 0,
    };
    let h = f.ep.connect(f.t0, &q, ConnId(1), None, head).unwrap();
    // A first connection without a resume point gets what was published since payment.
    assert_eq!(
        (h.hello.slice_seconds, h.start, h.hello.resumed),
        (10, 0, false)
    );
    assert!(
        f.ep.connect(f.t0, &q, ConnId(2), None, head)
            .unwrap()
            .hello
            .resumed
    );
    assert_eq!(
        f.ep.poll_transmit(),
        Some(ServerTransmit::Close {
            conn: ConnId(1),
            code: CloseCode::Superseded
        })
    );
    assert_eq!(f.ep.deliver_until(ConnId(1)), None);
    let end = f.t0 + Duration::from_secs(10);
    assert_eq!(f.ep.deliver_until(ConnId(2)), Some(end));
    let mut seen = Vec::new();
    while let Some(t) = f.ep.poll_timeout() {
        if t > end + Duration::from_secs(10) {
            break;
        }
        f.ep.handle_timeout(t);
        while let Some(x) = f.ep.poll_transmit() {
            let k = match &x {
                ServerTransmit::Message {
                    msg: ServerMessage::Expiring { .. },
                    ..
                } => "expiring".to_string(),
                ServerTransmit::Message {
                    msg: ServerMessage::Expired { .. },
                    ..
                } => "expired".to_string(),
                ServerTransmit::Close { code, .. } => format!("close {}", code.code()),
                other => format!("{other:?}"),
            };
            seen.push((t, k));
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["expiring", "expired", "close 4402"]);
    assert_eq!(seen[1].0, end);
    assert_eq!(seen[2].0, end + Duration::from_secs(5));
    assert_eq!(f.ep.deliver_until(ConnId(2)), None);
}

#[test]
fn records_and_sessions_are_swept_once_nothing_needs_them() {
    let mut f = fixture();
    for _ in 0..2 {
        let p = f.payload();
        let id = settle_id(f.pay(0, &p));
        f.settle(0, id, settled(), 0);
    }
    let s = f.ep.stats();
    assert_eq!((s.sessions, s.records, s.claims), (1, 2, 2));
    // A credited record answers retries of its payload for 600 s after its
    // outcome (here at 0 s; its validBefore, now + 30 s, plus 60 s of skew is
    // earlier); the session lingers 600 s after its paid end (20 s).
    let mut t = f.t0;
    while t < f.t0 + Duration::from_secs(700) {
        t = f.ep.poll_timeout().unwrap().max(t + Duration::from_secs(1));
        f.ep.handle_timeout(t);
        if t > f.t0 + Duration::from_secs(605) && t < f.t0 + Duration::from_secs(615) {
            let s = f.ep.stats();
            assert_eq!(
                (s.sessions, s.records, s.claims),
                (1, 0, 0),
                "records gone after their retention"
            );
        }
    }
    assert_eq!(f.ep.stats(), EndpointStats::default(), "everything swept");
}

/// A renewal still settling when paid time plus grace has passed: the close
/// waits for it, and the timer never fires in the past (it used to be
/// rescheduled at a past instant, and `handle_timeout` spun forever; found by
/// the property test with a facilitator answering `settlement_pending`).
#[test]
fn a_renewal_settling_past_the_grace_delays_the_close_without_spinning() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    f.settle(0, id, settled(), 0);
    let q = f.quote.clone();
    let head = StreamHead {
        next_seq: 0,
        oldest_seq: 0,
    };
    f.ep.connect(f.t0, &q, ConnId(1), None, head).unwrap();
    // The next slice's settlement stays pending beyond expiry (10 s) + grace (5 s).
    let p2 = f.payload();
    let id2 = settle_id(f.pay(8, &p2));
    f.settle(8, id2, SettleOutcome::Pending, 0);
    let t = f.t0 + Duration::from_secs(16);
    f.ep.handle_timeout(t);
    let next = f.ep.poll_timeout().unwrap();
    assert!(next > t, "a timer in the past would fire again at once");
    let closes = std::iter::from_fn(|| f.ep.poll_transmit())
        .filter(|t| matches!(t, ServerTransmit::Close { .. }))
        .count();
    assert_eq!(closes, 0, "the renewal may still land");
    // It lands: paid time continues, no close.
    while let Some(_j) = f.ep.poll_settle() {}
    f.settle(17, id2, settled(), 0);
    assert_eq!(f.ep.slices("q"), 2);
}
