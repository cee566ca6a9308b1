//! Metered sessions (bought from a `batch-settlement` channel): paid time runs
//! only while the socket is open; a close cuts it and reports what goes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use x402_session::channel::Meter;
use x402_session::*;
use x402_types::ErrorCode;

use crate::sim;

const HEAD: StreamHead = StreamHead {
    next_seq: 0,
    oldest_seq: 0,
};

struct Rig {
    t0: Instant,
    ep: ServerEndpoint,
    quote: Quote,
    payer: x402_payer::EvmExactPayer,
}

fn rig() -> Rig {
    let t0 = Instant::now();
    Rig {
        t0,
        ep: ServerEndpoint::new(EndpointConfig::default(), t0, sim::UNIX0),
        quote: sim::quote(),
        payer: sim::payer(Arc::new(std::sync::atomic::AtomicU64::new(sim::UNIX0)), 5),
    }
}

impl Rig {
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Pays one slice at `ms` drawing on `account` (`None`: exact) and settles it.
    fn buy(&mut self, ms: u64, account: Option<&str>) -> PaymentDecision {
        let mut p = PaymentIn::from_payload(&self.payer.sign(&sim::offer()).unwrap()).unwrap();
        p.account = account.map(str::to_string);
        let q = self.quote.clone();
        let d = self.ep.handle_payment(self.at(ms), &q, p);
        if let PaymentDecision::Settle(id) = d {
            self.ep.handle_settled(
                self.at(ms),
                id,
                SettleOutcome::Settled {
                    header: None,
                    payer: None,
                    amount: None,
                },
                0,
            );
        }
        d
    }

    fn stops(&mut self) -> Vec<(String, u64, u64, u64)> {
        std::iter::from_fn(|| self.ep.poll_event())
            .filter_map(|e| match e {
                ServerEvent::MeterStopped {
                    account,
                    unused_ms,
                    at_ms,
                    connection,
                    ..
                } => Some((account, unused_ms, at_ms, connection)),
                _ => None,
            })
            .collect()
    }

    /// What a driver does with a stop: the cut on the (shared) state, imported back.
    fn cut(&mut self, at_ms: u64, now: u64) -> SessionState {
        let mut st = self.ep.export_session("q").unwrap();
        st.stop_meter(at_ms);
        let q = self.quote.clone();
        self.ep
            .import_session(self.at(now), "q", Some(&q), st.clone());
        st
    }
}

#[test]
fn a_closed_socket_stops_a_metered_session_and_reports_the_unused_time() {
    let mut r = rig();
    assert!(matches!(r.buy(0, Some("ch")), PaymentDecision::Settle(_)));
    let q = r.quote.clone();
    r.ep.connect(r.at(0), &q, ConnId(1), None, HEAD).unwrap();
    r.ep.disconnect(r.at(3_500), ConnId(1));
    let stops = r.stops();
    let at = sim::UNIX0 * 1000 + 3_500;
    assert_eq!(stops, vec![("ch".to_string(), 6_500, at, 1)]);
    // The core reports; the cut is the driver's, on the shared state.
    assert!(r.ep.check_connect(r.at(3_550), &q).is_ok());
    let state = r.cut(at, 3_600);
    // Paid time ended at the close: no resume on time that went back.
    let refused = r.ep.check_connect(r.at(3_600), &q).unwrap_err();
    assert_eq!(refused.code, ErrorCode::PaymentRequired);
    assert_eq!((state.returned_ms, state.delivered_ms(10)), (6_500, 3_500));
    // 1000 per 10 s, per started second: 4 s delivered cost 400; 600 goes back.
    let meter = Meter::new(1_000, 10, 1);
    assert_eq!(state.meter_return(6_500, 10, &meter), 600);
    // Closing again reports nothing more, and a second cut gives nothing.
    r.ep.disconnect(r.at(4_000), ConnId(1));
    assert!(r.stops().is_empty());
    let mut again = r.ep.export_session("q").unwrap();
    assert_eq!(again.stop_meter(at + 500), 0);
}

#[test]
fn an_exact_session_keeps_its_paid_time_when_the_socket_closes() {
    let mut r = rig();
    r.buy(0, None);
    let q = r.quote.clone();
    r.ep.connect(r.at(0), &q, ConnId(1), None, HEAD).unwrap();
    r.ep.disconnect(r.at(3_500), ConnId(1));
    assert!(r.stops().is_empty());
    assert!(r.ep.check_connect(r.at(4_000), &q).is_ok());
}

#[test]
fn a_session_is_paid_from_one_place() {
    let mut r = rig();
    r.buy(0, Some("ch"));
    let exact = r.buy(1_000, None);
    assert!(
        matches!(&exact, PaymentDecision::Refused(f) if f.code == ErrorCode::PaymentInvalid),
        "{exact:?}"
    );
    let other = r.buy(1_000, Some("another"));
    assert!(matches!(other, PaymentDecision::Refused(_)), "{other:?}");
    // The same channel pays on.
    assert!(matches!(
        r.buy(1_000, Some("ch")),
        PaymentDecision::Settle(_)
    ));
}

#[test]
fn an_older_copy_of_a_cut_session_never_restores_its_time() {
    let mut r = rig();
    r.buy(0, Some("ch"));
    let q = r.quote.clone();
    let before = r.ep.export_session("q").unwrap();
    r.ep.connect(r.at(0), &q, ConnId(1), None, HEAD).unwrap();
    r.ep.disconnect(r.at(2_000), ConnId(1));
    r.cut(sim::UNIX0 * 1000 + 2_000, 2_050);
    // A load from before the cut arrives late.
    r.ep.import_session(r.at(2_100), "q", Some(&q), before);
    assert!(r.ep.check_connect(r.at(2_200), &q).is_err());
}

proptest! {
    /// However a metered session's slices are cut, the returns plus the final
    /// charge add up to exactly what was credited, and the final charge is the
    /// meter of the delivered time, rounded once.
    #[test]
    fn returns_and_charge_add_up(
        price in 1u128..1_000_000,
        granule in 1u64..10,
        granules in 1u64..30,
        cuts in proptest::collection::vec(0u64..300_000, 1..8),
    ) {
        // A granule divides the slice (the server's configuration insists).
        let slice = granule * granules;
        let meter = Meter::new(price, slice, granule);
        let mut st = SessionState::default();
        let mut returned = 0u128;
        let mut now = 1_000_000u64;
        for (i, used) in cuts.iter().enumerate() {
            let key = PaymentKey::from_stored(format!("k{i}"));
            st.credit(&key, Some("ch"), now, slice, 0);
            let used = used % (slice * 1000 + 1);
            now += used;
            let unused = st.stop_meter(now);
            prop_assert_eq!(unused, slice * 1000 - used);
            returned += st.meter_return(unused, slice, &meter);
        }
        let credited = price * cuts.len() as u128;
        let charge = meter.charge_ms(st.delivered_ms(slice));
        prop_assert_eq!(returned + charge, credited);
        prop_assert!(charge <= credited);
    }
}
