//! The socket's liveness, a session rule on virtual time: a keep-alive ping
//! every 15 s while a socket is open, and a peer silent for 45 s (a
//! half-open socket) counted as lost: closed, and reconnected without a
//! payment while paid time remains.

use std::time::{Duration, Instant};

use x402_session::{
    ClientConfig, ClientSession, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE, UsageError,
};
use x402_types::PathVersion;

use crate::sim::{self, Faults, Sim, SimConfig};

fn sim(slice_seconds: u64, publish_every: Duration) -> Sim {
    Sim::new(SimConfig {
        slice_seconds,
        publish_every,
        faults: Faults {
            latency_ms: 10,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn assert_transcript(s: &Sim, expected: &[&str]) {
    let got: Vec<String> = s.transcript.iter().map(|l| l.trim().to_string()).collect();
    assert_eq!(got, expected, "\n--- got ---\n{}\n", got.join("\n"));
}

#[test]
fn the_defaults_are_15_and_45_seconds() {
    let cfg = ClientConfig::new("https://x402.test", PathVersion::V2, "btc");
    assert_eq!(cfg.keep_alive, Duration::from_secs(15));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(45));
    assert_eq!(
        (DEFAULT_KEEP_ALIVE, DEFAULT_IDLE_TIMEOUT),
        (cfg.keep_alive, cfg.idle_timeout)
    );
}

#[test]
fn a_keep_alive_that_cannot_keep_the_socket_alive_is_refused() {
    let now = Instant::now();
    for (keep_alive, idle) in [(0, 45), (45, 45), (60, 45)] {
        let mut cfg = ClientConfig::new("https://x402.test", PathVersion::V2, "btc");
        cfg.keep_alive = Duration::from_secs(keep_alive);
        cfg.idle_timeout = Duration::from_secs(idle);
        assert!(
            matches!(
                ClientSession::new(cfg, now, sim::UNIX0),
                Err(UsageError::Config(_))
            ),
            "keep_alive {keep_alive} s, idle_timeout {idle} s"
        );
    }
}

/// A stream that publishes nothing: the socket stays open on the pings
/// alone (each answered `pong`), one every 15 s from the upgrade, on the
/// one socket, and nothing is reconnected or paid twice.
#[test]
fn a_quiet_socket_is_pinged_every_15_s_and_kept() {
    let mut s = sim(60, Duration::from_secs(3_600));
    s.start();
    let t = s.at(300);
    s.run_until(t);
    s.check_invariants();
    assert!(s.ended.is_none(), "{:?}", s.ended);
    assert!(s.received.is_empty(), "the stream published nothing");
    // The upgrade completed at 40 ms (10 ms each way: schema, then upgrade).
    let up = s.t0 + Duration::from_millis(40);
    let expected: Vec<Instant> = (1..=19).map(|k| up + Duration::from_secs(15 * k)).collect();
    let at: Vec<Instant> = s.pings.iter().map(|p| p.0).collect();
    assert_eq!(at, expected, "one ping every 15 s, from the upgrade on");
    assert!(s.pings.iter().all(|p| p.1 == s.pings[0].1), "one socket");
    assert_eq!(
        s.client.stats().reconnects,
        0,
        "pongs keep the socket heard"
    );
    assert!(s.signatures.values().all(|&n| n == 1), "{:?}", s.signatures);
}

/// The socket goes half-open 5.5 s in: nothing more reaches the client, not
/// even `pong`. 45 s after the last frame heard (the event of 5.0 s, heard at
/// 5.010) the client closes it and reconnects after the first backoff,
/// resuming the paid session from the next event without a payment (paid
/// time runs to 120 s).
#[test]
fn a_silent_peer_is_given_up_after_45_s_and_resumed_without_paying() {
    let mut s = sim(120, Duration::from_secs(1));
    s.start();
    let t = s.t0 + Duration::from_millis(5_500);
    s.run_until(t);
    s.silence();
    let t = s.at(60);
    s.run_until(t);
    s.stop();
    s.check_invariants();
    assert_transcript(
        &s,
        &[
            "0.000 T http Get /v2/schema/btc",
            "0.020 E PaymentNeeded slice=1 -> signed",
            "0.020 T ws-connect +payment",
            "0.040 E PaymentAccepted slice=1",
            "0.040 E Hello slice=120s resumed=false nextSeq=0",
            "5.500 ! silent",
            "50.010 T ws-close 1000",
            "50.010 E Reconnecting attempt=1",
            "50.149 T ws-connect from=5",
            "50.169 E Hello slice=120s resumed=true nextSeq=5",
            "50.169 E Resumed missed=0",
            "60.000 T ws-close 1000",
            "60.000 E Ended Stopped",
        ],
    );
    // Unanswered pings at 15, 30 and 45 s on the silent socket; the new
    // socket's first is due 15 s after its upgrade (65.169 s, after the end).
    let first = s.pings[0].1;
    let on_first: Vec<u64> = s
        .pings
        .iter()
        .filter(|p| p.1 == first)
        .map(|p| p.0.duration_since(s.t0).as_millis() as u64)
        .collect();
    assert_eq!(on_first, vec![15_040, 30_040, 45_040]);
    assert!(s.pings.iter().all(|p| p.1 == first), "{:?}", s.pings);
    // Paid once; every event delivered once, in order, the silent stretch
    // replayed on the new socket.
    assert_eq!(s.signatures.len(), 1);
    assert_eq!(s.server.endpoint.slices("s1"), 1);
    assert_eq!(s.received, (0..59).collect::<Vec<_>>());
}
