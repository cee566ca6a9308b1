//! The async driver on paused time with in-memory transports: the money
//! path (reservations committed, held after a refusal, kept for good when
//! money may have moved), the session's keep-alive pings sent, the
//! silent-socket drop and 1009 on an oversized frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use atomicstream::driver::{Driver, DriverHandle};
use tokio::sync::mpsc;
use x402_payer::{Budget, BudgetScope, EvmExactPayer, LocalSigner, SpendPolicy};
use x402_session::{ClientConfig, EndReason, ReconnectPolicy};
use x402_transport::{
    ConnectError, HttpResponse, HttpTransport, Method, TransportError, WsConnection, WsConnector,
    WsFrame,
};
use x402_types::{
    Amount, ErrorBody, ErrorCode, Hello, Network, PathVersion, PaymentDetails, Pricing, Schema,
    ServerMessage, StreamInfo,
};

const KEY: &str = atomicstream_testkit::DEV_KEY;
const BASE: &str = "http://test.local";
const PRICE: u64 = 1_000;

fn schema() -> Vec<u8> {
    Schema {
        protocol: "ws402".into(),
        version: PathVersion::V2,
        websocket_endpoint: "ws://test.local/v2/stream/s?t=tok".into(),
        pricing: Pricing {
            price_per_second: 0.0,
            currency: "USDC".into(),
            estimated_duration: 20,
            price_per_minute: None,
            price_per_slice: None,
        },
        payment_details: PaymentDetails {
            scheme: "exact".into(),
            network: Network::BASE_SEPOLIA,
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_amount_required: Amount::from(PRICE),
            max_timeout_seconds: 30,
            extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
        },
        stream: StreamInfo {
            id: "s".into(),
            title: "s".into(),
            description: "d".into(),
        },
        x402_version: None,
        error: None,
        accepts: None,
    }
    .to_json()
    .into_bytes()
}

fn error(status: u16, code: ErrorCode) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![],
        body: serde_json::to_vec(&ErrorBody {
            error: code,
            message: String::new(),
            accepts: None,
            x402_version: None,
            retry_after: None,
        })
        .unwrap(),
    }
}

/// Answers the schema, then each renewal with the next scripted answer.
struct Http {
    renewals: Mutex<VecDeque<HttpResponse>>,
}

#[async_trait]
impl HttpTransport for Http {
    async fn request(
        &self,
        method: Method,
        _url: &str,
        _headers: &[(String, String)],
    ) -> Result<HttpResponse, TransportError> {
        match method {
            Method::Get => Ok(HttpResponse {
                status: 402,
                headers: vec![],
                body: schema(),
            }),
            Method::Post => self
                .renewals
                .lock()
                .unwrap()
                .pop_front()
                .ok_or_else(|| TransportError::connection("no more answers")),
        }
    }
}

/// Each upgrade succeeds; the test feeds the socket's frames.
struct Ws {
    sockets: Mutex<VecDeque<mpsc::Receiver<Result<WsFrame, TransportError>>>>,
    connects: Mutex<u32>,
    /// Every text frame the driver sent, on any socket.
    sent: Arc<Mutex<Vec<String>>>,
}

/// A socket fed by the test; what the driver sends is recorded.
struct Socket(
    mpsc::Receiver<Result<WsFrame, TransportError>>,
    Arc<Mutex<Vec<String>>>,
);

#[async_trait]
impl WsConnection for Socket {
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>> {
        self.0.recv().await
    }
    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        self.1.lock().unwrap().push(text);
        Ok(())
    }
    async fn close(&mut self, _code: u16) -> Result<(), TransportError> {
        Ok(())
    }
}

#[async_trait]
impl WsConnector for Ws {
    async fn connect(
        &self,
        _url: &str,
        _headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        *self.connects.lock().unwrap() += 1;
        match self.sockets.lock().unwrap().pop_front() {
            Some(rx) => Ok((
                HttpResponse {
                    status: 101,
                    ..Default::default()
                },
                Box::new(Socket(rx, self.sent.clone())),
            )),
            None => Err(ConnectError::Failed(TransportError::connection("refused"))),
        }
    }
}

fn hello(expires_in: u64) -> WsFrame {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    WsFrame::Text(
        ServerMessage::Hello(Hello {
            session_id: "q".into(),
            stream_id: "s".into(),
            version: PathVersion::V2,
            slice_seconds: 20,
            expires_at: now + expires_in,
            server_time: now,
            renew_url: "http://test.local/v2/renew/s?t=tok".into(),
            resumed: false,
            next_seq: 0,
        })
        .to_json()
        .into(),
    )
}

