//! A channel's renewals in-band on the socket: the voucher goes as a `voucher`
//! message; `voucher-accepted` confirms it; no verdict in time, or a refusal, sends the
//! same payload to the renew URL; a `voucher-needed` that claims more than was bought
//! stops the stream before anything is signed.

use std::time::{Duration, Instant};

use serde_json::json;
use x402_session::*;
use x402_types::*;

use crate::sim::{UNIX0, requirement};

const PRICE: u64 = 10_000;

fn batch_requirement() -> Requirement {
    let mut r = requirement();
    r.scheme = "batch-settlement".into();
    r.amount = Amount::from(PRICE);
    r.extra = Some(json!({"name": "USDC", "version": "2",
        "receiverAuthorizer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "withdrawDelay": 900}));
    r
}

struct Drive {
    c: ClientSession,
    now: Instant,
    transmits: Vec<Transmit>,
    events: Vec<ClientEvent>,
}

impl Drive {
    fn drain(&mut self) {
        while let Some(t) = self.c.poll_transmit() {
            self.transmits.push(t);
        }
        while let Some(e) = self.c.poll_event() {
            self.events.push(e);
        }
    }

    fn take_http(&mut self) -> (RequestId, Method, String, Vec<(String, String)>) {
        let i = self
            .transmits
            .iter()
            .position(|t| matches!(t, Transmit::Http { .. }))
            .expect("an HTTP request");
        match self.transmits.remove(i) {
            Transmit::Http {
                id,
                method,
                url,
                headers,
            } => (id, method, url, headers),
            _ => unreachable!(),
        }
    }

    fn pay(&mut self, slice: u64, tag: u8) -> String {
        let i = self
            .events
            .iter()
            .position(|e| matches!(e, ClientEvent::PaymentNeeded { slice: s, .. } if *s == slice))
            .expect("a payment asked for");
        let ClientEvent::PaymentNeeded { offer, .. } = self.events.remove(i) else {
            unreachable!()
        };
        assert_eq!(offer.requirement().scheme, "batch-settlement");
        let Offer::V2 { accepted, resource } = offer else {
            panic!("v2")
        };
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "voucher".into());
        body.insert("tag".into(), tag.into());
        let payload = PaymentPayload::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource,
            accepted,
            payload: SchemePayload::Other(body),
            extensions: None,
        });
        let header = payload.to_header();
        self.c.handle_payment(self.now, slice, payload).unwrap();
        self.drain();
        header
    }

    fn message(&mut self, conn: ConnId, m: ServerMessage) {
        self.c
            .handle_ws_message(self.now, conn, &m.to_json())
            .unwrap();
        self.drain();
    }

    fn advance(&mut self, to: Instant) {
        while let Some(t) = self.c.poll_timeout().filter(|t| *t <= to) {
            self.now = t;
            self.c.handle_timeout(t).unwrap();
            self.drain();
        }
        self.now = to;
    }
}

/// Opens a channel-paying session up to its second payment being signed.
fn to_second_voucher() -> (Drive, ConnId, String) {
    let t0 = Instant::now();
    let mut cfg = ClientConfig::new("https://x402.test", PathVersion::V2, "btc");
    cfg.scheme = "batch-settlement".into();
    let mut d = Drive {
        c: ClientSession::new(cfg, t0, UNIX0).unwrap(),
        now: t0,
        transmits: vec![],
        events: vec![],
    };
    d.c.open(t0).unwrap();
    d.drain();
    let (id, _, _, _) = d.take_http();
    let exact = requirement();
    let schema = Schema {
        protocol: "ws402".into(),
        version: PathVersion::V2,
        websocket_endpoint: "wss://x402.test/v2/stream/btc?t=tok".into(),
        pricing: Pricing {
            price_per_second: 0.0,
            currency: "USDC".into(),
            estimated_duration: 20,
            price_per_minute: None,
            price_per_slice: None,
        },
        payment_details: PaymentDetails {
            scheme: exact.scheme.clone(),
            network: exact.network.clone(),
            asset: exact.asset.clone(),
            pay_to: exact.pay_to.clone(),
            max_amount_required: Amount::from(PRICE),
            max_timeout_seconds: exact.max_timeout_seconds,
            extra: exact.extra.clone(),
        },
        stream: StreamInfo {
            id: "btc".into(),
            title: "BTC".into(),
            description: "d".into(),
        },
        x402_version: None,
        error: None,
        accepts: None,
    };
    let mut exact_at_price = exact.clone();
    exact_at_price.amount = Amount::from(PRICE);
    let required = PaymentRequiredV2 {
        x402_version: 2,
        error: None,
        resource: None,
        accepts: vec![
            PreservedRequirement::new(exact_at_price.to_v2()),
            PreservedRequirement::new(batch_requirement().to_v2()),
        ],
        extensions: None,
    };
    d.c.handle_http_response(
        t0,
        id,
        HttpResponse {
            status: 402,
            headers: vec![("PAYMENT-REQUIRED".into(), required.to_header())],
            body: schema.to_json().into_bytes(),
        },
    )
    .unwrap();
    d.drain();
    d.pay(1, 1);
    let conn = match d.transmits.remove(0) {
        Transmit::WsConnect { conn, .. } => conn,
        other => panic!("expected the upgrade, got {other:?}"),
    };
    d.c.handle_ws_upgrade(
        t0,
        conn,
        Ok(HttpResponse {
            status: 101,
            headers: vec![],
            body: vec![],
        }),
    )
    .unwrap();
    d.drain();
    d.message(
        conn,
        ServerMessage::Hello(Hello {
            session_id: "s1".into(),
            stream_id: "btc".into(),
            version: PathVersion::V2,
            slice_seconds: 20,
            expires_at: UNIX0 + 20,
            server_time: UNIX0,
            renew_url: "https://x402.test/v2/renew/btc?t=tok".into(),
            resumed: false,
            next_seq: 0,
        }),
    );
    d.transmits.clear();
    // The renewal falls due before the end of paid time: the second voucher.
    d.advance(t0 + Duration::from_secs(19));
    let header = d.pay(2, 2);
    (d, conn, header)
}

