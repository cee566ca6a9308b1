//! A simulated client/server pair on virtual time, wired through a link that
//! can delay, drop and reorder. The client side is driven exactly as a real
//! driver would (policy, then a real EIP-3009 signature); the server side is
//! `ServerEndpoint` plus a real verifier, a nonce store and a stream with a
//! replay buffer.

mod driver;
mod facilitator;
mod invariants;
mod link;
mod server;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atomicstream_testkit::DEV_KEY;
use x402_payer::{
    Budget, BudgetScope, Clock, EvmExactPayer, LocalSigner, Reservation, SeededRandom, SpendPolicy,
};
use x402_session::*;
use x402_types::*;

use link::{ToClient, ToServer};
pub use server::Server;

pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
pub const UNIX0: u64 = 1_750_000_000;
pub const PRICE: u64 = 1_000;

#[derive(Clone)]
pub struct VClock(pub Arc<AtomicU64>);
impl Clock for VClock {
    fn unix_now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Max extra delay per message (ms).
    pub jitter_ms: u64,
    /// Probability (per mille) to drop an HTTP response.
    pub drop_http_permille: u32,
    /// Probability (per mille) per second to cut the socket.
    pub cut_permille: u32,
    /// Base one-way latency (ms).
    pub latency_ms: u64,
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    pub unix: Arc<AtomicU64>,
    pub client: ClientSession,
    pub server: Server,
    pub payer: EvmExactPayer,
    pub policy: SpendPolicy,
    pub session_budget: Arc<Budget>,
    reservations: HashMap<u64, (Reservation, u64)>,
    /// Refused authorizations, counted until their validBefore passes (as the driver does).
    held: Vec<(u64, Reservation)>,
    to_server: BTreeMap<(Instant, u64), ToServer>,
    to_client: BTreeMap<(Instant, u64), ToClient>,
    conn_last: HashMap<ConnId, Instant>,
    http_deadline: BTreeMap<Instant, RequestId>,
    open_http: HashSet<RequestId>,
    msg_counter: u64,
    rng: u64,
    pub faults: Faults,
    pub transcript: Vec<String>,
    pub events: Vec<ClientEvent>,
    pub signatures: HashMap<u64, u32>,
    pub abandoned_or_refused: HashMap<u64, u32>,
    pub ended: Option<EndReason>,
    pub decline_after: Option<u64>,
    pub last_timeout_floor: Instant,
    pub next_publish: Instant,
    pub publish_every: Duration,
    pub received: Vec<u64>,
    pub reported_lost: u64,
    pub max_paid_ahead_at_sign: Duration,
    /// Every keep-alive ping the client sent: when, on which socket.
    pub pings: Vec<(Instant, ConnId)>,
    /// Sockets gone half-open ([`Sim::silence`]): nothing reaches the client on them.
    pub silent: HashSet<ConnId>,
}

/// A payer signing with the test key on the virtual clock `unix`, with nonces
/// from `seed` (the same seed signs the same payloads).
pub fn payer(unix: Arc<AtomicU64>, seed: u64) -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(DEV_KEY).unwrap())
        .with_clock(Arc::new(VClock(unix)))
        .with_random(Arc::new(SeededRandom::new(seed)))
}

/// The requirement's `maxTimeoutSeconds`: the payer signs `validBefore` =
/// now + this, and the quotes carry it, so the endpoint's window (now + this
/// + skew) always holds what the payer signs.
pub const MAX_TIMEOUT: u64 = 30;

/// The quote the endpoint tests pay for: stream `btc`, 10-second slices.
pub fn quote() -> Quote {
    Quote {
        id: "q".into(),
        stream_id: "btc".into(),
        version: PathVersion::V2,
        expires: UNIX0 + 60,
        slice_seconds: 10,
        max_timeout_seconds: MAX_TIMEOUT,
        renew_url: "https://h/v2/renew/btc?t=x".into(),
    }
}

/// The offer of [`quote`], as its client would sign it.
pub fn offer() -> Offer {
    Offer::from_requirement(PathVersion::V2, &requirement(), "wss://h/v2/stream/btc", "")
}

