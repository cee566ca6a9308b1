//! The multi-instance payment protocol under property tests: several real
//! servers (each on its own runtime, so that killing one kills every task it
//! runs, as a dying process would) share one in-memory store and one
//! scripted facilitator that answers raw HTTP bodies, so the real client and
//! the real classifier of facilitator answers are in the loop.
//!
//! Random schedules race payloads across instances, hang up requests at
//! random points, kill an owner mid-settlement, and make the facilitator
//! slow, lost, pending or failing. After every payload has been retried to
//! a final answer on a living instance:
//! - every settled payment is credited exactly once, and only those;
//! - every payload's answer is its own slice, and no paid slice is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use proptest::prelude::*;
use x402_server::{
    Config, EmbeddedFacilitator, Facilitator, HttpFacilitator, Limits, MemoryStore, PaymentStore,
    ServerBuilder,
};
use x402_types::{FacilitatorRequest, Offer, RenewResponse};

use crate::harness::{dev_payer, quote_v2, stream};

const SECRET: &str = "instances-test-secret-instances-test-secret";

/// What the facilitator does on one `/settle` call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Settles, answers at once.
    None,
    /// Settles, answers after this many milliseconds.
    Slow(u64),
    /// Settles, answers garbage.
    Garbage,
    /// Settles, answers `settlement_pending`.
    Pending,
    /// Answers 500 without settling.
    Error500,
}

/// A facilitator with a ledger: each authorization settles once; a replay
/// is refused as the official facilitator refuses it, naming the earlier
/// transaction. Answers are raw bodies.
struct Script {
    verifier: EmbeddedFacilitator,
    faults: Mutex<Vec<Fault>>,
    ledger: Mutex<HashMap<String, String>>,
}

async fn verify(State(s): State<Arc<Script>>, body: Bytes) -> Response {
    let req = FacilitatorRequest::from_json(&body).unwrap();
    axum::Json(s.verifier.verify(&req).await.unwrap()).into_response()
}

