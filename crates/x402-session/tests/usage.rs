//! The drain contract and API misuse are typed errors; margins follow the protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use x402_session::*;
use x402_types::PathVersion;

#[test]
fn inputs_before_draining_are_refused() {
    let now = Instant::now();
    let mut s = ClientSession::new(
        ClientConfig::new("https://h.example", PathVersion::V2, "btc"),
        now,
        1_000,
    )
    .unwrap();
    s.open(now).unwrap();
    // The schema request is still queued.
    assert_eq!(
        s.stop(now),
        Err(UsageError::NotDrained {
            transmits: 1,
            events: 0
        })
    );
    let _ = s.poll_transmit().unwrap();
    assert_eq!(s.open(now), Err(UsageError::AlreadyOpen));
    // A payment nobody asked for.
    assert!(matches!(
        s.handle_payment_declined(now, 1, "x".into(), true),
        Err(UsageError::UnexpectedPayment { slice: 1 })
    ));
    s.stop(now).unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(ClientEvent::Ended(EndReason::Stopped))
    ));
    assert!(s.is_ended());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn bad_config_is_an_error() {
    let now = Instant::now();
    assert!(matches!(
        ClientSession::new(ClientConfig::new("not a url", PathVersion::V1, "x"), now, 0),
        Err(UsageError::Config(_))
    ));
}

#[test]
fn renew_margin_rule() {
    // 20% of the slice, clamped to 10..60 s, never more than half the slice.
    assert_eq!(default_renew_margin(300), Duration::from_secs(60));
    assert_eq!(default_renew_margin(100), Duration::from_secs(20));
    assert_eq!(default_renew_margin(30), Duration::from_secs(10));
    assert_eq!(default_renew_margin(4), Duration::from_secs(2));
    assert_eq!(default_renew_margin(1000), Duration::from_secs(60));
}

#[test]
fn garbage_from_the_server_ends_with_a_protocol_violation() {
    let now = Instant::now();
    for body in [&b"not json"[..], b"{}", b"[]", br#"{"protocol":"ws402"}"#] {
        let mut s = ClientSession::new(
            ClientConfig::new("https://h.example", PathVersion::V2, "btc"),
            now,
            1_000,
        )
        .unwrap();
        s.open(now).unwrap();
        let Some(Transmit::Http { id, .. }) = s.poll_transmit() else {
            panic!()
        };
        s.handle_http_response(
            now,
            id,
            HttpResponse {
                status: 402,
                headers: vec![],
                body: body.to_vec(),
            },
        )
        .unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(ClientEvent::Ended(EndReason::ProtocolViolation(_)))
        ));
    }
}

#[test]
fn server_session_rules() {
    use std::sync::Arc;
    use x402_types::{CloseCode, ServerMessage};
    let (t0, u0) = (Instant::now(), 1_000_000);
    let check: TokenCheck = Arc::new(|t: &str| {
        if t == "good" {
            Ok(())
        } else {
            Err("bad mac".into())
        }
    });
    let mut s = ServerSession::new(
        ServerConfig::new(
            "s",
            PathVersion::V2,
            10,
            "https://h/v2/renew/s?t=good",
            check,
        ),
        "q",
        t0,
        u0,
    );
    // Token checked by the server's function; no paid time: payment required.
    assert!(matches!(
        s.connect(t0, ConnId(1), "forged", 0),
        Err(Refusal::TokenInvalid(_))
    ));
    assert_eq!(
        s.connect(t0, ConnId(1), "good", 0),
        Err(Refusal::PaymentRequired)
    );
    // One payment, one slice; the same payload again is answered with the first result.
    assert_eq!(s.begin_payment(t0, "p1"), Ok(PaymentStart::Proceed));
    assert_eq!(s.begin_payment(t0, "p1"), Err(Refusal::InFlight));
    let r1 = s.complete_payment(t0, "p1");
    assert_eq!((r1.slices, r1.expires_at), (1, u0 + 10));
    assert_eq!(
        s.begin_payment(t0, "p1"),
        Ok(PaymentStart::Duplicate(r1.clone()))
    );
    // Horizon of two slices: a second is fine, a third is refused before any money moves.
    assert_eq!(s.begin_payment(t0, "p2"), Ok(PaymentStart::Proceed));
    assert_eq!(
        s.complete_payment(t0, "p2").expires_at,
        u0 + 20,
        "extends from the current end"
    );
    assert_eq!(
        s.begin_payment(t0, "p3"),
        Err(Refusal::HorizonExceeded { slices: 2 })
    );
    // Connect; a second socket supersedes the first with 4409.
    let h = s.connect(t0, ConnId(1), "good", 5).unwrap();
    assert_eq!((h.slice_seconds, h.next_seq, h.resumed), (10, 5, false));
    assert!(s.connect(t0, ConnId(2), "good", 5).unwrap().resumed);
    assert_eq!(
        s.poll_transmit(),
        Some(ServerTransmit::Close {
            conn: ConnId(1),
            code: CloseCode::Superseded
        })
    );
    assert!(!s.can_deliver(t0, ConnId(1)));
    assert!(s.can_deliver(t0, ConnId(2)));
    // Timers: expiring, expired at the end, then 4402 after the 5 s grace.
    let end = t0 + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(t) = s.poll_timeout() {
        if t > end + Duration::from_secs(10) {
            break;
        }
        s.handle_timeout(t);
        while let Some(x) = s.poll_transmit() {
            seen.push((t, x));
        }
        if s.connection().is_none() {
            break;
        }
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|(_, x)| match x {
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
        })
        .collect();
    assert_eq!(kinds, ["expiring", "expired", "close 4402"]);
    assert_eq!(seen[1].0, end);
    assert_eq!(seen[2].0, end + Duration::from_secs(5));
    assert!(!s.can_deliver(end, ConnId(2)));
}
