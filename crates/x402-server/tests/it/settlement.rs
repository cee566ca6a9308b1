//! Settlement outcomes are never lost, on real sockets: the stream server
//! talks HTTP to a scripted facilitator that really settles (the embedded
//! one, idempotent for a repeated payload) and then misbehaves on purpose:
//! answers late, not at all, with garbage, with an oversized body, with a
//! success for another payer or amount, or `settlement_pending`. In every
//! case: nothing credited without a settlement, nothing settled left
//! uncredited, no payment counted twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use x402_payer::EvmExactPayer;
use x402_server::{
    Config, DEV_PAY_TO, EmbeddedFacilitator, Facilitator, HttpFacilitator, Limits, ServerBuilder,
    StoreConfig,
};
use x402_types::{ErrorBody, ErrorCode, FacilitatorRequest, RenewResponse, SettleResponse};

use crate::harness::{dev_payer, quote_v2, renew_url, stream};

/// What the scripted facilitator does on its first `/settle` (later ones answer honestly).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Settles, then answers after this long.
    Slow(Duration),
    /// Settles, answers HTML.
    Garbage,
    /// Settles, answers 1 MiB.
    Oversized,
    /// Settles, answers `settlement_pending`.
    Pending,
    /// Settles, answers success naming another payer.
    OtherPayer,
    /// Settles, answers success with another amount.
    OtherAmount,
    /// Answers 500 without settling.
    Error500,
}

struct Script {
    inner: EmbeddedFacilitator,
    fault: Mutex<Fault>,
    settles: AtomicU32,
}

async fn verify(State(s): State<Arc<Script>>, body: Bytes) -> Response {
    let req = FacilitatorRequest::from_json(&body).unwrap();
    axum::Json(s.inner.verify(&req).await.unwrap()).into_response()
}

async fn settle(State(s): State<Arc<Script>>, body: Bytes) -> Response {
    let req = FacilitatorRequest::from_json(&body).unwrap();
    s.settles.fetch_add(1, Ordering::SeqCst);
    let fault = std::mem::replace(&mut *s.fault.lock().unwrap(), Fault::None);
    if fault == Fault::Error500 {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let mut answer: SettleResponse = s.inner.settle(&req).await.unwrap();
    match fault {
        Fault::None | Fault::Error500 => {}
        Fault::Slow(d) => tokio::time::sleep(d).await,
        Fault::Garbage => return "<html>gateway timeout</html>".into_response(),
        Fault::Oversized => return "x".repeat(1 << 20).into_response(),
        Fault::Pending => {
            answer.success = false;
            answer.error_reason = Some("settlement_pending".into());
        }
        Fault::OtherPayer => answer.payer = Some(DEV_PAY_TO.into()),
        Fault::OtherAmount => answer.amount = Some(x402_types::Amount::from(1u64)),
    }
    axum::Json(answer).into_response()
}

struct T {
    http: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), x402_server::Error>>>,
    script: Arc<Script>,
    state: Arc<x402_server::AppState>,
    client: reqwest::Client,
    payer: EvmExactPayer,
}

async fn start(fault: Fault) -> T {
    start_on(fault, StoreConfig::Memory).await
}

async fn start_on(fault: Fault, store: StoreConfig) -> T {
    let script = Arc::new(Script {
        inner: EmbeddedFacilitator::default(),
        fault: Mutex::new(fault),
        settles: AtomicU32::new(0),
    });
    let app = axum::Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .with_state(script.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let f_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("settlement-test-secret-settlement-test".into());
    cfg.store = store;
    cfg.limits = Limits {
        payment_wait_secs: 1,
        facilitator_timeout_secs: 5,
        ..Limits::default()
    };
    cfg.streams = vec![stream("s", 60, 60)];
    let remote = HttpFacilitator::new(&format!("http://{f_addr}"), Duration::from_secs(5)).unwrap();
    let server = ServerBuilder::new(cfg)
        .facilitator(Arc::new(remote))
        .bind()
        .await
        .unwrap();
    let http = server.http_base().to_string();
    let state = server.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    T {
        http,
        stop: Some(stop),
        served: Some(served),
        script,
        state,
        client: reqwest::Client::new(),
        payer: dev_payer(),
    }
}

impl T {
    /// A renew URL and a signed payment for a fresh quote.
    async fn quote(&self) -> (String, String) {
        let (schema, offer) = quote_v2(&self.client, &self.http, "s").await;
        (
            renew_url(&schema),
            self.payer.sign(&offer).unwrap().to_header(),
        )
    }

    async fn post(&self, url: &str, payment: &str) -> (u16, Vec<u8>, Option<String>) {
        let r = self
            .client
            .post(url)
            .header("PAYMENT-SIGNATURE", payment)
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            r.bytes().await.unwrap().to_vec(),
            retry,
        )
    }

    fn settled(&self) -> usize {
        self.script.inner.ledger().len()
    }

    fn credited(&self) -> u64 {
        self.state.credited_payments()
    }
}