async fn settle(State(s): State<Arc<Script>>, body: Bytes) -> Response {
    let req = FacilitatorRequest::from_json(&body).unwrap();
    let a = &req.payment_payload.exact_evm().unwrap().authorization;
    let id = format!("{}:{}", a.from, a.nonce);
    let fault = {
        let mut f = s.faults.lock().unwrap();
        if f.is_empty() {
            Fault::None
        } else {
            f.remove(0)
        }
    };
    if fault == Fault::Error500 {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let (fresh, tx) = {
        let mut ledger = s.ledger.lock().unwrap();
        let n = ledger.len();
        let mut fresh = false;
        let tx = ledger
            .entry(id)
            .or_insert_with(|| {
                fresh = true;
                format!("0x{:064x}", n + 1)
            })
            .clone();
        (fresh, tx)
    };
    let body = if fresh {
        format!(
            r#"{{"success":true,"payer":"{}","transaction":"{tx}","network":"eip155:84532","amount":"{}"}}"#,
            a.from, a.value
        )
    } else {
        format!(
            r#"{{"success":false,"errorReason":"invalid_exact_evm_nonce_already_used","payer":"{}","transaction":"{tx}","network":"eip155:84532","amount":"{}"}}"#,
            a.from, a.value
        )
    };
    match fault {
        Fault::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Fault::Garbage => return "<html>gateway timeout</html>".into_response(),
        Fault::Pending => {
            return (
                [("content-type", "application/json")],
                r#"{"success":false,"errorReason":"settlement_pending","transaction":"","network":"eip155:84532"}"#,
            )
                .into_response();
        }
        Fault::None | Fault::Error500 => {}
    }
    ([("content-type", "application/json")], body).into_response()
}

/// The scripted facilitator, served on loopback by `driver`; its URL.
fn facilitator(driver: &tokio::runtime::Runtime, faults: Vec<Fault>) -> (Arc<Script>, String) {
    let script = Arc::new(Script {
        verifier: EmbeddedFacilitator::default(),
        faults: Mutex::new(faults),
        ledger: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .with_state(script.clone());
    let url = driver.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    });
    (script, url)
}

/// A fresh quote from an instance: the offer to sign and the session's stream URL.
async fn quote(http: &str) -> (Offer, String) {
    let (schema, offer) = quote_v2(&reqwest::Client::new(), http, "s").await;
    (offer, schema.websocket_endpoint)
}

/// One server instance on its own runtime.
struct Instance {
    name: String,
    http: String,
    rt: Option<tokio::runtime::Runtime>,
}

fn start_instance(store: &MemoryStore, name: &str, facilitator: &str) -> Instance {
    start_on(Arc::new(store.instance_handle(name)), name, facilitator)
}

fn start_on(handle: Arc<dyn PaymentStore>, name: &str, facilitator: &str) -> Instance {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some(SECRET.into());
    cfg.limits = Limits {
        payment_wait_secs: 1,
        facilitator_timeout_secs: 2,
        horizon_slices: 10,
        ..Limits::default()
    };
    cfg.streams = vec![stream("s", 60, 60)];
    let remote = HttpFacilitator::new(facilitator, Duration::from_secs(2)).unwrap();
    let http = rt.block_on(async {
        let server = ServerBuilder::new(cfg)
            .facilitator(Arc::new(remote))
            .store(handle)
            .bind()
            .await
            .unwrap();
        let http = server.http_base().to_string();
        server.spawn();
        http
    });
    Instance {
        name: name.into(),
        http,
        rt: Some(rt),
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Instance {
    fn alive(&self) -> bool {
        self.rt.is_some()
    }

    /// The process dies: every task it runs stops where it is.
    fn kill(&mut self, store: &MemoryStore) {
        store.kill(&self.name);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Send payload `payment` to instance `to`; hang up after `hang_up` ms if set.
    Send {
        payment: usize,
        to: usize,
        hang_up: Option<u64>,
    },
    /// Kill instance `which` (never the last one alive).
    Kill { which: usize },
    /// Let time pass.
    Wait(u64),
}

const INSTANCES: usize = 3;
const PAYMENTS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..PAYMENTS, 0..INSTANCES, prop::option::of(0u64..15))
            .prop_map(|(payment, to, hang_up)| Step::Send { payment, to, hang_up }),
        1 => (0..INSTANCES).prop_map(|which| Step::Kill { which }),
        2 => (0u64..80).prop_map(Step::Wait),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => Just(Fault::None),
        2 => (0u64..400).prop_map(Fault::Slow),
        1 => Just(Fault::Garbage),
        1 => Just(Fault::Pending),
        1 => Just(Fault::Error500),
    ]
}

/// POSTs a payment; `None` when the client hung up.
async fn send(url: &str, payment: &str, hang_up: Option<u64>) -> Option<(u16, Vec<u8>)> {
    let client = reqwest::Client::new();
    let req = client
        .post(url)
        .header("PAYMENT-SIGNATURE", payment)
        .timeout(Duration::from_secs(5))
        .send();
    let r = match hang_up {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), req)
            .await
            .ok()?,
        None => req.await,
    };
    let r = r.ok()?;
    let status = r.status().as_u16();
    Some((status, r.bytes().await.ok()?.to_vec()))
}

fn renew_url(http: &str, session_url: &str) -> String {
    // The renew URL of the quote, on this instance.
    let path = &session_url[session_url.find("/v2/").unwrap()..];
    format!("{http}{}", path.replace("/stream/", "/renew/"))
}

