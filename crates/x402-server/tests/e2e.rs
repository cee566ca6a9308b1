//! End to end on real sockets (127.0.0.1, port 0): a real WebSocket client,
//! real HTTP, real EIP-3009 signatures, the embedded facilitator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::{self, Message};
use x402_payer::{EvmExactPayer, LocalSigner};
use x402_server::{
    Config, DEV_PAY_TO, EmbeddedFacilitator, Facilitator, Limits, ServerBuilder, SourceConfig,
    StreamConfig,
};
use x402_types::{
    Amount, ErrorBody, ErrorCode, Offer, PathVersion, PaymentPayload, PaymentRequiredV2,
    RenewResponse, Requirement, Schema, ServerMessage,
};

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct T {
    state: Arc<x402_server::AppState>,
    http: String,
    ledger: Arc<EmbeddedFacilitator>,
    publisher: x402_server::Publisher,
    client: reqwest::Client,
    payer: EvmExactPayer,
}

fn stream(id: &str, slice: u64, timeout: u64) -> StreamConfig {
    StreamConfig {
        id: id.into(),
        title: id.into(),
        description: "test".into(),
        price_per_minute: "0.06".into(),
        slice_seconds: slice,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: timeout,
        source: SourceConfig::Api,
    }
}

async fn start_with(limits: Limits, streams: Vec<StreamConfig>) -> T {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.streams = streams;
    cfg.limits = limits;
    cfg.secret = Some("test-secret-test-secret-test-secret".into());
    let ledger = Arc::new(EmbeddedFacilitator::default());
    let server = ServerBuilder::new(cfg)
        .facilitator(ledger.clone())
        .bind()
        .await
        .unwrap();
    let http = server.http_base().to_string();
    let publisher = server.publisher("s").unwrap();
    let state = server.state().clone();
    server.spawn();
    T {
        state,
        http,
        ledger,
        publisher,
        client: reqwest::Client::new(),
        payer: EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap()),
    }
}

async fn start() -> T {
    start_with(
        Limits::default(),
        vec![stream("s", 60, 60), stream("other", 60, 60)],
    )
    .await
}

struct Quote {
    schema: Schema,
    offer: Offer,
    v: PathVersion,
}