struct Setup {
    budget: Arc<Budget>,
    ws: Arc<Ws>,
    sockets: Vec<mpsc::Sender<Result<WsFrame, TransportError>>>,
    driver: Driver,
    handle: DriverHandle,
}

fn setup(renewals: Vec<HttpResponse>, sockets: usize) -> Setup {
    let budget = Arc::new(Budget::new(BudgetScope::Lifetime, Amount::from(10 * PRICE)));
    let policy = SpendPolicy::new(Amount::from(PRICE)).with_shared_budget(budget.clone());
    let mut txs = Vec::new();
    let mut rxs = VecDeque::new();
    for _ in 0..sockets {
        let (tx, rx) = mpsc::channel(16);
        txs.push(tx);
        rxs.push_back(rx);
    }
    let ws = Arc::new(Ws {
        sockets: Mutex::new(rxs),
        connects: Mutex::new(0),
        sent: Arc::default(),
    });
    let mut cfg = ClientConfig::new(BASE, PathVersion::V2, "s");
    cfg.reconnect = ReconnectPolicy {
        max_attempts: 2,
        ..ReconnectPolicy::default()
    };
    let (driver, handle) = Driver::new(
        cfg,
        Arc::new(Http {
            renewals: Mutex::new(renewals.into()),
        }),
        ws.clone(),
        Arc::new(EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap())),
        policy,
        None,
    )
    .unwrap();
    Setup {
        budget,
        ws,
        sockets: txs,
        driver,
        handle,
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn accepted_payments_commit_and_refused_ones_stay_counted_until_valid_before() {
    // The renewal is refused (402 payment_invalid), then the re-signed one too.
    let s = setup(
        vec![
            error(402, ErrorCode::PaymentInvalid),
            error(402, ErrorCode::PaymentInvalid),
        ],
        1,
    );
    let budget = s.budget.clone();
    s.sockets[0].send(Ok(hello(20))).await.unwrap();
    let task = tokio::spawn(s.driver.run());
    settle().await;
    assert_eq!(
        budget.committed(),
        Amount::from(PRICE),
        "the first slice is committed"
    );
    // The renewal margin (4 s before the end) passes: two refused renewals.
    tokio::time::sleep(Duration::from_secs(17)).await;
    settle().await;
    assert_eq!(
        budget.reserved(),
        Amount::from(2 * PRICE),
        "both refused authorizations are still spendable: still counted"
    );
    // Long after their validBefore (30 s + 60 s of skew), they are released.
    tokio::time::sleep(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(budget.reserved(), Amount::ZERO);
    assert_eq!(budget.committed(), Amount::from(PRICE));
    drop(s.handle);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_payment_that_may_have_moved_money_stays_spent() {
    let s = setup(vec![error(409, ErrorCode::PaymentUsed)], 1);
    let budget = s.budget.clone();
    s.sockets[0].send(Ok(hello(20))).await.unwrap();
    let task = tokio::spawn(s.driver.run());
    tokio::time::sleep(Duration::from_secs(17)).await;
    settle().await;
    assert_eq!(budget.committed(), Amount::from(2 * PRICE));
    tokio::time::sleep(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(
        budget.committed(),
        Amount::from(2 * PRICE),
        "never released"
    );
    drop(s.handle);
    task.abort();
}

/// The session's keep-alive and idle rules, performed by the driver: a ping
/// every 15 s, and after 45 s without a frame the socket is dropped and a
/// new one opened (paid time remains: without a payment).
#[tokio::test(start_paused = true)]
async fn the_session_pings_and_a_silent_socket_is_dropped_and_reconnected() {
    let s = setup(vec![], 2);
    s.sockets[0].send(Ok(hello(600))).await.unwrap();
    s.sockets[1].send(Ok(hello(600))).await.unwrap();
    let ws = s.ws.clone();
    let budget = s.budget.clone();
    let keep = s.sockets;
    let task = tokio::spawn(s.driver.run());
    settle().await;
    assert_eq!(*ws.connects.lock().unwrap(), 1);
    assert!(ws.sent.lock().unwrap().is_empty(), "no ping before 15 s");
    tokio::time::sleep(Duration::from_millis(15_100)).await;
    settle().await;
    assert_eq!(
        *ws.sent.lock().unwrap(),
        vec![x402_types::ClientMessage::PING.to_string()]
    );
    // Unanswered pings (15 s, 30 s); still the first socket until 45 s of silence.
    tokio::time::sleep(Duration::from_millis(29_700)).await;
    settle().await;
    assert_eq!(ws.sent.lock().unwrap().len(), 2);
    assert_eq!(*ws.connects.lock().unwrap(), 1);
    // At 45 s the peer counts as dead: reconnected after the first backoff (at most 200 ms).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    settle().await;
    assert_eq!(
        *ws.connects.lock().unwrap(),
        2,
        "reconnected after the idle drop"
    );
    assert_eq!(
        budget.committed(),
        Amount::from(PRICE),
        "paid time remained: no second payment"
    );
    drop(keep);
    drop(s.handle);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_oversized_frame_closes_1009_and_ends_the_session() {
    let s = setup(vec![], 1);
    s.sockets[0].send(Ok(hello(600))).await.unwrap();
    s.sockets[0]
        .send(Err(TransportError::frame("frame too big")))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), s.driver.run())
        .await
        .unwrap();
    assert!(
        matches!(&reason, EndReason::ProtocolViolation(m) if m.contains("1009")),
        "{reason:?}"
    );
}

/// With instant transports, a session reaches `hello` without waiting on any
/// timer. (It used to await an interval's first tick, which tokio rounds up to
/// the next millisecond: most of the handshake's overhead in `cargo xtask bench`.)
#[tokio::test(start_paused = true)]
async fn the_handshake_waits_on_no_timer() {
    let mut s = setup(vec![], 1);
    s.sockets[0].send(Ok(hello(20))).await.unwrap();
    // Off the timer's millisecond grid, as real time always is.
    tokio::time::advance(Duration::from_micros(300)).await;
    let t0 = tokio::time::Instant::now();
    let task = tokio::spawn(s.driver.run());
    loop {
        match s.handle.events.recv().await {
            Some(x402_session::ClientEvent::Hello(_)) => break,
            Some(_) => continue,
            None => panic!("the driver stopped before hello"),
        }
    }
    // Paused time only moves when every task waits on a timer.
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "a timer was awaited before hello"
    );
    task.abort();
}

/// Frames that arrive together are read ahead before their events go out: every
/// event still reaches the application once, in order, and the progress counts them.
#[tokio::test]
async fn frames_read_ahead_reach_the_application_in_order_and_are_counted() {
    let mut s = setup(vec![], 1);
    let tx = s.sockets[0].clone();
    let feeder = tokio::spawn(async move {
        tx.send(Ok(hello(20))).await.unwrap();
        for seq in 0..500u64 {
            let e = ServerMessage::Event(x402_types::Event {
                seq,
                data: x402_types::EventData::from_value(&serde_json::json!({"i": seq})).unwrap(),
                ts: None,
            });
            tx.send(Ok(WsFrame::Text(e.to_json().into())))
                .await
                .unwrap();
        }
    });
    let progress = s.handle.progress.clone();
    let task = tokio::spawn(s.driver.run());
    let mut next = 0u64;
    while next < 500 {
        match s.handle.events.recv().await {
            Some(x402_session::ClientEvent::Data(e)) => {
                assert_eq!(e.seq, next, "in order, none missing, none twice");
                next += 1;
            }
            Some(x402_session::ClientEvent::Ended(r)) => panic!("ended: {r:?}"),
            Some(_) => {}
            None => panic!("the driver stopped"),
        }
    }
    feeder.await.unwrap();
    // The progress is published after each burst; the last one has been drained.
    for _ in 0..100 {
        if progress.lock().unwrap().events == 500 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(progress.lock().unwrap().events, 500);
    task.abort();
}

/// What one scripted upgrade does: a socket fed by the test, or a failure.
type Outcome = Result<mpsc::Receiver<Result<WsFrame, TransportError>>, ConnectError>;

/// Answers each upgrade with the next scripted outcome, and records what was asked.
struct Scripted {
    outcomes: Mutex<VecDeque<Outcome>>,
    /// (url, header names) of every upgrade.
    asked: Mutex<Vec<(String, Vec<String>)>>,
}

#[async_trait]
impl WsConnector for Scripted {
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        self.asked.lock().unwrap().push((
            url.to_string(),
            headers
                .iter()
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect(),
        ));
        let next = self.outcomes.lock().unwrap().pop_front();
        match next {
            Some(Ok(rx)) => Ok((
                HttpResponse {
                    status: 101,
                    ..Default::default()
                },
                Box::new(Socket(rx, Arc::default())),
            )),
            Some(Err(e)) => Err(e),
            None => Err(ConnectError::Failed(TransportError::connection("no more"))),
        }
    }
}

/// The schema fails with `error`; the renewals are never asked for.
struct Down(TransportError);

#[async_trait]
impl HttpTransport for Down {
    async fn request(
        &self,
        _: Method,
        _: &str,
        _: &[(String, String)],
    ) -> Result<HttpResponse, TransportError> {
        Err(self.0.clone())
    }
}

fn driver_with(
    http: Arc<dyn HttpTransport>,
    ws: Arc<dyn WsConnector>,
) -> (Arc<Budget>, Driver, DriverHandle) {
    let budget = Arc::new(Budget::new(BudgetScope::Lifetime, Amount::from(10 * PRICE)));
    let policy = SpendPolicy::new(Amount::from(PRICE)).with_shared_budget(budget.clone());
    let (driver, handle) = Driver::new(
        ClientConfig::new(BASE, PathVersion::V2, "s"),
        http,
        ws,
        Arc::new(EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap())),
        policy,
        None,
    )
    .unwrap();
    (budget, driver, handle)
}

fn scripted(outcomes: Vec<Outcome>) -> Arc<Scripted> {
    Arc::new(Scripted {
        outcomes: Mutex::new(outcomes.into()),
        asked: Mutex::new(Vec::new()),
    })
}

fn schema_only() -> Arc<Http> {
    Arc::new(Http {
        renewals: Mutex::new(VecDeque::new()),
    })
}

/// A server that cannot be reached at the start ends the session at once,
/// with the URL and the cause, and nothing is signed.
#[tokio::test(start_paused = true)]
async fn an_unreachable_server_ends_the_session_at_once_naming_the_cause() {
    let ws = scripted(vec![]);
    let down = TransportError::new(x402_transport::TransportErrorKind::Refused, "");
    let (budget, driver, handle) = driver_with(Arc::new(Down(down.clone())), ws.clone());
    let t0 = tokio::time::Instant::now();
    let reason = driver.run().await;
    assert_eq!(reason, EndReason::Stopped);
    assert_eq!(t0.elapsed(), Duration::ZERO, "no retry, no backoff");
    let p = handle.progress.lock().unwrap().clone();
    let f = p.unreachable.expect("the cause is kept");
    assert_eq!(f.url, "http://test.local/v2/schema/s");
    assert_eq!(f.error, down);
    assert!(ws.asked.lock().unwrap().is_empty());
    assert_eq!(budget.reserved(), Amount::ZERO);
    assert_eq!(budget.committed(), Amount::ZERO);
}

/// The first upgrade carries the first payment: when it cannot connect the
/// payment never left, so it is released and the session ends at once. The
/// URL named has no token.
#[tokio::test(start_paused = true)]
async fn a_first_upgrade_that_cannot_connect_releases_its_payment_and_ends() {
    let refused = TransportError::new(x402_transport::TransportErrorKind::Tls, "corrupt");
    let ws = scripted(vec![Err(ConnectError::Failed(refused.clone()))]);
    let (budget, driver, handle) = driver_with(schema_only(), ws.clone());
    let reason = driver.run().await;
    assert_eq!(reason, EndReason::Stopped);
    let asked = ws.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].1.contains(&"payment-signature".to_string()));
    let f = handle.progress.lock().unwrap().unreachable.clone().unwrap();
    assert_eq!(f.url, "ws://test.local/v2/stream/s");
    assert_eq!(f.error, refused);
    assert_eq!(
        budget.reserved(),
        Amount::ZERO,
        "the unsent payment is released"
    );
    assert_eq!(budget.committed(), Amount::ZERO);
}

