//! Several real `atomicstream serve` processes on one real `redis-server`
//! (Debian's package; `cargo xtask tools` installs it): sessions, payments
//! and events shared across instances, `kill -9`, restarts, Redis outages.
//! These tests never skip: without `redis-server` they fail and say why.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atomicstream_testkit::{Redis, scratch};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use x402_payer::{EvmExactPayer, LocalSigner};
use x402_types::{
    ErrorBody, ErrorCode, Offer, PathVersion, PaymentRequiredV2, RenewResponse, Schema,
    ServerMessage,
};

const KEY: &str = atomicstream_testkit::DEV_KEY;
const SECRET: &str = "cluster-test-secret-cluster-test-secret";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The public address every instance names in its URLs: held open for the
/// test's life (so no parallel test takes it), and served only when a test
/// puts a [`Balancer`] on it.
struct Public(std::net::TcpListener);

impl Public {
    fn bind() -> Public {
        Public(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
}

/// The port in `atomicstream serve`'s `  listening:    127.0.0.1:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    let addr = line.trim().strip_prefix("listening:")?.trim();
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// One `atomicstream serve` process.
struct Instance {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
}

impl Instance {
    /// Starts an instance sharing `redis` on a port it binds itself; clients
    /// are told to use `public`.
    async fn start(redis: &Redis, public: &Public) -> Instance {
        Self::start_with(redis, public, "kind = \"embedded\"").await
    }

    /// With this `[facilitator]` section.
    async fn start_with(redis: &Redis, public: &Public, facilitator: &str) -> Instance {
        let public = public.port();
        let dir = scratch("instance");
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
public_http = "http://127.0.0.1:{public}"
public_ws = "ws://127.0.0.1:{public}"
secret = "{SECRET}"

[facilitator]
{facilitator}

[store]
kind = "redis"
url = "{url}"
timeout_ms = 500

[[streams]]
id = "s"
title = "S"
description = "test"
price_per_minute = "0.06"
slice_seconds = 4
network = "base-sepolia"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
max_timeout_seconds = 60
source = {{ kind = "synthetic", rate = 20, symbol = "BTC-USD" }}

[[streams]]
id = "api"
title = "API"
description = "published from another process"
price_per_minute = "0.06"
slice_seconds = 60
network = "base-sepolia"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
max_timeout_seconds = 60
source = {{ kind = "api" }}

[limits]
payment_wait_secs = 3
"#,
                url = redis.url()
            ),
        )
        .unwrap();
        let mut i = Instance {
            child: None,
            port: 0,
            config,
        };
        i.launch().await;
        i
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_atomicstream"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .env_remove("X402_SERVER_SECRET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // The instance binds port 0 and says where it listens (a port chosen
        // here could be taken by a parallel test before the child binds it).
        let deadline = Instant::now() + Duration::from_secs(30);
        self.port = loop {
            if let Some(port) = self.log().lines().find_map(listening_port) {
                break port;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("instance exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "instance did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.http())).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it wrote to stderr (warnings and errors).
    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn sockets(&self) -> u64 {
        let h: serde_json::Value = reqwest::get(format!("{}/healthz", self.http()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h["sockets"].as_u64().unwrap()
    }

    /// Payments credited by this instance, over every stream.
    async fn credited(&self) -> u64 {
        crate::credited(&self.http(), None).await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = self.config.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A quote bought on one instance; its URLs name the public address, and
/// the tests send each request to the instance they choose.
struct Quote {
    stream: String,
    offer: Offer,
    token: String,
}

fn payer() -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap())
}

async fn quote(i: &Instance) -> Quote {
    quote_on(i, "s").await
}

async fn quote_on(i: &Instance, stream: &str) -> Quote {
    let r = reqwest::get(format!("{}/v2/schema/{stream}", i.http()))
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let header = r.headers()["PAYMENT-REQUIRED"]
        .to_str()
        .unwrap()
        .to_string();
    let schema = Schema::from_json(&r.bytes().await.unwrap()).unwrap();
    let token = schema
        .websocket_endpoint
        .split("t=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let offer = PaymentRequiredV2::from_header(&header)
        .unwrap()
        .into_offer()
        .unwrap();
    Quote {
        stream: stream.to_string(),
        offer,
        token,
    }
}

fn sign(q: &Quote) -> String {
    payer().sign(&q.offer).unwrap().to_header()
}

async fn renew(i: &Instance, q: &Quote, payment: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/v2/renew/{}?t={}", i.http(), q.stream, q.token))
        .header(PathVersion::V2.payment_header(), payment)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn renewed(i: &Instance, q: &Quote, payment: &str) -> RenewResponse {
    let (status, body) = renew(i, q, payment).await;
    assert_eq!(status, 200, "{body}");
    RenewResponse::from_json(body.as_bytes()).unwrap()
}

async fn connect(
    i: &Instance,
    q: &Quote,
    from: Option<u64>,
    payment: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut url = format!("{}/v2/stream/{}?t={}", i.ws(), q.stream, q.token);
    if let Some(f) = from {
        url.push_str(&format!("&from={f}"));
    }
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = payment {
        req.headers_mut()
            .insert(PathVersion::V2.payment_header(), p.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
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

async fn hello(ws: &mut Ws) -> x402_types::Hello {
    match next_msg(ws).await {
        ServerMessage::Hello(h) => h,
        other => panic!("expected hello, got {other:?}"),
    }
}

/// Reads until an event arrives; returns its seq and every message before it.
async fn next_event(ws: &mut Ws) -> (u64, Vec<ServerMessage>) {
    let mut before = Vec::new();
    loop {
        match next_msg(ws).await {
            ServerMessage::Event(e) => return (e.seq, before),
            m => before.push(m),
        }
    }
}

fn error_body(e: tungstenite::Error) -> (u16, ErrorBody) {
    match e {
        tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            ErrorBody::from_json(&resp.body().clone().unwrap_or_default()).unwrap(),
        ),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn cluster(n: usize) -> (Redis, Vec<Instance>, Public) {
    let redis = Redis::start_persistent();
    let public = Public::bind();
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Instance::start(&redis, &public).await);
    }
    (redis, v, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_on_a_renew_on_b_resume_on_c_paying_once_per_slice() {
    let (_redis, inst, _) = cluster(3).await;
    let (a, b, c) = (&inst[0], &inst[1], &inst[2]);
    let q = quote(a).await;
    let mut ws = connect(a, &q, None, Some(&sign(&q))).await.unwrap();
    let h = hello(&mut ws).await;
    assert!(!h.resumed);
    let (first, _) = next_event(&mut ws).await;

    // Renewed on B: A's socket hears it (a notice through the store).
    let r = renewed(b, &q, &sign(&q)).await;
    assert_eq!(r.slices, 2);
    let until = r.expires_at;
    let mut seen = first;
    loop {
        match next_msg(&mut ws).await {
            ServerMessage::Renewed { expires_at, slices } => {
                assert_eq!((expires_at, slices), (until, 2));
                break;
            }
            ServerMessage::Event(e) => {
                assert_eq!(e.seq, seen + 1, "events in order without gaps");
                seen = e.seq;
            }
            m => panic!("unexpected {m:?}"),
        }
    }

    // Resumed on C without paying: same paid time, next event in sequence.
    let mut ws_c = connect(c, &q, Some(seen + 1), None).await.unwrap();
    let h = hello(&mut ws_c).await;
    assert!(h.resumed);
    assert_eq!(h.expires_at, until);
    let (next, before) = next_event(&mut ws_c).await;
    assert_eq!(next, seen + 1, "resume continues the sequence: {before:?}");
    // The socket on A was superseded (4409).
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(4409));

    // Two payments, two slices, credited once each across the cluster.
    let total = a.credited().await + b.credited().await + c.credited().await;
    assert_eq!(total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_across_instances_are_refused_and_racing_renewals_credit_one_slice() {
    let (_redis, inst, _) = cluster(2).await;
    let (a, b) = (&inst[0], &inst[1]);
    let q = quote(a).await;
    let p1 = sign(&q);
    let r1 = renewed(a, &q, &p1).await;
    assert_eq!(r1.slices, 1);

    // The same payload on B: the recorded answer, no second credit.
    let again = renewed(b, &q, &p1).await;
    assert_eq!(again, r1);
    // The same payload for another session on B: refused.
    let q2 = quote(b).await;
    let (status, body) = renew(b, &q2, &p1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        ErrorBody::from_json(body.as_bytes()).unwrap().error,
        ErrorCode::PaymentUsed
    );

    // One new payload sent to A and B at once: one slice.
    let p2 = sign(&q);
    let (ra, rb) = tokio::join!(renewed(a, &q, &p2), renewed(b, &q, &p2));
    assert_eq!(ra, rb);
    assert_eq!(ra.slices, 2);
    assert_eq!(a.credited().await + b.credited().await, 2);

    // The horizon (2 slices ahead) is shared: B refuses a third slice.
    let (s3, body) = renew(b, &q, &sign(&q)).await;
    assert_eq!(s3, 409, "beyond the prepaid horizon: {body}");
    assert_eq!(
        ErrorBody::from_json(body.as_bytes()).unwrap().error,
        ErrorCode::HorizonExceeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_socket_holder_the_client_resumes_elsewhere_without_paying() {
    let (_redis, mut inst, public) = cluster(2).await;
    let public_port = public.port();
    let lb = Balancer::start(public, inst.iter().map(|i| i.port).collect());
    let client = atomicstream::Client::builder()
        .base_url(format!("http://127.0.0.1:{public_port}"))
        .payer(Arc::new(payer()))
        .policy(atomicstream::SpendPolicy::new(
            x402_types::Amount::from_display("0.01", 6).unwrap(),
        ))
        .max_slices(4)
        .reconnect(atomicstream::ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            max_attempts: 50,
        })
        .build()
        .unwrap();
    let mut s = client.open("s").await.unwrap();
    let mut last: Option<u64> = None;
    let mut killed = false;
    let mut resumed = false;
    let mut lost = 0;
    let mut payments = 0;
    let mut log = Vec::new();
    let started = Instant::now();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("stream stalled")
    {
        if !matches!(e, atomicstream::ClientEvent::Data(_)) {
            log.push(format!("{:.1}s {e:?}", started.elapsed().as_secs_f64()));
        }
        match e {
            atomicstream::ClientEvent::PaymentAccepted { .. } => payments += 1,
            atomicstream::ClientEvent::PaymentRefused { code, .. } => panic!("refused: {code}"),
            atomicstream::ClientEvent::Data(ev) => {
                if let Some(l) = last {
                    assert!(ev.seq > l, "no repeats");
                    assert_eq!(ev.seq, l + 1 + lost, "a gap is reported, never silent");
                }
                lost = 0;
                last = Some(ev.seq);
                if !killed && started.elapsed() > Duration::from_secs(3) {
                    let mut holder = None;
                    for (n, i) in inst.iter().enumerate() {
                        if i.sockets().await == 1 {
                            holder = Some(n);
                        }
                    }
                    inst[holder.expect("one instance holds the socket")].kill();
                    killed = true;
                }
            }
            atomicstream::ClientEvent::Resumed { missed } => {
                resumed = true;
                lost += missed;
            }
            atomicstream::ClientEvent::EventsLost { count } => lost += count,
            atomicstream::ClientEvent::Ended(reason) => {
                assert!(
                    matches!(reason, atomicstream::EndReason::SliceLimit),
                    "{reason:?}"
                );
                break;
            }
            _ => {}
        }
    }
    assert!(
        killed && resumed,
        "the socket holder was killed and the client resumed"
    );
    // The first slice is paid with the upgrade (hello), the others are renewals.
    assert_eq!(payments, 3, "four slices, four payments: {log:#?}");
    assert_eq!(
        s.paid(),
        x402_types::Amount::from(4 * 4000),
        "nothing paid twice: {log:#?}"
    );
    drop(lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_instances_restarted_sessions_and_paid_time_survive() {
    let (_redis, mut inst, _) = cluster(2).await;
    let q = quote(&inst[0]).await;
    let mut ws = connect(&inst[0], &q, None, Some(&sign(&q))).await.unwrap();
    let h = hello(&mut ws).await;
    let (seq, _) = next_event(&mut ws).await;
    drop(ws);
    for i in inst.iter_mut() {
        i.kill();
    }
    for i in inst.iter_mut() {
        i.launch().await;
    }
    let mut ws = connect(&inst[1], &q, Some(seq + 1), None).await.unwrap();
    let h2 = hello(&mut ws).await;
    assert!(h2.resumed);
    assert_eq!(
        h2.expires_at, h.expires_at,
        "paid time survived the restart"
    );
    let (next, _) = next_event(&mut ws).await;
    assert_eq!(next, seq + 1, "events survived too");
    // The payment is still known: replaying it credits nothing new.
    assert_eq!(inst[0].credited().await + inst[1].credited().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_and_nothing_credited_then_service_returns() {
    let (redis, inst, _) = cluster(2).await;
    let a = &inst[0];
    let q = quote(a).await;
    let r = renewed(a, &q, &sign(&q)).await;
    assert_eq!(r.slices, 1);

    // Paused: new payments are refused with 503, nothing is settled.
    redis.signal("-STOP");
    let p = sign(&q);
    let (status, body) = renew(a, &q, &p).await;
    assert_eq!(status, 503, "{body}");
    let e = ErrorBody::from_json(body.as_bytes()).unwrap();
    assert_eq!(e.error, ErrorCode::StoreUnavailable);
    assert!(connect(&inst[1], &q, None, Some(&p)).await.is_err());
    let metrics = reqwest::get(format!("{}/metrics", a.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let store_errors =
        atomicstream_testkit::metric_sum(&metrics, "atomicstream_store_errors_total", "");
    assert!(store_errors >= 1, "the operator sees the outage");
    // Readiness says so (a load balancer stops sending buyers); liveness does not.
    let ready = reqwest::get(format!("{}/readyz", a.http())).await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("store"), "{why}");
    let live = reqwest::get(format!("{}/healthz", a.http())).await.unwrap();
    assert_eq!(live.status(), 200);
    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{}/readyz", a.http()))
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back: the same payment is accepted, once.
    let r = renewed(a, &q, &p).await;
    assert_eq!(r.slices, 2);

    // Restarted (killed, started on its data): state intact, service back.
    let redis = redis.restart();
    let mut ws = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws.is_none() {
        match connect(&inst[1], &q, None, None).await {
            Ok(w) => ws = Some(w),
            Err(e) => {
                let (status, body) = error_body(e);
                assert_eq!(status, 503, "{body:?}");
                assert!(Instant::now() < deadline, "no service after the restart");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let h = hello(ws.as_mut().unwrap()).await;
    assert_eq!(
        h.expires_at, r.expires_at,
        "paid time survived Redis' restart"
    );
    assert_eq!(a.credited().await + inst[1].credited().await, 2);
    drop(redis);
}

/// A TCP load balancer: each connection goes to the next live backend.
struct Balancer {
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    fn start(public: Public, backends: Vec<u16>) -> Balancer {
        public.0.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(public.0).unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    continue;
                };
                let backends = backends.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for k in 0..backends.len() {
                        let b = backends[(start + k) % backends.len()];
                        if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", b)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { task }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A facilitator whose first settlement hangs (the instance asking it dies
/// meanwhile); later ones go through to the embedded facilitator.
struct HangsOnce {
    inner: x402_server::EmbeddedFacilitator,
    settles: AtomicUsize,
}

#[async_trait::async_trait]
impl x402_server::Facilitator for HangsOnce {
    async fn verify(
        &self,
        req: &x402_types::FacilitatorRequest,
    ) -> Result<x402_types::VerifyResponse, x402_server::FacilitatorError> {
        self.inner.verify(req).await
    }

    async fn settle(
        &self,
        req: &x402_types::FacilitatorRequest,
    ) -> Result<x402_types::SettleResponse, x402_server::FacilitatorError> {
        if self.settles.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.inner.settle(req).await
    }

    async fn supported(
        &self,
    ) -> Result<x402_types::SupportedResponse, x402_server::FacilitatorError> {
        self.inner.supported().await
    }

    fn describe(&self) -> String {
        "hangs once".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_whose_instance_died_is_taken_over_and_credited_once() {
    let f = Arc::new(HangsOnce {
        inner: x402_server::EmbeddedFacilitator::default(),
        settles: AtomicUsize::new(0),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fport = l.local_addr().unwrap().port();
    tokio::spawn(x402_server::serve_facilitator(l, f.clone()));
    let redis = Redis::start_persistent();
    let public = Public::bind();
    let section = format!("kind = \"http\"\nurl = \"http://127.0.0.1:{fport}\"");
    let mut a = Instance::start_with(&redis, &public, &section).await;
    let b = Instance::start_with(&redis, &public, &section).await;
    let q = quote(&a).await;
    let p = sign(&q);

    // A claims the payment and asks the facilitator, which hangs; A dies.
    let pending = tokio::spawn({
        let (url, token, p) = (a.http(), q.token.clone(), p.clone());
        async move {
            let _ = reqwest::Client::new()
                .post(format!("{url}/v2/renew/s?t={token}"))
                .header(PathVersion::V2.payment_header(), p)
                .send()
                .await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.settles.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "A never asked the facilitator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    pending.abort();

    // The payer retries the same payment on B: while A's heartbeat lasts it
    // is pending (never settled twice at once), then B takes it over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let (status, body) = renew(&b, &q, &p).await;
        match status {
            200 => break RenewResponse::from_json(body.as_bytes()).unwrap(),
            202 => {}
            s => panic!("unexpected {s}: {body}"),
        }
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(r.slices, 1);
    assert_eq!(f.inner.ledger().len(), 1, "settled once");
    assert_eq!(
        f.settles.load(Ordering::SeqCst),
        2,
        "asked twice: A (lost), B"
    );
    // Retried again: the recorded answer.
    assert_eq!(renewed(&b, &q, &p).await, r);
    assert_eq!(b.credited().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_keeps_its_event_reader_connected() {
    // The reader blocks in XREAD for up to a second at a time; a connection
    // whose answers time out sooner drops it on every idle second, and the
    // events published while it reconnects wait half a second.
    let (redis, inst, _) = cluster(1).await;
    let q = quote_on(&inst[0], "api").await;
    let mut ws = connect(&inst[0], &q, None, Some(&sign(&q))).await.unwrap();
    hello(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let publisher = x402_server::RedisStore::connect(&redis.url(), "x402:", Duration::from_secs(1))
        .await
        .unwrap();
    publisher
        .publish("api", 1024, &serde_json::json!({"after": "idle"}))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        ServerMessage::Event(e) => assert_eq!(e.data.get(), r#"{"after":"idle"}"#),
        m => panic!("expected the event, got {m:?}"),
    }
    let log = inst[0].log();
    assert!(
        !log.contains("event reader interrupted"),
        "the reader was dropped while idle: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_from_another_process_reach_every_instance_in_order() {
    let (redis, inst, _) = cluster(2).await;
    let mut sockets = Vec::new();
    for i in &inst {
        let q = quote_on(i, "api").await;
        let mut ws = connect(i, &q, None, Some(&sign(&q))).await.unwrap();
        hello(&mut ws).await;
        sockets.push(ws);
    }
    let publisher = x402_server::RedisStore::connect(&redis.url(), "x402:", Duration::from_secs(1))
        .await
        .unwrap();
    for n in 0..5 {
        let seq = publisher
            .publish("api", 1024, &serde_json::json!({"n": n}))
            .await
            .unwrap();
        assert_eq!(seq, n);
    }
    for ws in &mut sockets {
        for n in 0..5u64 {
            match next_msg(ws).await {
                ServerMessage::Event(e) => {
                    assert_eq!(e.seq, n);
                    assert_eq!(e.data.get(), format!("{{\"n\":{n}}}"));
                }
                m => panic!("expected an event, got {m:?}"),
            }
        }
    }
}