fn code(body: &[u8]) -> ErrorCode {
    ErrorBody::from_json(body).unwrap().error
}

/// Retries the same payload (as the client does) until a final answer.
async fn until_final(t: &T, url: &str, payment: &str) -> (u16, Vec<u8>) {
    for _ in 0..20 {
        let (status, body, _) = t.post(url, payment).await;
        if status != 202 {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no final answer");
}

#[tokio::test(start_paused = true)]
async fn a_late_success_is_credited_once_and_the_retry_gets_it() {
    let t = start(Fault::Slow(Duration::from_secs(3))).await;
    let (url, pay) = t.quote().await;
    // The server waits 1 s: "pending, retry after N s", a documented answer, never payment_used.
    let (status, body, retry) = t.post(&url, &pay).await;
    assert_eq!((status, code(&body)), (202, ErrorCode::PaymentPending));
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(ErrorBody::from_json(&body).unwrap().retry_after, Some(2));
    // Retrying during the settlement attaches to it.
    let (status, body, _) = t.post(&url, &pay).await;
    assert_eq!((status, code(&body)), (202, ErrorCode::PaymentPending));
    let (status, body) = until_final(&t, &url, &pay).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r: RenewResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.slices, 1);
    // Long after: the same answer, no second extension.
    let (status, body, _) = t.post(&url, &pay).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<RenewResponse>(&body).unwrap(), r);
    assert_eq!((t.settled(), t.credited()), (1, 1));
    assert_eq!(t.script.settles.load(Ordering::SeqCst), 1, "settled once");
}

#[tokio::test(start_paused = true)]
async fn lost_answers_are_settled_again_with_the_same_payload() {
    for fault in [Fault::Garbage, Fault::Oversized, Fault::Pending] {
        let t = start(fault).await;
        let (url, pay) = t.quote().await;
        let (status, body) = until_final(&t, &url, &pay).await;
        assert_eq!(status, 200, "{fault:?}: {}", String::from_utf8_lossy(&body));
        assert_eq!((t.settled(), t.credited()), (1, 1), "{fault:?}");
        assert_eq!(
            t.script.settles.load(Ordering::SeqCst),
            2,
            "{fault:?}: asked again once"
        );
    }
}