/// A failure after the request may have left (a broken connection, a
/// timeout) is retried as before: the payment may have arrived.
#[tokio::test(start_paused = true)]
async fn an_upgrade_that_may_have_reached_the_server_is_retried() {
    let (_budget, driver, handle) = {
        let budget = Arc::new(Budget::new(BudgetScope::Lifetime, Amount::from(10 * PRICE)));
        let mut cfg = ClientConfig::new(BASE, PathVersion::V2, "s");
        cfg.reconnect = ReconnectPolicy {
            max_attempts: 2,
            ..ReconnectPolicy::default()
        };
        let (d, h) = Driver::new(
            cfg,
            schema_only(),
            scripted(
                (0..3)
                    .map(|_| Err(ConnectError::Failed(TransportError::timeout("handshake"))))
                    .collect(),
            ),
            Arc::new(EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap())),
            SpendPolicy::new(Amount::from(PRICE)).with_shared_budget(budget.clone()),
            None,
        )
        .unwrap();
        (budget, d, h)
    };
    let reason = driver.run().await;
    assert!(
        matches!(reason, EndReason::ConnectionLost { attempts: 2 }),
        "{reason:?}"
    );
    let p = handle.progress.lock().unwrap().clone();
    assert!(p.unreachable.is_none());
    assert!(p.last_failure.unwrap().error.is_timeout());
}