fn sent_in_band(d: &mut Drive, header: &str) -> bool {
    d.transmits.iter().any(|t| {
        matches!(t, Transmit::WsSend { text, .. }
        if ClientMessage::parse(text) == ClientMessage::Voucher { payment: header.to_string() })
    })
}

#[test]
fn the_voucher_goes_in_band_and_is_confirmed_there() {
    let (mut d, conn, header) = to_second_voucher();
    assert!(sent_in_band(&mut d, &header), "{:?}", d.transmits);
    assert!(
        !d.transmits
            .iter()
            .any(|t| matches!(t, Transmit::Http { .. }))
    );
    d.message(
        conn,
        ServerMessage::VoucherAccepted {
            expires_at: UNIX0 + 40,
            slices: 2,
            receipt: None,
        },
    );
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::PaymentAccepted { slice: 2, .. }))
    );
    assert_eq!(d.c.stats().slices, 2);
    assert_eq!(d.c.stats().in_band_payments, 1);
    // No verdict wait is left over: nothing goes to the renew URL later.
    let later = d.now + Duration::from_secs(5);
    d.advance(later);
    assert!(
        !d.transmits
            .iter()
            .any(|t| matches!(t, Transmit::Http { .. }))
    );
}

#[test]
fn without_a_verdict_the_same_payload_goes_to_the_renew_url() {
    let (mut d, _conn, header) = to_second_voucher();
    assert!(sent_in_band(&mut d, &header));
    let later = d.now + Duration::from_secs(4);
    d.advance(later);
    let (_, method, url, headers) = d.take_http();
    assert_eq!(method, Method::Post);
    assert!(url.contains("/v2/renew/btc"), "{url}");
    assert!(headers.iter().any(|(_, v)| *v == header), "the same bytes");
    assert_eq!(d.c.stats().renew_retries, 1);
}

#[test]
fn a_refusal_in_band_sends_the_same_payload_to_the_renew_url_at_once() {
    let (mut d, conn, header) = to_second_voucher();
    d.message(
        conn,
        ServerMessage::VoucherRefused {
            status: 402,
            code: ErrorCode::PaymentInvalid,
            message: "no".into(),
        },
    );
    let (_, _, _, headers) = d.take_http();
    assert!(headers.iter().any(|(_, v)| *v == header));
}

#[test]
fn a_server_asking_more_than_one_slice_ahead_is_stopped() {
    let (mut d, conn, _) = to_second_voucher();
    d.message(
        conn,
        ServerMessage::VoucherAccepted {
            expires_at: UNIX0 + 40,
            slices: 2,
            receipt: None,
        },
    );
    // One slice ahead is fine (a reused channel's total may be anything)...
    d.message(
        conn,
        ServerMessage::VoucherNeeded {
            channel_id: format!("0x{}", "11".repeat(32)),
            charged_cumulative_amount: "90000".into(),
            max_claimable_amount: "100000".into(),
            expires_at: UNIX0 + 40,
        },
    );
    assert!(!d.c.is_ended());
    // ... two slices ahead is not: stopped, nothing signed.
    d.message(
        conn,
        ServerMessage::VoucherNeeded {
            channel_id: format!("0x{}", "11".repeat(32)),
            charged_cumulative_amount: "90000".into(),
            max_claimable_amount: "110000".into(),
            expires_at: UNIX0 + 40,
        },
    );
    assert!(d.c.is_ended());
    assert!(d.events.iter().any(|e| matches!(e,
        ClientEvent::Ended(EndReason::ProtocolViolation(m)) if m.contains("110000"))));
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::PaymentNeeded { slice: 3, .. }))
    );
}