/// What a driver sends the facilitator for `p`, paid under [`requirement`] (v2).
pub fn request(p: &PaymentPayload) -> FacilitatorRequest {
    FacilitatorRequest {
        payment_payload: p.clone(),
        payment_requirements: PaymentRequirements::V2(requirement().to_v2()),
    }
}

/// A junk copy of `p`: the same authorization (payer, nonce, amount,
/// validBefore) with other signature bytes, hence another payload key.
pub fn junk_copy(p: &PaymentPayload, flip: u8) -> PaymentPayload {
    assert_ne!(flip, 0);
    let mut j = p.clone();
    let sig = match &mut j {
        PaymentPayload::V1(v) => &mut v.payload,
        PaymentPayload::V2(v) => &mut v.payload,
    };
    let SchemePayload::ExactEvm(e) = sig else {
        panic!("an exact EVM payload");
    };
    e.signature.0[0] ^= flip;
    j
}

pub fn requirement() -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(PRICE),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: MAX_TIMEOUT,
        extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
    }
}

pub struct SimConfig {
    pub version: PathVersion,
    pub slice_seconds: u64,
    pub budget_slices: u64,
    pub faults: Faults,
    pub seed: u64,
    pub max_slices: Option<u64>,
    pub buffer_cap: usize,
    pub publish_every: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            version: PathVersion::V2,
            slice_seconds: 20,
            budget_slices: 100,
            faults: Faults::default(),
            seed: 7,
            max_slices: None,
            buffer_cap: 1024,
            publish_every: Duration::from_secs(1),
        }
    }
}

impl Sim {
    pub fn new(c: SimConfig) -> Sim {
        let t0 = Instant::now();
        let unix = Arc::new(AtomicU64::new(UNIX0));
        let mut ccfg = ClientConfig::new("https://x402.test", c.version, "btc");
        ccfg.jitter_seed = c.seed;
        ccfg.max_slices = c.max_slices;
        let client = ClientSession::new(ccfg, t0, UNIX0).unwrap();
        let token = "tok".to_string();
        let renew_url =
            x402_types::version::renew_url("https://x402.test", c.version, "btc", &token)
                .unwrap()
                .to_string();
        let quote = Quote {
            id: "s1".into(),
            stream_id: "btc".into(),
            version: c.version,
            expires: UNIX0 + 60,
            slice_seconds: c.slice_seconds,
            max_timeout_seconds: MAX_TIMEOUT,
            renew_url,
        };
        let server = Server {
            endpoint: ServerEndpoint::new(EndpointConfig::default(), t0, UNIX0),
            quote,
            requirement: requirement(),
            version: c.version,
            nonces: HashSet::new(),
            settled: Amount::ZERO,
            credited: Amount::ZERO,
            seq: 0,
            buffer: VecDeque::new(),
            buffer_cap: c.buffer_cap,
            conns: HashMap::new(),
            token,
            sent_after_paid: 0,
            ws_version_override: None,
            drop_renew_answers: 0,
            settle_delay: Duration::ZERO,
            wait: Duration::from_secs(2),
            pending_first: 0,
            settling: BTreeMap::new(),
            waiting: Vec::new(),
            unresolved: 0,
            pending_answers: 0,
            settle_and_refuse: false,
            stolen: Amount::ZERO,
        };
        let payer = payer(unix.clone(), c.seed);
        let policy = SpendPolicy::new(Amount::from(PRICE))
            .with_lifetime_budget(Amount::from(PRICE * c.budget_slices));
        Sim {
            t0,
            now: t0,
            unix,
            client,
            server,
            payer,
            policy,
            session_budget: Arc::new(Budget::new(
                BudgetScope::Session,
                Amount::from(PRICE * c.budget_slices),
            )),
            reservations: HashMap::new(),
            held: Vec::new(),
            to_server: BTreeMap::new(),
            to_client: BTreeMap::new(),
            conn_last: HashMap::new(),
            http_deadline: BTreeMap::new(),
            open_http: HashSet::new(),
            msg_counter: 0,
            rng: c.seed ^ 0xdead_beef,
            faults: c.faults,
            transcript: Vec::new(),
            events: Vec::new(),
            signatures: HashMap::new(),
            abandoned_or_refused: HashMap::new(),
            ended: None,
            decline_after: None,
            last_timeout_floor: t0,
            next_publish: t0 + c.publish_every,
            publish_every: c.publish_every,
            received: Vec::new(),
            reported_lost: 0,
            max_paid_ahead_at_sign: Duration::ZERO,
            pings: Vec::new(),
            silent: HashSet::new(),
        }
    }