fn resumed_hello(expires_in: u64, next_seq: u64) -> WsFrame {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    WsFrame::Text(
        ServerMessage::Hello(Hello {
            session_id: "q".into(),
            stream_id: "s".into(),
            version: PathVersion::V2,
            slice_seconds: 20,
            expires_at: now + expires_in,
            server_time: now,
            renew_url: "http://test.local/v2/renew/s?t=saved".into(),
            resumed: true,
            next_seq,
        })
        .to_json()
        .into(),
    )
}

fn saved_point(expires_in: i64) -> x402_session::ResumePoint {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    x402_session::ResumePoint {
        websocket: "ws://test.local/v2/stream/s?t=saved".into(),
        next_seq: Some(41),
        slices: 3,
        expires_at: (now + expires_in) as u64,
    }
}

/// A saved session is taken up with its own token from the next event,
/// without a payment, and its resume point follows it.
#[tokio::test(start_paused = true)]
async fn a_resumed_session_reconnects_with_its_token_without_paying() {
    let (tx, rx) = mpsc::channel(16);
    tx.send(Ok(resumed_hello(15, 41))).await.unwrap();
    let ws = scripted(vec![Ok(rx)]);
    let (budget, driver, mut handle) = driver_with(schema_only(), ws.clone());
    let driver = driver.resume_from(&saved_point(15)).unwrap();
    let task = tokio::spawn(driver.run());
    loop {
        match handle.events.recv().await {
            Some(x402_session::ClientEvent::Resumed { missed }) => {
                assert_eq!(missed, 0);
                break;
            }
            Some(x402_session::ClientEvent::Ended(r)) => panic!("ended: {r:?}"),
            Some(_) => {}
            None => panic!("driver stopped"),
        }
    }
    let asked = ws.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].0.contains("t=saved") && asked[0].0.contains("from=41"),
        "{asked:?}"
    );
    assert!(asked[0].1.is_empty(), "no payment header: {asked:?}");
    assert_eq!(budget.committed(), Amount::ZERO);
    assert_eq!(budget.reserved(), Amount::ZERO);
    let point = handle.progress.lock().unwrap().resume.clone().unwrap();
    assert!(point.websocket.contains("t=saved"));
    assert_eq!((point.slices, point.next_seq), (3, Some(41)));
    drop(tx);
    task.abort();
}

