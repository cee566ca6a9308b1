//! Golden transcripts: the exact sequence of transmits and events of the main scenarios.
//! `T` lines are transmits, `E` lines events, `!` lines what the simulated network did.

use x402_types::PathVersion;

use crate::sim::{self, Faults, Sim, SimConfig};

/// A fault injected at a time (ms).
type Mid = (u64, fn(&mut Sim));

fn run(cfg: SimConfig, secs: u64, setup: impl FnOnce(&mut Sim), mid: Option<Mid>) -> Sim {
    let mut s = Sim::new(SimConfig {
        faults: Faults {
            latency_ms: 10,
            ..Default::default()
        },
        ..cfg
    });
    setup(&mut s);
    s.start();
    if let Some((at_ms, f)) = mid {
        let t = s.t0 + std::time::Duration::from_millis(at_ms);
        s.run_until(t);
        f(&mut s);
    }
    let t = s.at(secs);
    s.run_until(t);
    if s.ended.is_none() {
        s.stop();
    }
    s.check_invariants();
    s
}

fn assert_transcript(s: &Sim, expected: &[&str]) {
    let got: Vec<String> = s.transcript.iter().map(|l| l.trim().to_string()).collect();
    assert_eq!(got, expected, "\n--- got ---\n{}\n", got.join("\n"));
}

#[test]
fn open_and_stream() {
    let s = run(SimConfig::default(), 8, |_| {}, None);
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "8.000 T ws-close 1000",
            "8.000 E Ended Stopped",
        ],
    );
    assert_eq!(s.received, (0..7).collect::<Vec<_>>());
}

#[test]
fn renew_three_times() {
    let s = run(SimConfig::default(), 60, |_| {}, None);
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "11.040 E PaymentNeeded slice=2 -> signed",
            "11.040 T http Post /v2/renew/btc +payment",
            "11.060 E PaymentAccepted slice=2",
            "11.060 E Renewed slices=2",
            "31.040 E PaymentNeeded slice=3 -> signed",
            "31.040 T http Post /v2/renew/btc +payment",
            "31.060 E PaymentAccepted slice=3",
            "31.060 E Renewed slices=3",
            "51.040 E PaymentNeeded slice=4 -> signed",
            "51.040 T http Post /v2/renew/btc +payment",
            "51.060 E PaymentAccepted slice=4",
            "51.060 E Renewed slices=4",
            "60.000 T ws-close 1000",
            "60.000 E Ended Stopped",
        ],
    );
    assert_eq!(s.server.endpoint.slices("s1"), 4);
    assert_eq!(s.received.len(), 59);
}

#[test]
fn renewal_timeout_then_retry_with_the_same_payload() {
    // The renew answer is lost and the socket drops before `renewed` arrives:
    // only a retry can tell the client, and it must carry the same payload.
    let s = run(
        SimConfig::default(),
        25,
        |s| s.server.drop_renew_answers = 1,
        Some((11_045, |s: &mut Sim| s.cut())),
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "11.040 E PaymentNeeded slice=2 -> signed",
            "11.040 T http Post /v2/renew/btc +payment",
            "11.045 ! cut",
            "11.050 ! renew answer lost",
            "11.055 ! closed None",
            "11.055 E Reconnecting attempt=1",
            "11.194 T ws-connect from=11",
            "11.214 E Hello slice=20s resumed=true nextSeq=11",
            "11.214 E Resumed missed=0",
            "16.040 ! http timeout",
            "16.142 T http Post /v2/renew/btc +payment",
            "16.162 E PaymentAccepted slice=2",
            "16.162 E Renewed slices=2",
            "25.000 T ws-close 1000",
            "25.000 E Ended Stopped",
        ],
    );
    // One signature for slice 2, one extension, the same nonce twice.
    assert_eq!(s.signatures.get(&2), Some(&1));
    assert_eq!(s.server.endpoint.slices("s1"), 2);
    assert_eq!(s.server.nonces.len(), 2);
    assert_eq!(s.client.stats().renew_retries, 1);
}

#[test]
fn drop_and_resume_without_payment() {
    let s = run(
        SimConfig::default(),
        16,
        |_| {},
        Some((5_000, |s: &mut Sim| s.cut())),
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "5.000 ! cut",
            "5.010 ! closed None",
            "5.010 E Reconnecting attempt=1",
            "5.149 T ws-connect from=5",
            "5.169 E Hello slice=20s resumed=true nextSeq=5",
            "5.169 E Resumed missed=0",
            "11.169 E PaymentNeeded slice=2 -> signed",
            "11.169 T http Post /v2/renew/btc +payment",
            "11.189 E PaymentAccepted slice=2",
            "11.189 E Renewed slices=2",
            "16.000 T ws-close 1000",
            "16.000 E Ended Stopped",
        ],
    );
    // Every event arrived exactly once despite the drop.
    assert_eq!(s.received, (0..15).collect::<Vec<_>>());
}