    pub fn start(&mut self) {
        self.client.open(self.now).unwrap();
        self.drain_client();
    }

    pub(super) fn advance(&mut self, to: Instant) {
        if to > self.now {
            let secs = to.duration_since(self.t0).as_millis() as u64 / 1000;
            self.now = to;
            self.unix.store(UNIX0 + secs, Ordering::SeqCst);
            let unix = UNIX0 + secs;
            let (dead, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(vb, _)| vb + 60 < unix);
            self.held = live;
            for (_, r) in dead {
                r.release();
            }
        }
        self.last_timeout_floor = self.now;
    }

    /// Runs until `until` (virtual) or the client ends.
    pub fn run_until(&mut self, until: Instant) {
        let mut next_cut_check = self.now + Duration::from_secs(1);
        loop {
            let candidates = [
                self.to_server.keys().next().map(|k| k.0),
                self.to_client.keys().next().map(|k| k.0),
                self.client.poll_timeout(),
                self.server.endpoint.poll_timeout(),
                self.server.settling.keys().next().map(|k| k.0),
                self.server.waiting.iter().map(|w| w.0).min(),
                self.http_deadline.keys().next().copied(),
                Some(self.next_publish),
                (self.faults.cut_permille > 0).then_some(next_cut_check),
            ];
            let Some(t) = candidates.into_iter().flatten().min() else {
                break;
            };
            if t > until || self.ended.is_some() {
                break;
            }
            self.advance(t);
            if let Some((&k, _)) = self.to_server.iter().next()
                && k.0 <= self.now
            {
                let m = self.to_server.remove(&k).unwrap();
                self.on_server(m);
                continue;
            }
            if let Some((&k, _)) = self.to_client.iter().next()
                && k.0 <= self.now
            {
                let m = self.to_client.remove(&k).unwrap();
                self.deliver_client(m);
                continue;
            }
            if let Some((&d, &id)) = self.http_deadline.iter().next()
                && d <= self.now
            {
                self.http_deadline.remove(&d);
                if self.open_http.remove(&id) {
                    self.transcript
                        .push(format!("{} ! http timeout", self.elapsed()));
                    self.client
                        .handle_http_error(self.now, id, TransportFailure::Timeout)
                        .unwrap();
                    self.drain_client();
                }
                continue;
            }
            if self.next_publish <= self.now {
                self.next_publish += self.publish_every;
                self.publish();
                continue;
            }
            if let Some((&k, _)) = self.server.settling.iter().next()
                && k.0 <= self.now
            {
                let (id, payload) = self.server.settling.remove(&k).unwrap();
                self.facilitator_answer(id, payload);
                continue;
            }
            if self.server.waiting.iter().any(|w| w.0 <= self.now) {
                self.resolve_waiters();
                continue;
            }
            if self
                .server
                .endpoint
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                self.server.endpoint.handle_timeout(self.now);
                self.drain_server();
                continue;
            }
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                self.client.handle_timeout(self.now).unwrap();
                self.drain_client();
                continue;
            }
            if self.faults.cut_permille > 0 && next_cut_check <= self.now {
                next_cut_check += Duration::from_secs(1);
                if self.rand(1000) < u64::from(self.faults.cut_permille) {
                    self.cut();
                }
                continue;
            }
        }
        self.advance(until.max(self.now));
    }

    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    pub fn stop(&mut self) {
        self.client.stop(self.now).unwrap();
        self.drain_client();
    }
}