/// A saved session whose paid time is over (the server answers 402) buys
/// the next slice on the same token, within the policy.
#[tokio::test(start_paused = true)]
async fn a_resumed_session_without_paid_time_pays_on_its_own_token() {
    let (tx, rx) = mpsc::channel(16);
    tx.send(Ok(resumed_hello(20, 41))).await.unwrap();
    let ws = scripted(vec![
        Err(ConnectError::Refused(error(
            402,
            ErrorCode::PaymentRequired,
        ))),
        Ok(rx),
    ]);
    let (budget, driver, mut handle) = driver_with(schema_only(), ws.clone());
    let driver = driver.resume_from(&saved_point(-30)).unwrap();
    let task = tokio::spawn(driver.run());
    loop {
        match handle.events.recv().await {
            Some(x402_session::ClientEvent::PaymentAccepted { slice, .. }) => {
                assert_eq!(slice, 4, "numbered after the saved slices");
                break;
            }
            Some(x402_session::ClientEvent::Ended(r)) => panic!("ended: {r:?}"),
            Some(_) => {}
            None => panic!("driver stopped"),
        }
    }
    let asked = ws.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert!(asked[0].1.is_empty(), "first without payment");
    assert!(
        asked[1].0.contains("t=saved"),
        "the same session: {asked:?}"
    );
    assert!(asked[1].1.contains(&"payment-signature".to_string()));
    assert_eq!(budget.committed(), Amount::from(PRICE));
    drop(tx);
    task.abort();
}

#[test]
fn a_resume_point_of_another_server_is_refused() {
    let (_b, driver, _h) = driver_with(schema_only(), scripted(vec![]));
    let mut p = saved_point(10);
    p.websocket = "ws://elsewhere.example/v2/stream/s?t=saved".into();
    assert!(matches!(
        driver.resume_from(&p),
        Err(x402_session::UsageError::Config(_))
    ));
    // Debug never shows the token.
    assert!(!format!("{p:?}").contains("saved"), "{p:?}");
}
