//! The drain contract and API misuse are typed errors; margins follow the protocol.

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
fn debug_output_never_shows_a_spendable_payment() {
    use x402_payer::{EvmExactPayer, LocalSigner};
    let now = Instant::now();
    let mut s = ClientSession::new(
        ClientConfig::new("https://h.example", PathVersion::V2, "s"),
        now,
        1_750_000_000,
    )
    .unwrap();
    s.open(now).unwrap();
    let Some(Transmit::Http { id, .. }) = s.poll_transmit() else {
        panic!()
    };
    let schema = r#"{"protocol":"ws402","version":"2","websocketEndpoint":"wss://h.example/v2/stream/s?t=tok","pricing":{"pricePerSecond":0.001,"currency":"USDC","estimatedDuration":4},"paymentDetails":{"scheme":"exact","network":"base-sepolia","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxAmountRequired":"1000","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}},"stream":{"id":"s","title":"","description":""}}"#;
    s.handle_http_response(
        now,
        id,
        HttpResponse {
            status: 402,
            headers: vec![],
            body: schema.as_bytes().to_vec(),
        },
    )
    .unwrap();
    let Some(ClientEvent::PaymentNeeded { slice, offer }) = s.poll_event() else {
        panic!()
    };
    let payer = EvmExactPayer::new(LocalSigner::from_hex(atomicstream_testkit::DEV_KEY).unwrap());
    let payload = payer.sign(&offer).unwrap();
    let header = payload.to_header();
    s.handle_payment(now, slice, payload).unwrap();
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains(&header),
        "the payment header leaks through Debug"
    );
    assert!(dbg.contains("<redacted>"));
    // The header does go out where it must: on the upgrade.
    let Some(Transmit::WsConnect { headers, .. }) = s.poll_transmit() else {
        panic!()
    };
    assert_eq!(headers[0].1, header);
}
