//! Who holds an authorization, and how its settlement leaves the endpoint:
//! a definitely refused payload (a junk copy of a genuine authorization)
//! frees the authorization, one still in its first attempt makes the others
//! wait (`payment_pending`), an unresolved one keeps it; `validBefore` must
//! lie within `maxTimeoutSeconds`; every attempt, the first included, leaves
//! through `poll_settle` with its facilitator request, until a final answer
//! or `validBefore` plus skew.

use std::sync::Arc;
use std::time::{Duration, Instant};

use x402_payer::EvmExactPayer;
use x402_session::*;
use x402_types::{ErrorCode, PaymentPayload, SchemePayload, U256};

use crate::sim::{self, junk_copy, request};

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
        payer: sim::payer(Arc::new(std::sync::atomic::AtomicU64::new(U0)), 5),
    }
}

/// `p` as the driver hands it to the endpoint: with its request.
fn payment(p: &PaymentPayload) -> PaymentIn {
    PaymentIn::from_payload(p).unwrap().with_request(request(p))
}

impl Fixture {
    fn payload(&self) -> PaymentPayload {
        self.payer.sign(&sim::offer()).unwrap()
    }

    fn now(&self, at: u64) -> Instant {
        self.t0 + Duration::from_secs(at)
    }

    fn pay(&mut self, at: u64, p: &PaymentPayload) -> PaymentDecision {
        let q = self.quote.clone();
        self.ep.handle_payment(self.now(at), &q, payment(p))
    }

    /// Admits `p` and starts its first attempt, as a driver does once the
    /// decision is committed; returns the settlement and its attempt.
    fn admit(&mut self, at: u64, p: &PaymentPayload) -> (SettleId, SettleJob) {
        let id = settle_id(self.pay(at, p));
        assert_eq!(self.ep.poll_settle(), None, "nothing before it is started");
        self.ep.start_settlement(self.now(at), id);
        let job = self.ep.poll_settle().expect("the first attempt");
        assert_eq!((job.id, job.attempt), (id, 0));
        assert_eq!(job.request, Some(request(p)), "the payload's own request");
        assert_eq!(self.ep.poll_settle(), None);
        (id, job)
    }

    fn settle(&mut self, at: u64, id: SettleId, outcome: SettleOutcome) {
        self.ep.handle_settled(self.now(at), id, outcome, 0);
    }

    fn jobs(&mut self) -> Vec<SettleJob> {
        std::iter::from_fn(|| self.ep.poll_settle()).collect()
    }
}

fn settled() -> SettleOutcome {
    SettleOutcome::Settled {
        header: Some("h".into()),
        payer: None,
        amount: None,
    }
}

fn invalid() -> SettleOutcome {
    SettleOutcome::Refused {
        code: ErrorCode::PaymentInvalid,
        message: "invalid_exact_evm_payload_signature".into(),
    }
}

fn unknown() -> SettleOutcome {
    SettleOutcome::Unknown {
        reason: "timeout".into(),
    }
}

fn settle_id(d: PaymentDecision) -> SettleId {
    match d {
        PaymentDecision::Settle(id) => id,
        other => panic!("expected Settle, got {other:?}"),
    }
}

