//! End to end on real sockets: the HTTP surface beside the stream (catalog,
//! health, metrics) and the facilitator API with its HTTP client.

use std::sync::Arc;
use std::time::Duration;

use x402_server::{EmbeddedFacilitator, Facilitator};
use x402_types::{ErrorBody, ErrorCode, PathVersion, PaymentPayload};

use crate::harness::{next_event_seq, start};

#[tokio::test]
async fn catalog_and_health() {
    let t = start().await;
    let c: serde_json::Value = t
        .client
        .get(format!("{}/streams", t.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &c["streams"][1];
    assert_eq!(s["id"], "s");
    assert_eq!(s["pricePerMinute"], "0.06");
    assert_eq!(s["pricePerSlice"], "0.06");
    assert_eq!(s["network"], "eip155:84532");
    let h: serde_json::Value = t
        .client
        .get(format!("{}/healthz", t.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert!(h["facilitator"].as_str().unwrap().contains("NOT settled"));
}

#[tokio::test]
async fn facilitator_api_is_not_mounted_unless_configured() {
    let t = start().await;
    // 2,000 unauthenticated settles were answered `success: true` before: now nothing is there.
    let r = t
        .client
        .post(format!("{}/facilitator/settle", t.http))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<ErrorBody>().await.unwrap().error,
        ErrorCode::UnknownStream
    );
}

const API_KEY: &str = "facilitator-api-key-facilitator-api-key";

async fn guarded_facilitator(rate: u32) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f: Arc<dyn Facilitator> = Arc::new(EmbeddedFacilitator::default());
    tokio::spawn(x402_server::serve_facilitator_guarded(l, f, API_KEY, rate));
    format!("http://{addr}")
}

#[tokio::test]
async fn http_facilitator_client_against_the_guarded_api() {
    let t = start().await;
    let base = guarded_facilitator(1000).await;
    // Without the key, or with a wrong one: 401, nothing settled.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("facilitator-api-key-facilitator-api-key"),
    ] {
        let mut r = t
            .client
            .post(format!("{base}/settle"))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<ErrorBody>().await.unwrap().error,
            ErrorCode::Unauthorized
        );
    }
    let remote = x402_server::HttpFacilitator::new(&base, Duration::from_secs(5))
        .unwrap()
        .with_bearer(API_KEY);
    let sup = remote.supported().await.unwrap();
    assert!(
        sup.kinds
            .iter()
            .any(|k| k.x402_version == 2 && k.network == "eip155:84532")
    );
    assert!(!format!("{remote:?}").contains(API_KEY));
    let q = t.schema(PathVersion::V2, "s").await;
    let payload = t.payer.sign(&q.offer).unwrap();
    let req = x402_types::FacilitatorRequest {
        payment_payload: payload.clone(),
        payment_requirements: x402_types::PaymentRequirements::V2(q.offer.requirement().to_v2()),
    };
    let v = remote.verify(&req).await.unwrap();
    assert!(v.is_valid, "{v:?}");
    let s = remote.settle(&req).await.unwrap();
    assert!(s.success);
    // The same payload again: refused as the official facilitator refuses a replay
    // (a stock server without a nonce book must not grant twice), with the earlier
    // settlement's payer and amount.
    let again = remote.settle(&req).await.unwrap();
    assert!(!again.success, "{again:?}");
    assert_eq!(
        again.reason(),
        Some(x402_types::FacilitatorReason::NonceAlreadyUsed)
    );
    assert_eq!((&again.payer, again.amount), (&s.payer, s.amount));
    // The same nonce with other signature bytes (v = 0): refused, nonce family.
    let mut twin = payload;
    if let PaymentPayload::V2(p) = &mut twin
        && let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload
    {
        e.signature.0[64] -= 27;
    }
    let twin_req = x402_types::FacilitatorRequest {
        payment_payload: twin,
        ..req.clone()
    };
    let refused = remote.settle(&twin_req).await.unwrap();
    assert!(!refused.success);
    assert_eq!(
        x402_types::ReasonFamily::classify(refused.error_reason.as_deref().unwrap()),
        x402_types::ReasonFamily::Nonce
    );
    // Garbage body: a 400 with the JSON error body.
    let bad = t
        .client
        .post(format!("{base}/verify"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<ErrorBody>().await.unwrap().error,
        ErrorCode::BadRequest
    );
    // An unreachable facilitator is a transport error, bounded in time.
    let dead =
        x402_server::HttpFacilitator::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
    assert!(matches!(
        dead.verify(&req).await,
        Err(x402_server::FacilitatorError::Transport(_))
    ));
}

#[tokio::test]
async fn the_facilitator_api_is_rate_limited() {
    let base = guarded_facilitator(5).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = client
            .get(format!("{base}/supported"))
            .header("authorization", format!("Bearer {API_KEY}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 10,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn facilitator_4xx_style_refusals_are_read() {
    // Some facilitators answer refusals with 4xx and the same body.
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/verify",
        post(|| async {
            (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(
                    serde_json::json!({"isValid": false, "invalidReason": "insufficient_funds"}),
                ),
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let f = x402_server::HttpFacilitator::new(&format!("http://{addr}"), Duration::from_secs(2))
        .unwrap();
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let req = x402_types::FacilitatorRequest {
        payment_payload: t.payer.sign(&q.offer).unwrap(),
        payment_requirements: x402_types::PaymentRequirements::V2(q.offer.requirement().to_v2()),
    };
    let v = f.verify(&req).await.unwrap();
    assert!(!v.is_valid);
    assert_eq!(
        x402_types::ReasonFamily::classify(v.invalid_reason.as_deref().unwrap()),
        x402_types::ReasonFamily::Funds
    );
}

#[tokio::test]
async fn metrics_show_sales_refusals_and_sockets() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    t.publish(3);
    next_event_seq(&mut ws).await;
    // One refusal: a bad signature.
    let mut bad = t.payer.sign(&q.offer).unwrap();
    if let PaymentPayload::V2(p) = &mut bad
        && let x402_types::SchemePayload::ExactEvm(e) = &mut p.payload
    {
        e.signature.0[5] ^= 1;
    }
    let q2 = t.schema(PathVersion::V2, "s").await;
    let _ = t
        .connect(
            &q2.schema.websocket_endpoint,
            Some(("PAYMENT-SIGNATURE", &bad.to_header())),
        )
        .await
        .unwrap_err();
    let r = t
        .client
        .get(format!("{}/metrics", t.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for line in [
        "atomicstream_payments_credited_total{stream=\"s\"} 1",
        "atomicstream_revenue_atomic_total{stream=\"s\",asset=\"0x036CbD53842c5426634e7929541eC2318f3dCF7e\",network=\"eip155:84532\"} 60000",
        "atomicstream_payments_refused_total{stream=\"s\",code=\"payment_invalid\"} 1",
        "atomicstream_sockets 1",
        "atomicstream_sessions 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        text.contains("atomicstream_settlement_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("atomicstream_events_sent_total"), "{text}");
}

/// The schema as a raw HTTP/1.1 exchange with this `Host` header.
async fn schema_with_host(http: &str, host: &str) -> x402_types::Schema {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = http.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /v2/schema/s HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    x402_types::Schema::from_json(body.as_bytes()).unwrap()
}

/// Without `public_http`/`public_ws`, the server advertises the host the
/// client used (`localhost`, `127.0.0.1` and a LAN name all pass the
/// client's host pinning); a `Host` unfit for a URL falls back to the
/// listen address.
#[tokio::test]
async fn unset_public_addresses_follow_the_host_the_client_used() {
    let t = start().await;
    let port = t.http.rsplit(':').next().unwrap().to_string();
    let s = schema_with_host(&t.http, &format!("localhost:{port}")).await;
    assert!(
        s.websocket_endpoint
            .starts_with(&format!("ws://localhost:{port}/v2/stream/s?t=")),
        "{}",
        s.websocket_endpoint
    );
    let s = schema_with_host(&t.http, "evil.example/x?y=").await;
    assert!(
        s.websocket_endpoint
            .starts_with(&format!("ws://127.0.0.1:{port}/")),
        "{}",
        s.websocket_endpoint
    );
}