fn run(steps: Vec<Step>, faults: Vec<Fault>, swept_before_retry: bool) {
    let store = MemoryStore::new("driver");
    let driver = tokio::runtime::Runtime::new().unwrap();
    let (script, f_url) = facilitator(&driver, faults);
    let mut instances: Vec<Instance> = (0..INSTANCES)
        .map(|i| start_instance(&store, &format!("i{i}"), &f_url))
        .collect();
    let payer = dev_payer();
    driver.block_on(async {
        // One quote (one session) from instance 0; three payloads for it.
        let (offer, ws) = quote(&instances[0].http).await;
        let payments: Vec<String> = (0..PAYMENTS)
            .map(|_| payer.sign(&offer).unwrap().to_header())
            .collect();
        let mut inflight = Vec::new();
        for s in steps {
            match s {
                Step::Send {
                    payment,
                    to,
                    hang_up,
                } => {
                    if !instances[to].alive() {
                        continue;
                    }
                    let url = renew_url(&instances[to].http, &ws);
                    let p = payments[payment].clone();
                    inflight.push(tokio::spawn(async move { send(&url, &p, hang_up).await }));
                }
                Step::Kill { which } => {
                    let alive = instances.iter().filter(|i| i.alive()).count();
                    if alive > 1 && instances[which].alive() {
                        instances[which].kill(&store);
                    }
                }
                Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        }
        for t in inflight {
            let _ = t.await;
        }
        if swept_before_retry {
            // No client has retried: what was settled is credited already.
            let settled = script.ledger.lock().unwrap().len() as u64;
            assert!(settled > 0, "the facilitator settled before the owner died");
            let mut credited = 0;
            for _ in 0..40 {
                credited = store.credited_slices();
                if credited == settled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(credited, settled, "the sweep took the settlement over");
        }
        // Every payload retried (as its client would) on a living instance
        // until it has a final answer.
        let living: Vec<String> = instances
            .iter()
            .filter(|i| i.alive())
            .map(|i| i.http.clone())
            .collect();
        let mut answers = Vec::new();
        for (n, p) in payments.iter().enumerate() {
            let url = renew_url(&living[n % living.len()], &ws);
            let mut last = None;
            for _ in 0..60 {
                match send(&url, p, None).await {
                    Some((202, _)) | Some((503, _)) | None => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Some(a) => {
                        last = Some(a);
                        break;
                    }
                }
            }
            let (status, body) = last.expect("no final answer within 15 s");
            assert_eq!(
                status,
                200,
                "payload {n}: {}",
                String::from_utf8_lossy(&body)
            );
            answers.push(serde_json::from_slice::<RenewResponse>(&body).unwrap());
        }
        // Settled exactly once each on the facilitator, credited exactly once each.
        assert_eq!(
            script.ledger.lock().unwrap().len(),
            PAYMENTS,
            "settled once each"
        );
        let slices: BTreeSet<u64> = answers.iter().map(|a| a.slices).collect();
        assert_eq!(
            slices,
            (1..=PAYMENTS as u64).collect::<BTreeSet<u64>>(),
            "each payload its own slice: {answers:?}"
        );
        let session = answers[0].session_id.clone();
        let shared = store.load_session(&session).await.unwrap();
        assert_eq!(shared.state.slices, PAYMENTS as u64, "credited once each");
        assert!(shared.state.in_flight.is_empty(), "nothing left settling");
        // No paid second lost: paid time is one slice per payment from the first credit.
        let first = answers.iter().min_by_key(|a| a.slices).unwrap();
        let last = answers.iter().max_by_key(|a| a.slices).unwrap();
        assert!(
            last.expires_at >= first.expires_at + 60 * (PAYMENTS as u64 - 1),
            "{answers:?}"
        );
    });
    drop(instances);
    driver.shutdown_background();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 20, .. ProptestConfig::default() })]

    #[test]
    fn every_settled_payment_is_credited_exactly_once(
        steps in prop::collection::vec(step(), 1..14),
        faults in prop::collection::vec(fault(), 0..6),
    ) {
        run(steps, faults, false);
    }
}

/// The owner dies while the facilitator is settling: the survivor's sweep
/// takes the settlement over without any client retry, and the payment is
/// credited once.
#[test]
fn an_owner_dying_mid_settlement_is_taken_over_by_the_sweep() {
    run(
        vec![
            Step::Send {
                payment: 0,
                to: 0,
                hang_up: Some(50),
            },
            Step::Wait(100),
            Step::Kill { which: 0 },
            Step::Wait(3000),
        ],
        vec![Fault::Slow(600)],
        true,
    );
}

/// A store whose answer to one successful claim is lost (as when Redis
/// times out after committing).
#[derive(Debug)]
struct LosesOneAnswer {
    inner: MemoryStore,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl PaymentStore for LosesOneAnswer {
    fn instance(&self) -> &str {
        self.inner.instance()
    }
    async fn load(
        &self,
        session: &str,
        payment: Option<&x402_session::PaymentIn>,
    ) -> Result<x402_server::store::Loaded, x402_server::StoreError> {
        self.inner.load(session, payment).await
    }
    async fn begin(
        &self,
        b: x402_server::store::Begin<'_>,
    ) -> Result<x402_server::store::Commit, x402_server::StoreError> {
        let r = self.inner.begin(b).await?;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(x402_server::StoreError::Other("timed out".into()));
        }
        Ok(r)
    }
    async fn finish(
        &self,
        f: x402_server::store::Finish<'_>,
    ) -> Result<x402_server::store::Commit, x402_server::StoreError> {
        self.inner.finish(f).await
    }
    async fn adopt(
        &self,
        key: &x402_session::PaymentKey,
        dead: &str,
    ) -> Result<bool, x402_server::StoreError> {
        self.inner.adopt(key, dead).await
    }
    async fn orphans(&self) -> Result<Vec<x402_server::store::Stored>, x402_server::StoreError> {
        self.inner.orphans().await
    }
    async fn connect_session(&self, session: &str) -> Result<Option<u64>, x402_server::StoreError> {
        self.inner.connect_session(session).await
    }
    async fn notify(&self, session: &str) -> Result<(), x402_server::StoreError> {
        self.inner.notify(session).await
    }
    async fn channels(&self) -> Result<Vec<String>, x402_server::StoreError> {
        self.inner.channels().await
    }
    async fn commit_session(
        &self,
        session: &str,
        version: u64,
        connections: u64,
        state: &x402_session::SessionState,
        until: u64,
    ) -> Result<x402_server::store::Commit, x402_server::StoreError> {
        self.inner
            .commit_session(session, version, connections, state, until)
            .await
    }
    async fn load_channel(
        &self,
        id: &str,
    ) -> Result<(u64, Option<String>), x402_server::StoreError> {
        self.inner.load_channel(id).await
    }
    async fn commit_channel(
        &self,
        id: &str,
        version: u64,
        record: &str,
    ) -> Result<x402_server::store::Commit, x402_server::StoreError> {
        self.inner.commit_channel(id, version, record).await
    }
}

