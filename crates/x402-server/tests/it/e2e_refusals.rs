//! End to end on real sockets: refused payments and attacks credit nothing
//! and leave nothing behind (bad payments, forged and swapped tokens, replayed
//! nonces, unpaid events, resets before the 101, leaked secrets, races, rate
//! limits).

use std::time::Duration;

use x402_server::{Config, Limits, ServerBuilder};
use x402_types::{
    Amount, ErrorBody, ErrorCode, PathVersion, PaymentPayload, Requirement, ServerMessage,
};

use crate::harness::{
    close_code, dev_payer, error_of, next_event_seq, next_msg, quote_v2, renew_url, start,
    start_with, stream,
};

#[tokio::test]
async fn refusals_credit_nothing() {
    let t = start().await;
    for v in [PathVersion::V1, PathVersion::V2] {
        let q = t.schema(v, "s").await;
        let url = q.schema.websocket_endpoint.clone();
        let hdr = v.payment_header();
        let refuse = |status: u16, code: ErrorCode| {
            move |(s, b): (u16, ErrorBody)| {
                assert_eq!((s, b.error), (status, code), "{}", b.message);
            }
        };
        // Missing payment.
        refuse(402, ErrorCode::PaymentRequired)(error_of(t.connect(&url, None).await.unwrap_err()));
        // Bad signature: flip a byte of r.
        let good = t.payer.sign(&q.offer).unwrap();
        let mut bad = good.clone();
        match &mut bad {
            PaymentPayload::V1(p) => {
                if let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload {
                    e.signature.0[5] ^= 1;
                }
            }
            PaymentPayload::V2(p) => {
                if let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload {
                    e.signature.0[5] ^= 1;
                }
            }
        }
        refuse(402, ErrorCode::PaymentInvalid)(error_of(
            t.connect(&url, Some((hdr, &bad.to_header())))
                .await
                .unwrap_err(),
        ));
        // Under- and overpayment, wrong payTo, asset, network, expired authorization.
        let cases: [fn(&mut Requirement); 6] = [
            |r| r.amount = Amount::from(59_999),
            |r| r.amount = Amount::from(60_001),
            |r| r.pay_to = "0x0000000000000000000000000000000000000002".into(),
            |r| r.asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
            |r| r.network = x402_types::Network::BASE,
            |r| r.max_timeout_seconds = 3, // validBefore = now + 3 < now + 6
        ];
        for f in cases {
            let h = t.pay_for(&q, f);
            refuse(402, ErrorCode::PaymentInvalid)(error_of(
                t.connect(&url, Some((hdr, &h))).await.unwrap_err(),
            ));
        }
        // Malformed headers and JSON: 402 with fresh requirements, as x402 answers.
        refuse(402, ErrorCode::PaymentInvalid)(error_of(
            t.connect(&url, Some((hdr, "%%%not-base64")))
                .await
                .unwrap_err(),
        ));
        let not_json = x402_types::x402::encode_header(&"just a string");
        refuse(402, ErrorCode::PaymentInvalid)(error_of(
            t.connect(&url, Some((hdr, &not_json))).await.unwrap_err(),
        ));
        // Tampered token, token of another stream, of another version.
        let tampered = url.replace("?t=", "?t=x");
        refuse(401, ErrorCode::TokenInvalid)(error_of(
            t.connect(&tampered, Some((hdr, &t.pay(&q))))
                .await
                .unwrap_err(),
        ));
        let other = url.replace("/stream/s?", "/stream/other?");
        refuse(401, ErrorCode::TokenInvalid)(error_of(
            t.connect(&other, Some((hdr, &t.pay(&q))))
                .await
                .unwrap_err(),
        ));
        let swapped = if v == PathVersion::V1 {
            url.replace("/v1/", "/v2/")
        } else {
            url.replace("/v2/", "/v1/")
        };
        refuse(401, ErrorCode::TokenInvalid)(error_of(
            t.connect(&swapped, None).await.unwrap_err(),
        ));
        // Unknown stream.
        let r = t
            .client
            .get(format!("{}/{}/schema/nope", t.http, v.segment()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // Not a WebSocket upgrade.
        let r = t
            .client
            .get(url.replace("ws://", "http://"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(t.credited(), 0, "no refused payment may be credited");
    assert_eq!(
        t.state.endpoint_stats().sessions,
        0,
        "refused attempts must leave no session behind"
    );

    // A replayed nonce: a payment accepted on one token, replayed on another session.
    let q1 = t.schema(PathVersion::V1, "s").await;
    let h = t.pay(&q1);
    let (_ws, _) = t
        .connect(&q1.schema.websocket_endpoint, Some(("X-PAYMENT", &h)))
        .await
        .unwrap();
    assert_eq!(t.credited(), 1);
    let q2 = t.schema(PathVersion::V1, "s").await;
    let (s, b) = error_of(
        t.connect(&q2.schema.websocket_endpoint, Some(("X-PAYMENT", &h)))
            .await
            .unwrap_err(),
    );
    assert_eq!((s, b.error), (409, ErrorCode::PaymentUsed));
    let r = t
        .renew(
            &q2.schema
                .websocket_endpoint
                .replace("ws://", "http://")
                .replace("/stream/", "/renew/"),
            PathVersion::V1,
            Some(&h),
        )
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(t.credited(), 1);
}

// ----- attacks (issue: close the attack surface) -----

#[tokio::test(start_paused = true)]
async fn paid_time_buys_only_events_published_during_it() {
    let t = start_with(Limits::default(), vec![stream("s", 2, 60)]).await;
    // 500 events before the purchase.
    t.publish(500);
    let q = t.schema(PathVersion::V2, "s").await;
    let h = t.pay(&q);
    let url = format!("{}&from=0", q.schema.websocket_endpoint);
    let (mut ws, _) = t
        .connect(&url, Some(("PAYMENT-SIGNATURE", &h)))
        .await
        .unwrap();
    let ServerMessage::Hello(hello) = next_msg(&mut ws).await else {
        panic!()
    };
    assert_eq!(
        hello.next_seq, 500,
        "a resume starts at the first paid event"
    );
    match next_msg(&mut ws).await {
        ServerMessage::Error { code, count, .. } => {
            assert_eq!((code, count), (ErrorCode::EventsSkipped, Some(500)));
        }
        other => panic!("{other:?}"),
    }
    t.publish(1);
    assert_eq!(
        next_event_seq(&mut ws).await,
        500,
        "nothing published before the purchase"
    );
    // Let the 2 s slice lapse, publish while unpaid, then renew: the gap is skipped, and said so.
    assert_eq!(close_code(&mut ws).await, Some(4402));
    t.publish(30);
    let r = t
        .renew(&hello.renew_url, PathVersion::V2, Some(&t.pay(&q)))
        .await;
    assert_eq!(r.status(), 200);
    let url = format!("{}&from=501", q.schema.websocket_endpoint);
    let (mut ws, _) = t.connect(&url, None).await.unwrap();
    let ServerMessage::Hello(h2) = next_msg(&mut ws).await else {
        panic!()
    };
    assert_eq!(h2.next_seq, 531);
    match next_msg(&mut ws).await {
        ServerMessage::Error { code, count, .. } => {
            assert_eq!((code, count), (ErrorCode::EventsSkipped, Some(30)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_upgrade_reset_before_the_101_leaves_no_connected_session() {
    use tokio::io::AsyncWriteExt;
    let t = start().await;
    for _ in 0..20 {
        let q = t.schema(PathVersion::V2, "s").await;
        let url = url_parts(&q.schema.websocket_endpoint);
        let mut tcp = tokio::net::TcpStream::connect(&url.0).await.unwrap();
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             PAYMENT-SIGNATURE: {}\r\n\r\n",
            url.1,
            url.0,
            t.pay(&q)
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        // Reset: SO_LINGER 0 then drop (a zero linger never blocks the drop).
        #[allow(deprecated)]
        tcp.set_linger(Some(Duration::ZERO)).unwrap();
        drop(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = t.state.endpoint_stats();
    assert_eq!(st.connections, 0, "no ghost connection: {st:?}");
    assert_eq!(t.state.sockets_open(), 0);
}

/// (host:port, path?query) of a ws:// URL.
fn url_parts(ws: &str) -> (String, String) {
    let rest = ws.strip_prefix("ws://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_string(), format!("/{path}"))
}

#[tokio::test]
async fn secrets_never_appear_in_answers_or_debug() {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    let secret = "top-secret-server-key-top-secret-server-key";
    cfg.secret = Some(secret.into());
    cfg.streams = vec![stream("s", 60, 60)];
    cfg.facilitator = Some(x402_server::FacilitatorConfig::Http {
        url: "http://operator:hunter2@127.0.0.1:9".into(),
        key: Some("bearer-credential-bearer-credential".into()),
    });
    let dbg = format!("{cfg:?}");
    for leak in [secret, "hunter2", "bearer-credential"] {
        assert!(!dbg.contains(leak), "Debug leaks {leak}: {dbg}");
    }
    let server = ServerBuilder::new(cfg).bind().await.unwrap();
    let http = server.http_base().to_string();
    server.spawn();
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{http}/healthz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(health.contains("127.0.0.1"), "{health}");
    // A payment while the facilitator is down: 503, and the body names no credential.
    let (schema, offer) = quote_v2(&client, &http, "s").await;
    let r = client
        .post(renew_url(&schema))
        .header(
            "PAYMENT-SIGNATURE",
            dev_payer().sign(&offer).unwrap().to_header(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    for text in [&health, &body] {
        for leak in [secret, "hunter2", "operator", "bearer-credential"] {
            assert!(!text.contains(leak), "leaks {leak}: {text}");
        }
    }
}

#[tokio::test]
async fn a_token_for_another_asset_is_refused() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let url = q.schema.websocket_endpoint.clone();
    let token = url.split("t=").nth(1).unwrap();
    let key = x402_server::token::TokenKey::new(b"test-secret-test-secret-test-secret");
    let mut claims = key.verify(token).unwrap();
    claims.asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into();
    let forged = url.replace(token, &key.issue(&claims));
    let (status, body) = error_of(
        t.connect(&forged, Some(("PAYMENT-SIGNATURE", &t.pay(&q))))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error), (401, ErrorCode::TokenInvalid));
}

#[tokio::test]
async fn two_sockets_racing_one_payload_credit_one_slice() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let h = t.pay(&q);
    let url = q.schema.websocket_endpoint.clone();
    let (a, b) = tokio::join!(
        t.connect(&url, Some(("PAYMENT-SIGNATURE", &h))),
        t.connect(&url, Some(("PAYMENT-SIGNATURE", &h)))
    );
    let opened = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert!(opened >= 1, "the payload buys the slice");
    assert_eq!(t.credited(), 1, "one payload, one settlement");
    assert_eq!(t.state.credited_payments(), 1);
}

#[tokio::test]
async fn query_and_path_rejections_answer_the_json_error_body() {
    let t = start().await;
    for url in [
        format!("{}/v2/renew/s?t=a&t=b", t.http),
        format!("{}/v2/renew/s?from=1&from=2", t.http),
    ] {
        let r = t.client.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        assert_eq!(
            r.json::<ErrorBody>().await.unwrap().error,
            ErrorCode::BadRequest
        );
    }
    let r = t
        .client
        .get(format!("{}/nowhere", t.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<ErrorBody>().await.unwrap().error,
        ErrorCode::UnknownStream
    );
}

#[tokio::test]
async fn payments_per_address_are_rate_limited() {
    let limits = Limits {
        payments_per_ip_per_minute: 3,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let q = t.schema(PathVersion::V2, "s").await;
        let renew = q
            .schema
            .websocket_endpoint
            .replace("ws://", "http://")
            .replace("/stream/", "/renew/");
        let r = t.renew(&renew, PathVersion::V2, Some(&t.pay(&q))).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            assert_eq!(
                r.json::<ErrorBody>().await.unwrap().error,
                ErrorCode::RateLimited
            );
        }
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        t.credited(),
        3,
        "nothing beyond the limit reached the facilitator"
    );
}