fn refusal(d: PaymentDecision) -> Refusal {
    match d {
        PaymentDecision::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_refused_junk_copy_frees_the_authorization_for_the_genuine_payload() {
    let mut f = fixture();
    let genuine = f.payload();
    let junk = junk_copy(&genuine, 1);
    // The junk copy arrives first and is admitted: it may be the real one.
    let (jid, _) = f.admit(0, &junk);
    assert_eq!(f.ep.stats().claims, 1);
    // The facilitator refuses it outright on its first attempt: nothing moved.
    f.settle(1, jid, invalid());
    assert_eq!(f.ep.stats().claims, 0, "a definite refusal holds no claim");
    // The genuine payload is admitted, settled with its own request, credited.
    let (gid, _) = f.admit(2, &genuine);
    f.settle(3, gid, settled());
    assert_eq!(f.ep.slices("q"), 1);
    let PaymentDecision::Credited(c) = f.pay(4, &genuine) else {
        panic!("the genuine payload is credited");
    };
    assert_eq!(c.response.slices, 1);
    assert_eq!(f.ep.stats().claims, 1, "now the genuine payload holds it");
    // The same junk bytes keep their recorded answer (not a new settlement,
    // not payment_used).
    let again = refusal(f.pay(5, &junk));
    assert_eq!(
        again,
        Refusal::new(
            ErrorCode::PaymentInvalid,
            "invalid_exact_evm_payload_signature"
        )
    );
    assert_eq!(f.ep.poll_settle(), None);
    // A second junk copy, after the genuine payload settled: payment_used.
    let other = junk_copy(&genuine, 2);
    assert_eq!(refusal(f.pay(6, &other)).code, ErrorCode::PaymentUsed);
    let credited = std::iter::from_fn(|| f.ep.poll_event())
        .filter(|e| matches!(e, ServerEvent::Credited { .. }))
        .count();
    assert_eq!(credited, 1);
}

#[test]
fn a_refused_junk_copy_frees_the_payment_identifier_too() {
    let mut f = fixture();
    let genuine = f.payload();
    let junk = junk_copy(&genuine, 1);
    let with_id = |p: &PaymentPayload| {
        let mut i = payment(p);
        i.payment_id = Some("pay_0123456789abcdef".into());
        i
    };
    let q = f.quote.clone();
    let jid = settle_id(f.ep.handle_payment(f.t0, &q, with_id(&junk)));
    f.ep.start_settlement(f.t0, jid);
    f.settle(1, jid, invalid());
    let gid = settle_id(f.ep.handle_payment(f.now(2), &q, with_id(&genuine)));
    f.ep.start_settlement(f.now(2), gid);
    f.settle(3, gid, settled());
    assert_eq!(f.ep.slices("q"), 1);
}

#[test]
fn while_a_junk_copy_is_in_its_first_attempt_the_genuine_payload_waits() {
    let mut f = fixture();
    let genuine = f.payload();
    let junk = junk_copy(&genuine, 1);
    // Admitted but not yet started: still its first attempt.
    let jid = settle_id(f.pay(0, &junk));
    let r = refusal(f.pay(0, &genuine));
    assert_eq!(r.code, ErrorCode::PaymentPending);
    assert_eq!(r.status(), 202, "retry the same payload shortly");
    assert!(!r.code.maybe_spent());
    f.ep.start_settlement(f.t0, jid);
    assert_eq!(f.jobs().len(), 1);
    assert_eq!(refusal(f.pay(1, &genuine)).code, ErrorCode::PaymentPending);
    assert_eq!(f.ep.poll_settle(), None, "a refused payload starts nothing");
    // The junk copy is refused: the genuine one's retry goes through.
    f.settle(2, jid, invalid());
    let (gid, _) = f.admit(3, &genuine);
    f.settle(3, gid, settled());
    assert_eq!(f.ep.slices("q"), 1);
}

#[test]
fn validity_must_lie_within_max_timeout_seconds() {
    let mut f = fixture();
    let skew = f.ep.config().skew_secs;
    // A validBefore of 2^256-1 (saturated to u64::MAX when read): refused,
    // and nothing is left behind.
    let mut forever = f.payload();
    if let PaymentPayload::V2(v) = &mut forever
        && let SchemePayload::ExactEvm(e) = &mut v.payload
    {
        e.authorization.valid_before = U256::MAX;
    }
    let p = payment(&forever);
    assert_eq!(p.valid_before, u64::MAX);
    let q = f.quote.clone();
    let r = refusal(f.ep.handle_payment(f.t0, &q, p.clone()));
    assert_eq!(r.code, ErrorCode::ValidityTooLong);
    assert_eq!(r.status(), 402);
    assert!(!r.code.maybe_spent(), "nothing moved: sign anew");
    assert_eq!(f.ep.stats(), EndpointStats::default());
    // The bound: now + maxTimeoutSeconds + skew, at the moment it arrives.
    let at = 7;
    let bound = U0 + at + q.max_timeout_seconds + skew;
    let over = PaymentIn {
        valid_before: bound + 1,
        ..p.clone()
    };
    assert_eq!(
        refusal(f.ep.handle_payment(f.now(at), &q, over)).code,
        ErrorCode::ValidityTooLong
    );
    let at_bound = PaymentIn {
        valid_before: bound,
        ..p
    };
    assert!(matches!(
        f.ep.handle_payment(f.now(at), &q, at_bound),
        PaymentDecision::Settle(_)
    ));
    // What the payer signs (now + maxTimeoutSeconds) is admitted.
    let honest = f.payload();
    assert_eq!(
        PaymentIn::from_payload(&honest).unwrap().valid_before,
        U0 + q.max_timeout_seconds
    );
    assert!(matches!(f.pay(at, &honest), PaymentDecision::Settle(_)));
}

#[test]
fn an_unresolved_junk_copy_keeps_the_authorization() {
    let mut f = fixture();
    let genuine = f.payload();
    let junk = junk_copy(&genuine, 1);
    let (jid, _) = f.admit(0, &junk);
    // Its first answer was lost: it may have moved the money.
    f.settle(1, jid, unknown());
    assert_eq!(
        refusal(f.pay(1, &genuine)).code,
        ErrorCode::PaymentUsed,
        "a retrying payload holds the authorization"
    );
    // The retry is refused: that does not say the first attempt moved
    // nothing, so the outcome is unresolved and the claim stays.
    f.ep.handle_timeout(f.now(3));
    let job = f.ep.poll_settle().unwrap();
    assert_eq!((job.id, job.attempt), (jid, 1));
    assert_eq!(job.request, Some(request(&junk)));
    f.settle(3, jid, invalid());
    assert_eq!(refusal(f.pay(4, &junk)).code, ErrorCode::SettlementUnknown);
    let r = refusal(f.pay(4, &genuine));
    assert_eq!(r.code, ErrorCode::PaymentUsed);
    assert!(r.code.maybe_spent());
    assert_eq!(f.ep.stats().claims, 1);
    assert!(
        std::iter::from_fn(|| f.ep.poll_event())
            .any(|e| matches!(e, ServerEvent::Unresolved { .. }))
    );
}

#[test]
fn every_attempt_leaves_through_poll_settle_with_its_request() {
    let mut f = fixture();
    let p = f.payload();
    let id = settle_id(f.pay(0, &p));
    // Not before the driver starts it (its decision may not be committed yet).
    assert_eq!(f.ep.poll_settle(), None);
    // The same payload again attaches to it and starts nothing.
    assert!(matches!(f.pay(0, &p), PaymentDecision::Pending { id: i, .. } if i == id));
    assert_eq!(f.ep.poll_settle(), None);
    f.ep.start_settlement(f.t0, id);
    let mut seen = f.jobs();
    assert_eq!(seen.len(), 1);
    f.settle(1, id, SettleOutcome::Pending);
    assert_eq!(f.ep.poll_settle(), None, "a retry waits for its delay");
    f.ep.handle_timeout(f.now(3));
    seen.extend(f.jobs());
    f.settle(4, id, unknown());
    f.ep.handle_timeout(f.now(6));
    seen.extend(f.jobs());
    f.settle(6, id, settled());
    // Final: nothing more, however long the timers run; starting it again
    // does nothing either.
    f.ep.start_settlement(f.now(7), id);
    let mut t = f.now(7);
    while t < f.now(200) {
        t = f.ep.poll_timeout().unwrap().max(t + Duration::from_secs(1));
        f.ep.handle_timeout(t);
        seen.extend(f.jobs());
    }
    let attempts: Vec<u32> = seen.iter().map(|j| j.attempt).collect();
    assert_eq!(attempts, [0, 1, 2], "attempt 0 exactly once");
    for j in &seen {
        assert_eq!(j.id, id);
        assert_eq!((j.session.as_str(), j.stream.as_str()), ("q", "btc"));
        assert_eq!(j.request, Some(request(&p)));
    }
    assert_eq!(f.ep.slices("q"), 1);
    // An abandoned settlement (its claim could not be committed) never starts.
    let p2 = f.payload();
    let id2 = settle_id(f.pay(8, &p2));
    f.ep.abandon(f.now(8), id2);
    f.ep.start_settlement(f.now(8), id2);
    assert_eq!(f.ep.poll_settle(), None);
}

#[test]
fn a_settlement_retried_past_valid_before_ends_unresolved() {
    let mut f = fixture();
    let p = f.payload();
    let (id, _) = f.admit(0, &p);
    let deadline = U0 + f.quote.max_timeout_seconds + f.ep.config().skew_secs;
    f.settle(0, id, SettleOutcome::Pending);
    let mut attempts = 0;
    let mut t = f.t0;
    while f.ep.is_settling(id) {
        t =
            f.ep.poll_timeout()
                .unwrap()
                .max(t + Duration::from_millis(100));
        assert!(t < f.now(300), "never resolved");
        f.ep.handle_timeout(t);
        for job in f.jobs() {
            assert_eq!(job.id, id);
            attempts += 1;
            assert_eq!(job.attempt, attempts);
            assert_eq!(job.request, Some(request(&p)));
            f.ep.handle_settled(t, id, unknown(), 0);
        }
    }
    // It ended on the first answer after validBefore + skew.
    assert!(f.ep.unix_now(t) > deadline);
    assert!(f.ep.unix_now(t) <= deadline + 2);
    assert!(attempts > 10, "retried until the deadline ({attempts})");
    assert_eq!(f.ep.stats().settling, 0);
    let r = refusal(f.ep.answer(&payment(&p)));
    assert_eq!(r.code, ErrorCode::SettlementUnknown);
    // Nothing more is asked of the facilitator.
    while t < f.now(300) {
        t = f.ep.poll_timeout().unwrap().max(t + Duration::from_secs(1));
        f.ep.handle_timeout(t);
        assert_eq!(f.ep.poll_settle(), None);
    }
    let unresolved: Vec<ServerEvent> = std::iter::from_fn(|| f.ep.poll_event())
        .filter(|e| matches!(e, ServerEvent::Unresolved { .. }))
        .collect();
    assert_eq!(unresolved.len(), 1);
    let ServerEvent::Unresolved { reason, .. } = &unresolved[0] else {
        unreachable!()
    };
    assert_eq!(reason, "no final answer before validBefore passed");
    assert_eq!(f.ep.slices("q"), 0);
    // Minutes later, after sweeps: the payer's retry still hears
    // settlement_unknown (never "invalid", which would let it sign again),
    // and the authorization stays claimed.
    let later = t + Duration::from_secs(600);
    f.ep.handle_timeout(later);
    let r = refusal(f.ep.handle_payment(later, &f.quote.clone(), payment(&p)));
    assert_eq!(r.code, ErrorCode::SettlementUnknown);
    assert_eq!(f.ep.stats().claims, 1);
}

/// A load that raced the outcome (a settling copy of the record) never
/// takes a final answer back: the payload stays credited, and a settling
/// copy of a refused record does not take its claim back either.
#[test]
fn a_stale_settling_copy_never_replaces_a_final_answer() {
    let mut f = fixture();
    let p = f.payload();
    let (id, _) = f.admit(0, &p);
    let stale = f.ep.export_record(&payment(&p).key).unwrap();
    assert!(stale.status.is_settling());
    f.settle(1, id, settled());
    f.ep.import_record(f.now(2), &payment(&p).key, stale.clone());
    assert!(
        matches!(f.pay(3, &p), PaymentDecision::Credited(_)),
        "the credited answer stays"
    );
    assert!(!f.ep.runs(&payment(&p).key), "nothing settling here");
    // A refused junk copy: a stale settling copy does not reclaim the authorization.
    let junk = junk_copy(&f.payload(), 1);
    let (jid, _) = f.admit(4, &junk);
    let stale = f.ep.export_record(&payment(&junk).key).unwrap();
    f.settle(5, jid, invalid());
    f.ep.import_record(f.now(6), &payment(&junk).key, stale);
    assert_eq!(refusal(f.pay(7, &junk)).code, ErrorCode::PaymentInvalid);
    assert_eq!(
        f.ep.stats().claims,
        1,
        "only the credited payment holds a claim"
    );
}
