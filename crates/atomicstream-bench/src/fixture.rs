//! The fixtures every bench shares: the key, local servers, quotes, paid bare sockets,
//! payloads and event frames.

use std::sync::Arc;

use atomicstream::{Amount, Client, EvmExactPayer, LocalSigner, SpendPolicy};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use x402_server::{Config, DEV_PAY_TO, Limits, ServerBuilder, SourceConfig, StreamConfig};
use x402_types::{Offer, PathVersion, PaymentRequiredV2, Schema, ServerMessage};

pub(crate) const KEY: &str = atomicstream_testkit::DEV_KEY;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) fn stream_cfg(id: &str, slice: u64) -> StreamConfig {
    StreamConfig {
        id: id.into(),
        title: id.into(),
        description: "bench".into(),
        price_per_minute: "0.06".into(),
        slice_seconds: slice,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 300,
        source: SourceConfig::Api,
        channel: None,
    }
}

pub(crate) struct Local {
    pub base: String,
    pub server_state: Arc<x402_server::AppState>,
}

pub(crate) async fn local_server(streams: Vec<StreamConfig>, limits: Limits) -> Local {
    local_server_on(streams, limits, None).await
}

/// A local server whose state lives in Redis at `redis` (a URL), if given.
pub(crate) async fn local_server_on(
    streams: Vec<StreamConfig>,
    limits: Limits,
    redis: Option<&str>,
) -> Local {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()));
    if let Some(url) = redis {
        cfg.store = x402_server::StoreConfig::Redis {
            url: url.to_string(),
            prefix: format!("bench{}:", std::process::id()),
            timeout_ms: 1000,
        };
    }
    cfg.secret = Some("bench-secret-bench-secret-bench-secret".into());
    cfg.streams = streams;
    cfg.limits = limits;
    // Every bench client pays from 127.0.0.1.
    cfg.limits.payments_per_ip_per_minute = u32::MAX;
    let s = ServerBuilder::new(cfg)
        .bind()
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let base = s.http_base().to_string();
    let server_state = s.state().clone();
    s.spawn();
    Local { base, server_state }
}

/// A quote, signed payment and endpoint, as a bare client would do it.
pub(crate) async fn quote(http: &reqwest::Client, base: &str, id: &str) -> (Schema, Offer) {
    let r = http
        .get(format!("{base}/v2/schema/{id}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    let pr = r
        .headers()
        .get("PAYMENT-REQUIRED")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| PaymentRequiredV2::from_header(h).ok())
        .unwrap_or_else(|| panic!("no PAYMENT-REQUIRED"));
    let body = r.bytes().await.unwrap_or_default();
    let schema = Schema::from_json(&body).unwrap_or_else(|e| panic!("schema: {e}"));
    (
        schema,
        pr.into_offer().unwrap_or_else(|| panic!("no accepts")),
    )
}

pub(crate) async fn bare_connect(url: &str, payment: Option<&str>) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(p) = payment {
        req.headers_mut().insert(
            "PAYMENT-SIGNATURE",
            p.parse().map_err(|_| "header".to_string())?,
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// A bare tokio-tungstenite socket paid for one slice: schema, signature, paid upgrade.
pub(crate) async fn paid_socket(
    http: &reqwest::Client,
    payer: &EvmExactPayer,
    base: &str,
    id: &str,
) -> Ws {
    let (schema, offer) = quote(http, base, id).await;
    let pay = payer
        .sign(&offer)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_header();
    bare_connect(&schema.websocket_endpoint, Some(&pay))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn payload(size: usize, i: u64) -> Value {
    if size <= 100 {
        json!({"type":"trade","px":101.25,"i":i})
    } else {
        json!({"type":"blob","i":i,"pad":"x".repeat(size - 40)})
    }
}

/// The frame our server sends for `data` as event `seq` (what the bare server sends too).
pub(crate) fn event_frame(seq: u64, data: &Value) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ServerMessage::Event(x402_types::Event {
        seq,
        data: x402_types::EventData::from_value(data).unwrap_or_else(|_| unreachable!()),
        ts: Some(ts),
    })
    .to_json()
}

pub(crate) fn signer_payer() -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap_or_else(|_| unreachable!("constant key")))
}

/// The requirement and offer the signing benchmarks sign (0.01 USDC on base-sepolia).
pub(crate) fn bench_offer() -> (x402_types::Requirement, Offer) {
    let req = x402_types::Requirement {
        scheme: "exact".into(),
        network: x402_types::Network::BASE_SEPOLIA,
        amount: Amount::from(10_000),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 60,
        extra: Some(json!({"name": "USDC", "version": "2"})),
    };
    let offer = Offer::from_requirement(PathVersion::V2, &req, "http://x/v2/stream/s", "d");
    (req, offer)
}

pub(crate) fn hex_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&KEY[2 + 2 * i..4 + 2 * i], 16).unwrap_or(0);
    }
    k
}

/// The `atomicstream` client the benches measure, with a generous policy.
pub(crate) fn bench_client(local: &Local) -> Client {
    Client::builder()
        .base_url(&local.base)
        .payer(Arc::new(signer_payer()))
        .policy(SpendPolicy::new(
            Amount::from_display("10", 6).unwrap_or_default(),
        ))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}