impl T {
    async fn schema(&self, v: PathVersion, id: &str) -> Quote {
        let r = self
            .client
            .get(format!("{}/{}/schema/{id}", self.http, v.segment()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        let header = r
            .headers()
            .get("PAYMENT-REQUIRED")
            .map(|h| h.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        let schema = Schema::from_json(&body).unwrap();
        let offer = match v {
            PathVersion::V1 => {
                let accepts = schema.accepts.clone().unwrap();
                assert_eq!(schema.x402_version, Some(1));
                Offer::V1(accepts[0].clone())
            }
            PathVersion::V2 => {
                PaymentRequiredV2::from_header(&header.expect("v2 402 carries PAYMENT-REQUIRED"))
                    .unwrap()
                    .into_offer()
                    .unwrap()
            }
        };
        Quote { schema, offer, v }
    }

    fn pay(&self, q: &Quote) -> String {
        self.payer.sign(&q.offer).unwrap().to_header()
    }

    fn pay_for(&self, q: &Quote, f: impl FnOnce(&mut Requirement)) -> String {
        let mut r = q.offer.requirement();
        f(&mut r);
        let offer = match &q.offer {
            Offer::V1(orig) => Offer::V1(r.to_v1(&orig.resource, &orig.description)),
            Offer::V2 { resource, .. } => Offer::V2 {
                accepted: x402_types::PreservedRequirement::new(r.to_v2()),
                resource: resource.clone(),
            },
        };
        self.payer.sign(&offer).unwrap().to_header()
    }

    async fn connect(
        &self,
        url: &str,
        header: Option<(&str, &str)>,
    ) -> Result<(Ws, tungstenite::http::Response<Option<Vec<u8>>>), tungstenite::Error> {
        let mut req = url.into_client_request().unwrap();
        if let Some((k, v)) = header {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        tokio_tungstenite::connect_async(req).await
    }

    async fn open(&self, q: &Quote) -> (Ws, x402_types::Hello) {
        let h = self.pay(q);
        let (mut ws, resp) = self
            .connect(
                &q.schema.websocket_endpoint,
                Some((q.v.payment_header(), &h)),
            )
            .await
            .unwrap();
        assert!(
            resp.headers().get(q.v.payment_response_header()).is_some(),
            "101 carries the settlement header"
        );
        let hello = match next_msg(&mut ws).await {
            ServerMessage::Hello(h) => h,
            other => panic!("expected hello, got {other:?}"),
        };
        (ws, hello)
    }

    async fn renew(&self, url: &str, v: PathVersion, header: Option<&str>) -> reqwest::Response {
        let mut r = self.client.post(url);
        if let Some(h) = header {
            r = r.header(v.payment_header(), h);
        }
        r.send().await.unwrap()
    }

    fn credited(&self) -> usize {
        self.ledger.ledger().len()
    }

    fn publish(&self, n: usize) {
        for i in 0..n {
            self.publisher.publish(&serde_json::json!({"i": i}));
        }
    }
}

async fn next_msg(ws: &mut Ws) -> ServerMessage {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("timed out waiting for a frame")
        {
            Some(Ok(Message::Text(t))) => return ServerMessage::parse(t.as_str()).unwrap(),
            Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn next_event_seq(ws: &mut Ws) -> u64 {
    loop {
        if let ServerMessage::Event(e) = next_msg(ws).await {
            return e.seq;
        }
    }
}

async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(c))) => return c.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

fn error_of(e: tungstenite::Error) -> (u16, ErrorBody) {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            (
                status,
                ErrorBody::from_json(&body).unwrap_or(ErrorBody {
                    error: ErrorCode::Other(String::new()),
                    message: String::new(),
                    accepts: None,
                    x402_version: None,
                    retry_after: None,
                }),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn paid_open_events_renew_resume(v: PathVersion) {
    let t = start().await;
    let q = t.schema(v, "s").await;
    assert_eq!(
        q.schema.payment_details.max_amount_required,
        Amount::from(60_000)
    );
    let (mut ws, hello) = t.open(&q).await;
    assert_eq!(hello.slice_seconds, 60);
    assert!(!hello.resumed);
    t.publish(3);
    let first = next_event_seq(&mut ws).await;
    assert_eq!(first, hello.next_seq);
    assert_eq!(next_event_seq(&mut ws).await, first + 1);
    assert_eq!(t.credited(), 1);

    // Renew, then repeat the same payload: same answer, no second extension.
    let h = t.pay(&q);
    let r1 = t.renew(&hello.renew_url, v, Some(&h)).await;
    assert_eq!(r1.status(), 200);
    assert!(r1.headers().get(v.payment_response_header()).is_some());
    let r1: RenewResponse = r1.json().await.unwrap();
    assert_eq!(r1.slices, 2);
    assert_eq!(r1.expires_at, hello.expires_at + 60);
    let r2: RenewResponse = t
        .renew(&hello.renew_url, v, Some(&h))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r2, r1);
    assert_eq!(t.credited(), 2);
    // The socket hears about it.
    loop {
        if let ServerMessage::Renewed { slices, .. } = next_msg(&mut ws).await {
            assert_eq!(slices, 2);
            break;
        }
    }
    // Horizon: a third slice now would be three slices ahead.
    let r3 = t.renew(&hello.renew_url, v, Some(&t.pay(&q))).await;
    assert_eq!(r3.status(), 409);
    assert_eq!(
        r3.json::<ErrorBody>().await.unwrap().error,
        ErrorCode::HorizonExceeded
    );
    assert_eq!(t.credited(), 2);

    // Drop and resume without payment from where we were.
    t.publish(1);
    let next = next_event_seq(&mut ws).await + 1;
    drop(ws);
    t.publish(2);
    let url = format!("{}&from={next}", q.schema.websocket_endpoint);
    let (mut ws2, _) = t.connect(&url, None).await.unwrap();
    let ServerMessage::Hello(h2) = next_msg(&mut ws2).await else {
        panic!()
    };
    assert!(h2.resumed);
    assert_eq!(h2.next_seq, next);
    assert_eq!(next_event_seq(&mut ws2).await, next);
    assert_eq!(t.credited(), 2, "resume must not pay");

    // Ping is answered.
    ws2.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    loop {
        if next_msg(&mut ws2).await == ServerMessage::Pong {
            break;
        }
    }
    // A second socket with the same token supersedes the first: 4409.
    let (mut ws3, _) = t.connect(&q.schema.websocket_endpoint, None).await.unwrap();
    assert_eq!(close_code(&mut ws2).await, Some(4409));
    let ServerMessage::Hello(h3) = next_msg(&mut ws3).await else {
        panic!()
    };
    assert!(h3.resumed);
}

#[tokio::test]
async fn v1_paid_open_events_renew_resume() {
    paid_open_events_renew_resume(PathVersion::V1).await;
}

#[tokio::test]
async fn v2_paid_open_events_renew_resume() {
    paid_open_events_renew_resume(PathVersion::V2).await;
}

#[tokio::test]
async fn events_lost_after_eviction() {
    let limits = Limits {
        replay_buffer: 4,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (ws, hello) = t.open(&q).await;
    drop(ws);
    t.publish(10);
    let url = format!("{}&from={}", q.schema.websocket_endpoint, hello.next_seq);
    let (mut ws, _) = t.connect(&url, None).await.unwrap();
    let ServerMessage::Hello(_) = next_msg(&mut ws).await else {
        panic!()
    };
    match next_msg(&mut ws).await {
        ServerMessage::Error { code, count, .. } => {
            assert_eq!(code, ErrorCode::EventsLost);
            assert_eq!(count, Some(6));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event_seq(&mut ws).await, hello.next_seq + 6);
}

/// A burst larger than the live queue, published while two paid sockets read:
/// batched writes, the lagged fallback to the replay buffer and the live path
/// together deliver every event once, in order, and nothing else.
#[tokio::test]
async fn a_burst_beyond_the_live_queue_arrives_whole_and_in_order() {
    let limits = Limits {
        replay_buffer: 5_000,
        send_queue: 16,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let q = t.schema(PathVersion::V2, "s").await;
        sockets.push(t.open(&q).await);
    }
    let first = sockets[0].1.next_seq;
    let publisher = t.publisher.clone();
    let burst = std::thread::spawn(move || {
        for i in 0..3_000u64 {
            publisher
                .publish(&serde_json::json!({"i": i, "pad": "x".repeat((i % 7) as usize * 100)}));
        }
    });
    for (ws, _) in &mut sockets {
        for i in 0..3_000u64 {
            match next_msg(ws).await {
                ServerMessage::Event(e) => {
                    assert_eq!(e.seq, first + i, "in order, none missing, none twice");
                    let data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
                    assert_eq!(data["i"], i);
                }
                other => panic!("only events expected, got {other:?}"),
            }
        }
    }
    burst.join().unwrap();
}

/// On an idle socket (no events to wake its task) every ping is answered and
/// every renewal reaches the socket: the task hears its client and its mailbox
/// on their own wakes, not only when an event arrives.
#[tokio::test]
async fn an_idle_socket_answers_every_ping_and_hears_every_renewal() {
    let t = start_with(Limits::default(), vec![stream("s", 3600, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, hello) = t.open(&q).await;
    for round in 0..20u64 {
        ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut ws).await,
            ServerMessage::Pong,
            "round {round}"
        );
        if round == 10 {
            let r = t
                .renew(&hello.renew_url, PathVersion::V2, Some(&t.pay(&q)))
                .await;
            assert_eq!(r.status(), 200);
            match next_msg(&mut ws).await {
                ServerMessage::Renewed { slices, .. } => assert_eq!(slices, 2),
                other => panic!("expected renewed, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn expiry_sends_expired_then_closes_4402() {
    let t = start_with(Limits::default(), vec![stream("s", 2, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    let mut saw = (false, false);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(txt))) => match ServerMessage::parse(txt.as_str()).unwrap() {
                ServerMessage::Expiring { .. } => saw.0 = true,
                ServerMessage::Expired { .. } => saw.1 = true,
                ServerMessage::Event(_) => panic!("event delivered after expiry"),
                _ => {}
            },
            Some(Ok(Message::Close(c))) => break c.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(saw, (true, true));
    assert_eq!(code, Some(4402));
    // Without payment the token no longer opens a socket: 402 with fresh accepts.
    let (status, body) = error_of(
        t.connect(&q.schema.websocket_endpoint, None)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, body.error), (402, ErrorCode::PaymentRequired));
    assert!(body.accepts.is_some());
}

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

#[tokio::test]
async fn expired_quote_is_gone() {
    let t = start_with(Limits::default(), vec![stream("s", 60, 1)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let h = t.pay(&q);
    let (s, b) = error_of(
        t.connect(
            &q.schema.websocket_endpoint,
            Some(("PAYMENT-SIGNATURE", &h)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((s, b.error), (410, ErrorCode::QuoteExpired));
    assert_eq!(t.credited(), 0);
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let limits = Limits {
        max_frame_bytes: 64 * 1024,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 60, 60)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    ws.send(Message::Text("x".repeat(100 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(u16::from(WsCode::Size)));
}

#[tokio::test]
async fn renew_endpoint_buys_the_first_slice_for_browsers() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let renew = q
        .schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    let r = t.renew(&renew, PathVersion::V2, None).await;
    assert_eq!(r.status(), 402);
    assert!(r.headers().get("PAYMENT-REQUIRED").is_some());
    let r = t.renew(&renew, PathVersion::V2, Some(&t.pay(&q))).await;
    assert_eq!(r.status(), 200);
    // The token alone now opens the socket.
    let (mut ws, _) = t.connect(&q.schema.websocket_endpoint, None).await.unwrap();
    let ServerMessage::Hello(h) = next_msg(&mut ws).await else {
        panic!()
    };
    assert!(!h.resumed);
    assert_eq!(t.credited(), 1);
}

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
        let mut r = t.client.post(format!("{base}/settle")).body("{}");
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
    // The same payload again: the same answer (idempotent, as a retry after a lost answer needs).
    let again = remote.settle(&req).await.unwrap();
    assert_eq!(again, s);
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
async fn expired_sessions_are_swept() {
    let limits = Limits {
        session_linger_secs: 1,
        sweep_interval_ms: 100,
        ..Limits::default()
    };
    let t = start_with(limits, vec![stream("s", 1, 7)]).await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    assert_eq!(t.state.endpoint_stats().sessions, 1);
    assert_eq!(close_code(&mut ws).await, Some(4402));
    drop(ws);
    // Once the quote (7 s) and paid time (1 s) + linger (1 s) are over; the sweeper runs every 100 ms.
    let mut left = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = t.state.endpoint_stats().sessions;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "the expired session was not swept");
}

#[tokio::test]
async fn replay_source_publishes_a_jsonl_file() {
    let file = std::env::temp_dir().join(format!("replay-{}.jsonl", std::process::id()));
    std::fs::write(&file, "{\"n\":1}\nnot json\n\n{\"n\":2}\n[3]\n").unwrap();
    let mut sc = stream("r", 60, 60);
    sc.source = SourceConfig::Replay {
        file: file.clone(),
        rate: 50.0,
        looping: true,
    };
    let t = start_with(Limits::default(), vec![stream("s", 60, 60), sc]).await;
    let q = t.schema(PathVersion::V2, "r").await;
    let url = q.schema.websocket_endpoint.clone();
    let (mut ws, _) = t
        .connect(&url, Some(("PAYMENT-SIGNATURE", &t.pay(&q))))
        .await
        .unwrap();
    let mut data = Vec::new();
    while data.len() < 6 {
        if let ServerMessage::Event(e) = next_msg(&mut ws).await {
            data.push(e.data.get().to_string());
        }
    }
    // The invalid line is skipped; the file loops.
    let cycle = ["{\"n\":1}", "{\"n\":2}", "[3]"];
    let start = cycle
        .iter()
        .position(|c| *c == data[0])
        .expect("a line of the file");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d, cycle[(start + i) % 3]);
    }
    let _ = std::fs::remove_file(file);
}

// ----- attacks (issue: close the attack surface) -----

#[tokio::test]
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
    assert_eq!(
        t.state
            .stats
            .sockets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
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
    let r = client
        .get(format!("{http}/v2/schema/s"))
        .send()
        .await
        .unwrap();
    let header = r.headers()["PAYMENT-REQUIRED"]
        .to_str()
        .unwrap()
        .to_string();
    let schema = Schema::from_json(&r.bytes().await.unwrap()).unwrap();
    let offer = PaymentRequiredV2::from_header(&header)
        .unwrap()
        .into_offer()
        .unwrap();
    let payer = EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap());
    let renew = schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    let r = client
        .post(&renew)
        .header("PAYMENT-SIGNATURE", payer.sign(&offer).unwrap().to_header())
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
        "atomicstream_revenue_atomic_total{stream=\"s\"} 60000",
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

#[tokio::test]
async fn shutdown_closes_sockets_with_1012_so_clients_resume_elsewhere() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    t.state.shutdown();
    assert_eq!(close_code(&mut ws).await, Some(1012));
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
    assert_eq!(
        t.state
            .stats
            .payments
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
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