#[test]
fn expiry_without_renewal() {
    let s = run(
        SimConfig::default(),
        40,
        |s| s.decline_after = Some(1),
        None,
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "11.040 E PaymentNeeded slice=2 -> declined",
            "13.380 E Expiring",
            "20.040 T ws-close 1000",
            "20.040 E Expired",
            r#"20.040 E Ended PaymentDeclined { message: "declined by test", policy: true }"#,
        ],
    );
    assert_eq!(s.server.endpoint.slices("s1"), 1);
}

#[test]
fn budget_refusal_ends_cleanly() {
    let s = run(
        SimConfig {
            budget_slices: 2,
            ..Default::default()
        },
        80,
        |_| {},
        None,
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "11.040 E PaymentNeeded slice=2 -> signed",
            "11.040 T http Post /v2/renew/btc +payment",
            "11.060 E PaymentAccepted slice=2",
            "11.060 E Renewed slices=2",
            "31.040 E PaymentNeeded slice=3 -> declined",
            "33.380 E Expiring",
            "40.040 T ws-close 1000",
            "40.040 E Expired",
            r#"40.040 E Ended PaymentDeclined { message: "Lifetime budget 2000 has 2000 spent and 0 reserved; 1000 more would exceed it by 1000", policy: true }"#,
        ],
    );
    assert_eq!(s.server.credited, x402_types::Amount::from(2 * sim::PRICE));
}

#[test]
fn version_mismatch_is_refused_before_paying() {
    let s = run(
        SimConfig::default(),
        5,
        |s| s.server.ws_version_override = Some(PathVersion::V1),
        None,
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            r#"0.020 E Ended ProtocolViolation("version mismatch in wss://x402.test/v1/stream/btc?t=tok: expected v2, found v1")"#,
        ],
    );
    assert!(s.signatures.is_empty());
}

#[test]
fn v1_open_and_renew() {
    let s = run(
        SimConfig {
            version: PathVersion::V1,
            ..Default::default()
        },
        15,
        |_| {},
        None,
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v1/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=20s resumed=false nextSeq=0",
            "11.040 E PaymentNeeded slice=2 -> signed",
            "11.040 T http Post /v1/renew/btc +payment",
            "11.060 E PaymentAccepted slice=2",
            "11.060 E Renewed slices=2",
            "15.000 T ws-close 1000",
            "15.000 E Ended Stopped",
        ],
    );
}

#[test]
fn slow_facilitator_answers_pending_and_the_retry_is_credited_once() {
    // The facilitator takes 3 s, the server waits 2 s: the client is told
    // "pending", retries the same payload, and is credited once.
    let s = run(
        SimConfig::default(),
        8,
        |s| s.server.settle_delay = std::time::Duration::from_secs(3),
        None,
    );
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "2.040 E PaymentPending slice=1",
            "4.040 T ws-connect +payment",
            "4.060 E PaymentAccepted slice=1",
            "4.060 E Hello slice=20s resumed=false nextSeq=3",
            "8.000 T ws-close 1000",
            "8.000 E Ended Stopped",
        ],
    );
    assert_eq!(s.server.endpoint.slices("s1"), 1);
    assert_eq!(s.signatures.get(&1), Some(&1));
    assert_eq!(s.server.credited, s.server.settled);
}

#[test]
fn settlement_pending_is_retried_until_final() {
    let s = run(
        SimConfig::default(),
        8,
        |s| s.server.pending_first = 1,
        None,
    );
    assert_eq!(s.server.endpoint.slices("s1"), 1);
    assert_eq!(
        s.signatures.get(&1),
        Some(&1),
        "one signature for the slice"
    );
    assert_eq!(s.server.credited, s.server.settled);
    assert!(
        s.transcript
            .iter()
            .any(|l| l.contains("PaymentAccepted slice=1"))
    );
}

#[test]
fn a_server_that_refuses_and_settles_anyway_cannot_collect_past_the_budget() {
    // Budget of one slice. The server takes the money and answers "invalid":
    // the refused authorization stays counted, so no second one is signed.
    let s = run(
        SimConfig {
            budget_slices: 1,
            ..SimConfig::default()
        },
        30,
        |s| s.server.settle_and_refuse = true,
        None,
    );
    let signed: u32 = s.signatures.values().sum();
    assert_eq!(
        signed, 1,
        "the refused authorization still counts against the budget"
    );
    assert_eq!(s.server.settled, x402_types::Amount::from(sim::PRICE));
    assert_eq!(
        s.server.endpoint.slices("s1"),
        0,
        "nothing was ever credited"
    );
    assert!(
        matches!(
            s.ended,
            Some(x402_session::EndReason::PaymentDeclined { policy: true, .. })
        ),
        "{:?}",
        s.ended
    );
}