/// One instance whose store loses the answer of its first claim, with the
/// scripted facilitator; the driver runtime to run requests on.
fn solo_losing_one_answer() -> (tokio::runtime::Runtime, Arc<Script>, MemoryStore, Instance) {
    let driver = tokio::runtime::Runtime::new().unwrap();
    let (script, f_url) = facilitator(&driver, Vec::new());
    let store = MemoryStore::new("solo");
    let flaky = Arc::new(LosesOneAnswer {
        inner: store.clone(),
        lost: Default::default(),
    });
    let i = start_on(flaky, "solo", &f_url);
    (driver, script, store, i)
}

/// The store committed a claim but its answer was lost: the client hears
/// 503 (nothing settled yet), the record is the instance's own without a
/// task, the orphan sweep restarts it, and the retry gets the one credit.
#[test]
fn a_commit_whose_answer_was_lost_is_restarted_by_the_sweep() {
    let (driver, script, store, i) = solo_losing_one_answer();
    let payer = dev_payer();
    driver.block_on(async {
        let (offer, ws) = quote(&i.http).await;
        let pay = payer.sign(&offer).unwrap().to_header();
        let url = renew_url(&i.http, &ws);
        let (status, _) = send(&url, &pay, None).await.unwrap();
        assert_eq!(status, 503, "the claim's answer was lost");
        let mut answer = None;
        for _ in 0..60 {
            match send(&url, &pay, None).await {
                Some((200, body)) => {
                    answer = Some(serde_json::from_slice::<RenewResponse>(&body).unwrap());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let answer = answer.expect("the retry never got its credit");
        assert_eq!(answer.slices, 1);
        assert_eq!(script.ledger.lock().unwrap().len(), 1);
        assert_eq!(store.credited_slices(), 1);
    });
    drop(i);
    driver.shutdown_background();
}

/// A junk copy (its signature corrupted) whose claim's answer was lost is
/// restarted by the sweep as a retry, which does not ask the facilitator to
/// verify: it is refused offline as forged (definite, never unresolved), so
/// it neither squats the authorization nor is credited with the genuine
/// payment's settlement.
#[test]
fn a_restarted_junk_copy_is_refused_as_forged_and_frees_the_authorization() {
    let (driver, script, store, i) = solo_losing_one_answer();
    let payer = dev_payer();
    driver.block_on(async {
        let (offer, ws) = quote(&i.http).await;
        let genuine = payer.sign(&offer).unwrap();
        let mut junk = genuine.clone();
        if let x402_types::PaymentPayload::V2(v) = &mut junk
            && let x402_types::SchemePayload::ExactEvm(e) = &mut v.payload
        {
            e.signature.0[5] ^= 0x55;
        }
        let url = renew_url(&i.http, &ws);
        let (status, _) = send(&url, &junk.to_header(), None).await.unwrap();
        assert_eq!(status, 503, "the junk claim's answer was lost");
        // The junk copy's retries: pending until the sweep restarts it, then refused.
        let mut last = 0;
        for _ in 0..60 {
            let (s, body) = send(&url, &junk.to_header(), None).await.unwrap();
            last = s;
            if s != 202 {
                let code = x402_types::ErrorBody::from_json(&body).unwrap().error;
                assert_eq!(code, x402_types::ErrorCode::PaymentInvalid);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(last, 402, "the forged copy is refused, definitely");
        // The genuine payment is not blocked, and is the only one settled.
        let (status, body) = send(&url, &genuine.to_header(), None).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(script.ledger.lock().unwrap().len(), 1);
        assert_eq!(store.credited_slices(), 1);
    });
    drop(i);
    driver.shutdown_background();
}
