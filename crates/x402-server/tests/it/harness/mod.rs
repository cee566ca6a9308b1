//! The harness the server's tests share: a server on 127.0.0.1 port 0 with
//! the embedded facilitator, a paying client (real EIP-3009 signatures from
//! the dev key, real WebSocket and HTTP), a quote read from a 402, and readers
//! of what the socket says.

use std::sync::Arc;
use std::time::Duration;

use atomicstream_testkit::DEV_KEY;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use x402_payer::{EvmExactPayer, LocalSigner};
use x402_server::{
    Config, DEV_PAY_TO, EmbeddedFacilitator, Limits, ServerBuilder, SourceConfig, StreamConfig,
};
use x402_types::{
    ErrorBody, ErrorCode, Offer, PathVersion, PaymentRequiredV2, Requirement, Schema, ServerMessage,
};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct T {
    pub state: Arc<x402_server::AppState>,
    pub http: String,
    ledger: Arc<EmbeddedFacilitator>,
    pub publisher: x402_server::Publisher,
    pub client: reqwest::Client,
    pub payer: EvmExactPayer,
}

pub fn stream(id: &str, slice: u64, timeout: u64) -> StreamConfig {
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
        channel: None,
    }
}

pub async fn start_with(limits: Limits, streams: Vec<StreamConfig>) -> T {
    start_cfg(|cfg| {
        cfg.streams = streams;
        cfg.limits = limits;
    })
    .await
}

/// A server with streams `s` and `other` and whatever `edit` changes.
pub async fn start_cfg(edit: impl FnOnce(&mut Config)) -> T {
    start_wrapped(edit, |ledger| ledger).await
}

/// [`start_cfg`], the embedded facilitator seen through `wrap` (a fault injector).
pub async fn start_wrapped(
    edit: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<EmbeddedFacilitator>) -> Arc<dyn x402_server::Facilitator>,
) -> T {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.streams = vec![stream("s", 60, 60), stream("other", 60, 60)];
    cfg.secret = Some("test-secret-test-secret-test-secret".into());
    edit(&mut cfg);
    let ledger = Arc::new(EmbeddedFacilitator::default());
    let server = ServerBuilder::new(cfg)
        .facilitator(wrap(ledger.clone()))
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
        payer: dev_payer(),
    }
}

/// A payer signing with the dev key.
pub fn dev_payer() -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(DEV_KEY).unwrap())
}

/// `GET {http}/v2/schema/{id}` unpaid: the 402's schema and the offer of its
/// `PAYMENT-REQUIRED` header.
pub async fn quote_v2(client: &reqwest::Client, http: &str, id: &str) -> (Schema, Offer) {
    let r = client
        .get(format!("{http}/v2/schema/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let header = r
        .headers()
        .get("PAYMENT-REQUIRED")
        .expect("v2 402 carries PAYMENT-REQUIRED")
        .to_str()
        .unwrap()
        .to_string();
    let schema = Schema::from_json(&r.bytes().await.unwrap()).unwrap();
    let offer = PaymentRequiredV2::from_header(&header)
        .unwrap()
        .into_offer()
        .unwrap();
    (schema, offer)
}

/// The HTTP renew URL of a quote's WebSocket endpoint (same session token).
pub fn renew_url(schema: &Schema) -> String {
    schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/")
}

pub async fn start() -> T {
    start_cfg(|_| {}).await
}

pub struct Quote {
    pub schema: Schema,
    pub offer: Offer,
    v: PathVersion,
}

impl T {
    pub async fn schema(&self, v: PathVersion, id: &str) -> Quote {
        if v == PathVersion::V2 {
            let (schema, offer) = quote_v2(&self.client, &self.http, id).await;
            return Quote { schema, offer, v };
        }
        let r = self
            .client
            .get(format!("{}/{}/schema/{id}", self.http, v.segment()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        let schema = Schema::from_json(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(schema.x402_version, Some(1));
        let offer = Offer::V1(schema.accepts.clone().unwrap()[0].clone());
        Quote { schema, offer, v }
    }

    pub fn pay(&self, q: &Quote) -> String {
        self.payer.sign(&q.offer).unwrap().to_header()
    }

    pub fn pay_for(&self, q: &Quote, f: impl FnOnce(&mut Requirement)) -> String {
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

    pub async fn connect(
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

    pub async fn open(&self, q: &Quote) -> (Ws, x402_types::Hello) {
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

    pub async fn renew(
        &self,
        url: &str,
        v: PathVersion,
        header: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.client.post(url);
        if let Some(h) = header {
            r = r.header(v.payment_header(), h);
        }
        r.send().await.unwrap()
    }

    pub fn credited(&self) -> usize {
        self.ledger.ledger().len()
    }

    pub fn publish(&self, n: usize) {
        for i in 0..n {
            self.publisher.publish(&serde_json::json!({"i": i}));
        }
    }
}

pub async fn next_msg(ws: &mut Ws) -> ServerMessage {
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

pub async fn next_event_seq(ws: &mut Ws) -> u64 {
    loop {
        if let ServerMessage::Event(e) = next_msg(ws).await {
            return e.seq;
        }
    }
}

pub async fn close_code(ws: &mut Ws) -> Option<u16> {
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

pub fn error_of(e: tungstenite::Error) -> (u16, ErrorBody) {
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