#[tokio::test]
async fn success_for_another_payer_or_amount_credits_nothing() {
    for fault in [Fault::OtherPayer, Fault::OtherAmount] {
        let t = start(fault).await;
        let (url, pay) = t.quote().await;
        let (status, body) = until_final(&t, &url, &pay).await;
        assert_eq!(
            (status, code(&body)),
            (502, ErrorCode::SettlementUnknown),
            "{fault:?}"
        );
        assert!(code(&body).maybe_spent());
        assert_eq!(t.credited(), 0, "{fault:?}");
        assert_eq!(t.state.unresolved_payments(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_facilitator_that_is_down_moves_nothing_and_the_retry_starts_over() {
    let t = start(Fault::None).await;
    let (url, pay) = t.quote().await;
    // A server whose facilitator is unreachable: 503, nothing credited, nothing held.
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("settlement-test-secret-settlement-test".into());
    cfg.streams[0].id = "s".into();
    // `exact` only: a stream sold over channels takes its receiverAuthorizer from the
    // facilitator's /supported at start, which a dead facilitator cannot answer.
    for s in &mut cfg.streams {
        s.channel = None;
    }
    let dead = HttpFacilitator::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
    let down = ServerBuilder::new(cfg)
        .facilitator(Arc::new(dead))
        .bind()
        .await
        .unwrap();
    let down_state = down.state().clone();
    let down_http = down.http_base().to_string();
    down.spawn();
    let (schema, _) = quote_v2(&t.client, &down_http, "s").await;
    let down_url = renew_url(&schema);
    let (status, body, _) = t.post(&down_url, &pay).await;
    assert_eq!(
        (status, code(&body)),
        (503, ErrorCode::FacilitatorUnavailable)
    );
    assert!(code(&body).is_retryable());
    assert_eq!(down_state.endpoint_stats().claims, 0);
    assert_eq!(down_state.endpoint_stats().sessions, 0);
    // A 500 from the facilitator on settle: unknown, asked again, credited once.
    *t.script.fault.lock().unwrap() = Fault::Error500;
    let (status, _) = until_final(&t, &url, &pay).await;
    assert_eq!(status, 200);
    assert_eq!((t.settled(), t.credited()), (1, 1));
}

#[tokio::test]
async fn two_requests_racing_one_payload_credit_one_slice() {
    let t = start(Fault::Slow(Duration::from_millis(300))).await;
    let (url, pay) = t.quote().await;
    let (a, b) = tokio::join!(until_final(&t, &url, &pay), until_final(&t, &url, &pay));
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1, b.1, "one answer for one payload");
    assert_eq!((t.settled(), t.credited()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_settlements_under_way_before_exiting() {
    let mut t = start(Fault::Slow(Duration::from_secs(2))).await;
    let (url, pay) = t.quote().await;
    let (status, _, _) = t.post(&url, &pay).await;
    assert_eq!(status, 202, "the settlement is still under way");
    assert_eq!(t.credited(), 0);
    // SIGTERM, as it were: the server stops, but only once the settlement has an outcome.
    let _ = t.stop.take().unwrap().send(());
    t.served.take().unwrap().await.unwrap().unwrap();
    assert_eq!(
        (t.settled(), t.credited()),
        (1, 1),
        "the outcome was recorded before exiting"
    );
}

/// Sends a renewal and hangs up `after` later, before any answer.
async fn post_and_hang_up(url: &str, payment: &str, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let u = reqwest::Url::parse(url).unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let path = format!("{}?{}", u.path(), u.query().unwrap_or(""));
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\npayment-signature: {payment}\r\ncontent-length: 0\r\n\r\n",
        u.host_str().unwrap()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(tcp);
}

/// Clients that hang up at every point of the payment path leave no record
/// without an owner: every settlement ends, every settled payment is
/// credited once, and the retry of each payload gets its recorded answer.
async fn hang_ups_leave_nothing_stuck(store: StoreConfig) {
    let t = start_on(Fault::Slow(Duration::from_millis(30)), store).await;
    let mut sent = Vec::new();
    for i in 0..40u64 {
        let (url, pay) = t.quote().await;
        // 0-4 ms: before the decision, during the store's commit, during verify.
        post_and_hang_up(&url, &pay, Duration::from_micros(i % 5 * 1000)).await;
        sent.push((url, pay));
    }
    let mut settled_all = false;
    for _ in 0..100 {
        if t.state.endpoint_stats().settling == 0 && t.settled() as u64 == t.credited() {
            settled_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled_all,
        "stuck: {:?}, settled {} credited {}",
        t.state.endpoint_stats(),
        t.settled(),
        t.credited()
    );
    // Each payload's retry: its recorded answer (200), or, if the hang-up
    // came before anything was recorded, a fresh settlement. Never pending forever.
    for (url, pay) in &sent {
        let (status, body) = until_final(&t, url, pay).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(t.settled(), sent.len());
    assert_eq!(t.credited(), sent.len() as u64, "each credited once");
}

#[tokio::test]
async fn hang_ups_leave_nothing_stuck_in_memory() {
    hang_ups_leave_nothing_stuck(StoreConfig::Memory).await;
}

#[tokio::test]
async fn hang_ups_leave_nothing_stuck_on_redis() {
    let r = atomicstream_testkit::Redis::start();
    hang_ups_leave_nothing_stuck(StoreConfig::Redis {
        url: r.url(),
        prefix: "hang:".into(),
        timeout_ms: 1000,
    })
    .await;
}

/// Rewrites the payload inside a v2 payment header.
fn tamper(payment: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v: serde_json::Value = serde_json::from_slice(&b64.decode(payment).unwrap()).unwrap();
    f(&mut v);
    b64.encode(serde_json::to_vec(&v).unwrap())
}

#[tokio::test]
async fn a_junk_copy_sent_first_does_not_block_the_genuine_payment() {
    let t = start(Fault::None).await;
    let (url, pay) = t.quote().await;
    let junk = tamper(&pay, |v| {
        let sig = v["payload"]["signature"].as_str().unwrap().to_string();
        let flipped = if sig.ends_with('1') { "2" } else { "1" };
        v["payload"]["signature"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
    });
    let (status, body, _) = t.post(&url, &junk).await;
    assert_eq!((status, code(&body)), (402, ErrorCode::PaymentInvalid));
    // The same junk bytes: the same recorded answer.
    let (status, body, _) = t.post(&url, &junk).await;
    assert_eq!((status, code(&body)), (402, ErrorCode::PaymentInvalid));
    // The genuine authorization is not squatted.
    let (status, body) = until_final(&t, &url, &pay).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!((t.settled(), t.credited()), (1, 1));
}

#[tokio::test]
async fn a_validity_window_beyond_max_timeout_is_refused_before_settling() {
    let t = start(Fault::None).await;
    let (url, pay) = t.quote().await;
    let forever = tamper(&pay, |v| {
        v["payload"]["authorization"]["validBefore"] =
            "115792089237316195423570985008687907853269984665640564039457584007913129639935".into();
    });
    let (status, body, _) = t.post(&url, &forever).await;
    assert_eq!((status, code(&body)), (402, ErrorCode::ValidityTooLong));
    assert_eq!(
        t.script.settles.load(Ordering::SeqCst),
        0,
        "never asked to settle"
    );
    assert_eq!(t.state.endpoint_stats().claims, 0, "claims nothing");
    // The genuine payload (validBefore within maxTimeoutSeconds) is fine.
    let (status, _) = until_final(&t, &url, &pay).await;
    assert_eq!(status, 200);
}
