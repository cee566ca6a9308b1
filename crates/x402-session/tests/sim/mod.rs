//! A simulated client/server pair on virtual time, wired through a link that
//! can delay, drop and reorder. The client side is driven exactly as a real
//! driver would (policy, then a real EIP-3009 signature); the server side is
//! `ServerSession` plus a real verifier, a nonce store and a stream with a
//! replay buffer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use x402_payer::{
    Budget, BudgetScope, Clock, EvmExactPayer, LocalSigner, Reservation, SeededRandom, SpendPolicy,
    verify_exact,
};
use x402_session::*;
use x402_types::*;

pub const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
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

#[derive(Debug)]
enum ToServer {
    Http {
        id: RequestId,
        method: Method,
        url: String,
        headers: Vec<(String, String)>,
    },
    Connect {
        conn: ConnId,
        url: String,
        headers: Vec<(String, String)>,
    },
    Close {
        conn: ConnId,
    },
}

#[derive(Debug)]
enum ToClient {
    Http {
        id: RequestId,
        resp: HttpResponse,
    },
    Upgrade {
        conn: ConnId,
        result: Result<HttpResponse, Option<HttpResponse>>,
    },
    Msg {
        conn: ConnId,
        text: String,
    },
    Closed {
        conn: ConnId,
        code: Option<u16>,
    },
}

/// A parked request waiting for its payment's settlement (the server's bounded wait).
#[derive(Debug)]
enum Waiter {
    Renew(RequestId),
    Upgrade { conn: ConnId, from: Option<u64> },
}

/// The simulated server: the real `ServerEndpoint` (the code the reference
/// server runs), driven as `x402-server` drives it, with an in-memory
/// facilitator (the real EIP-3009 verifier plus a nonce set) whose answers
/// can be delayed or left pending, and a stream with a replay buffer.
pub struct Server {
    pub endpoint: ServerEndpoint,
    pub quote: Quote,
    pub requirement: Requirement,
    pub version: PathVersion,
    /// The facilitator's nonce set (what it settled).
    pub nonces: HashSet<Nonce>,
    /// Money the facilitator moved.
    pub settled: Amount,
    /// Money the endpoint credited (from its `Credited` events).
    pub credited: Amount,
    pub seq: u64,
    pub buffer: VecDeque<(u64, String)>,
    pub buffer_cap: usize,
    /// Per live connection: next seq to send.
    pub conns: HashMap<ConnId, u64>,
    pub token: String,
    pub sent_after_paid: u64,
    /// Writes this version into the schema's websocketEndpoint (downgrade attack).
    pub ws_version_override: Option<PathVersion>,
    /// Drops this many renew answers (the client times out).
    pub drop_renew_answers: u32,
    /// The facilitator answers this long after being asked.
    pub settle_delay: Duration,
    /// The server waits this long for a settlement before answering `payment_pending`.
    pub wait: Duration,
    /// The next this many settlements answer `settlement_pending` first.
    pub pending_first: u32,
    /// Settlements under way: (answer time, counter) -> (id, payload).
    settling: BTreeMap<(Instant, u64), (SettleId, PaymentPayload)>,
    payloads: HashMap<SettleId, PaymentPayload>,
    /// Parked requests: deadline, who, which payment.
    waiting: Vec<(Instant, Waiter, PaymentIn)>,
    pub unresolved: u64,
    pub pending_answers: u64,
    /// A malicious server: moves the money, then answers "payment invalid".
    pub settle_and_refuse: bool,
    pub stolen: Amount,
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
}

/// A payer signing with the test key on the virtual clock `unix`, with nonces
/// from `seed` (the same seed signs the same payloads).
pub fn payer(unix: Arc<AtomicU64>, seed: u64) -> EvmExactPayer {
    EvmExactPayer::new(LocalSigner::from_hex(KEY).unwrap())
        .with_clock(Arc::new(VClock(unix)))
        .with_random(Arc::new(SeededRandom::new(seed)))
}

/// The quote the endpoint tests pay for: stream `btc`, 10-second slices.
pub fn quote() -> Quote {
    Quote {
        id: "q".into(),
        stream_id: "btc".into(),
        version: PathVersion::V2,
        expires: UNIX0 + 60,
        slice_seconds: 10,
        renew_url: "https://h/v2/renew/btc?t=x".into(),
    }
}

/// The offer of [`quote`], as its client would sign it.
pub fn offer() -> Offer {
    Offer::from_requirement(PathVersion::V2, &requirement(), "wss://h/v2/stream/btc", "")
}

pub fn requirement() -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(PRICE),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 30,
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
            payloads: HashMap::new(),
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
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if n == 0 { 0 } else { z % n }
    }

    fn elapsed(&self) -> String {
        format!("{:>7.3}", self.now.duration_since(self.t0).as_secs_f64())
    }

    fn delay(&mut self) -> Duration {
        let j = self.rand(self.faults.jitter_ms + 1);
        Duration::from_millis(self.faults.latency_ms + j)
    }

    /// When a message sent now arrives, and its tie-break counter. One socket is
    /// ordered: a frame never arrives before the previous frame of its socket.
    fn arrival(&mut self, conn: Option<ConnId>) -> (Instant, u64) {
        let mut at = self.now + self.delay();
        if let Some(c) = conn {
            let last = self.conn_last.get(&c).copied().unwrap_or(self.now);
            at = at.max(last);
            self.conn_last.insert(c, at);
        }
        self.msg_counter += 1;
        (at, self.msg_counter)
    }

    fn send_to_server(&mut self, m: ToServer, conn: Option<ConnId>) {
        let key = self.arrival(conn);
        self.to_server.insert(key, m);
    }

    fn send_to_client(&mut self, m: ToClient, conn: Option<ConnId>) {
        let key = self.arrival(conn);
        self.to_client.insert(key, m);
    }

    // ----- client driver -----

    pub fn drain_client(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.client.poll_transmit() {
                progressed = true;
                self.on_client_transmit(t);
            }
            while let Some(e) = self.client.poll_event() {
                progressed = true;
                self.on_client_event(e);
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.client.poll_timeout() {
            assert!(t >= self.last_timeout_floor, "poll_timeout went backwards");
        }
    }

    fn on_client_transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Http {
                id,
                method,
                url,
                headers,
            } => {
                let path = url
                    .split_once("://")
                    .map(|(_, r)| r.split_once('/').map(|(_, p)| p).unwrap_or(""))
                    .unwrap_or("");
                let path = path.split('?').next().unwrap_or("");
                self.transcript.push(format!(
                    "{} T http {:?} /{path}{}",
                    self.elapsed(),
                    method,
                    if headers.is_empty() { "" } else { " +payment" }
                ));
                self.open_http.insert(id);
                self.http_deadline
                    .insert(self.now + Duration::from_secs(5), id);
                self.send_to_server(
                    ToServer::Http {
                        id,
                        method,
                        url,
                        headers,
                    },
                    None,
                );
            }
            Transmit::WsConnect { conn, url, headers } => {
                let from = url
                    .split("from=")
                    .nth(1)
                    .map(|f| format!(" from={f}"))
                    .unwrap_or_default();
                self.transcript.push(format!(
                    "{} T ws-connect{}{}",
                    self.elapsed(),
                    from,
                    if headers.is_empty() { "" } else { " +payment" }
                ));
                self.send_to_server(ToServer::Connect { conn, url, headers }, Some(conn));
            }
            Transmit::WsSend { .. } => {}
            Transmit::WsClose { conn, code } => {
                self.transcript
                    .push(format!("{} T ws-close {code}", self.elapsed()));
                self.send_to_server(ToServer::Close { conn }, Some(conn));
            }
        }
    }

    fn on_client_event(&mut self, e: ClientEvent) {
        let line = match &e {
            ClientEvent::Data(ev) => {
                self.received.push(ev.seq);
                None
            }
            ClientEvent::PaymentNeeded { slice, offer } => {
                let slice = *slice;
                // Server truth: how much paid time remains when we sign.
                let ahead = Duration::from_secs(
                    self.server
                        .endpoint
                        .expires_at("s1")
                        .saturating_sub(self.unix.load(Ordering::SeqCst)),
                );
                self.max_paid_ahead_at_sign = self.max_paid_ahead_at_sign.max(ahead);
                let declined = self.decline_after.is_some_and(|n| slice > n);
                let req = offer.requirement();
                let auth = if declined {
                    Err("declined by test".to_string())
                } else {
                    self.policy
                        .authorize(&req, Some(&self.session_budget))
                        .map_err(|e| e.to_string())
                };
                match auth {
                    Ok(res) => {
                        *self.signatures.entry(slice).or_default() += 1;
                        let allowed =
                            1 + self.abandoned_or_refused.get(&slice).copied().unwrap_or(0);
                        assert!(
                            self.signatures[&slice] <= allowed,
                            "two signatures for slice {slice}"
                        );
                        let payload = self.payer.sign(offer).unwrap();
                        let vb = payload
                            .exact_evm()
                            .unwrap()
                            .authorization
                            .valid_before
                            .to_u64()
                            .unwrap();
                        self.reservations.insert(slice, (res, vb));
                        self.push_event_line(format!("PaymentNeeded slice={slice} -> signed"));
                        self.client
                            .handle_payment(self.now, slice, payload)
                            .unwrap();
                    }
                    Err(msg) => {
                        self.push_event_line(format!("PaymentNeeded slice={slice} -> declined"));
                        self.client
                            .handle_payment_declined(self.now, slice, msg, true)
                            .unwrap();
                    }
                }
                None
            }
            ClientEvent::PaymentAccepted { slice, .. } => {
                if let Some((r, _)) = self.reservations.remove(slice) {
                    r.commit();
                }
                Some(format!("PaymentAccepted slice={slice}"))
            }
            ClientEvent::PaymentRefused {
                slice,
                status,
                code,
                maybe_spent,
            } => {
                *self.abandoned_or_refused.entry(*slice).or_default() += 1;
                if let Some((r, vb)) = self.reservations.remove(slice) {
                    if *maybe_spent {
                        r.commit();
                    } else {
                        self.held.push((vb, r));
                    }
                }
                Some(format!("PaymentRefused slice={slice} {status} {code}"))
            }
            ClientEvent::Hello(h) => Some(format!(
                "Hello slice={}s resumed={} nextSeq={}",
                h.slice_seconds, h.resumed, h.next_seq
            )),
            ClientEvent::Resumed { missed } => Some(format!("Resumed missed={missed}")),
            ClientEvent::Renewed { slices, .. } => Some(format!("Renewed slices={slices}")),
            ClientEvent::Expiring { .. } => Some("Expiring".into()),
            ClientEvent::Expired => Some("Expired".into()),
            ClientEvent::EventsLost { count } => {
                self.reported_lost += count;
                Some(format!("EventsLost {count}"))
            }
            ClientEvent::EventsSkipped { count } => {
                self.reported_lost += count;
                Some(format!("EventsSkipped {count}"))
            }
            ClientEvent::PaymentPending { slice, .. } => {
                Some(format!("PaymentPending slice={slice}"))
            }
            ClientEvent::Duplicate { seq } => Some(format!("Duplicate {seq}")),
            ClientEvent::Reconnecting { attempt, .. } => {
                Some(format!("Reconnecting attempt={attempt}"))
            }
            ClientEvent::Ended(r) => {
                self.ended = Some(r.clone());
                Some(format!("Ended {r:?}"))
            }
            _ => None,
        };
        if let Some(l) = line {
            self.push_event_line(l);
        }
        self.events.push(e);
    }

    fn push_event_line(&mut self, l: String) {
        self.transcript.push(format!("{} E {l}", self.elapsed()));
    }

    // ----- server -----

    fn requirements(&self) -> PaymentRequirements {
        match self.server.version {
            PathVersion::V1 => PaymentRequirements::V1(
                self.server
                    .requirement
                    .to_v1("wss://x402.test/v1/stream/btc", ""),
            ),
            PathVersion::V2 => PaymentRequirements::V2(self.server.requirement.to_v2()),
        }
    }

    fn error_resp(r: &Refusal) -> HttpResponse {
        let mut headers = vec![];
        if r.code == ErrorCode::PaymentPending {
            headers.push(("Retry-After".to_string(), "2".to_string()));
        }
        HttpResponse {
            status: r.status(),
            headers,
            body: serde_json::to_vec(&ErrorBody {
                error: r.code.clone(),
                message: r.message.clone(),
                accepts: None,
                x402_version: None,
                retry_after: None,
            })
            .unwrap(),
        }
    }

    fn header<'a>(&self, headers: &'a [(String, String)]) -> Option<&'a str> {
        let name = self.server.version.payment_header();
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn token_of(url: &str) -> &str {
        url.split("t=")
            .nth(1)
            .and_then(|t| t.split('&').next())
            .unwrap_or("")
    }

    fn head(&self) -> StreamHead {
        StreamHead {
            next_seq: self.server.seq,
            oldest_seq: self
                .server
                .buffer
                .front()
                .map(|(s, _)| *s)
                .unwrap_or(self.server.seq),
        }
    }

    /// A payment header arrived: decide, start settling, park the request.
    fn server_pay(&mut self, header: &str, who: Waiter) {
        let payment = PaymentPayload::from_header(self.server.version, header)
            .map_err(|e| Refusal::new(ErrorCode::PaymentInvalid, e.to_string()))
            .and_then(|p| PaymentIn::from_payload(&p).map(|i| (p, i)));
        let (payload, payment) = match payment {
            Ok(x) => x,
            Err(r) => return self.answer_waiter(who, Err(r)),
        };
        let quote = self.server.quote.clone();
        match self
            .server
            .endpoint
            .handle_payment(self.now, &quote, payment.clone())
        {
            PaymentDecision::Settle(id) => {
                self.server.payloads.insert(id, payload.clone());
                self.start_settle(id, payload);
            }
            PaymentDecision::Pending { .. } => {}
            PaymentDecision::Credited(_) => return self.answer_waiter(who, Ok(())),
            PaymentDecision::Refused(r) => return self.answer_waiter(who, Err(r)),
        }
        self.server
            .waiting
            .push((self.now + self.server.wait, who, payment));
    }

    fn start_settle(&mut self, id: SettleId, payload: PaymentPayload) {
        self.msg_counter += 1;
        let at = self.now + self.server.settle_delay;
        self.server
            .settling
            .insert((at, self.msg_counter), (id, payload));
    }

    /// The in-memory facilitator answers: the real verifier, a nonce set,
    /// idempotent for the payload it settled.
    fn facilitator_answer(&mut self, id: SettleId, payload: PaymentPayload) {
        let unix = self.unix.load(Ordering::SeqCst);
        let evm = payload.exact_evm().unwrap().clone();
        let outcome = if self.server.settle_and_refuse {
            if self.server.nonces.insert(evm.authorization.nonce) {
                self.server.settled = self
                    .server
                    .settled
                    .checked_add(evm.authorization.value)
                    .unwrap();
                // The money it kept without crediting: not "credited", so the
                // credited == settled check below does not apply to this server.
                self.server.stolen = self
                    .server
                    .stolen
                    .checked_add(evm.authorization.value)
                    .unwrap();
            }
            SettleOutcome::Refused {
                code: ErrorCode::PaymentInvalid,
                message: "refused (but settled)".into(),
            }
        } else if self.server.pending_first > 0 {
            self.server.pending_first -= 1;
            // Broadcast: the money moves now, the answer says "pending".
            if self.server.nonces.insert(evm.authorization.nonce) {
                self.server.settled = self
                    .server
                    .settled
                    .checked_add(evm.authorization.value)
                    .unwrap();
            }
            SettleOutcome::Pending
        } else if self.server.nonces.contains(&evm.authorization.nonce) {
            // Same payload again: the recorded success (as the official v2 facilitator does).
            SettleOutcome::Settled {
                header: None,
                payer: Some(evm.authorization.from),
                amount: Some(evm.authorization.value),
            }
        } else {
            match verify_exact(&payload, &self.requirements(), unix) {
                Ok(from) => {
                    self.server.nonces.insert(evm.authorization.nonce);
                    self.server.settled = self
                        .server
                        .settled
                        .checked_add(evm.authorization.value)
                        .unwrap();
                    SettleOutcome::Settled {
                        header: None,
                        payer: Some(from),
                        amount: Some(evm.authorization.value),
                    }
                }
                Err(f) => SettleOutcome::Refused {
                    code: ErrorCode::PaymentInvalid,
                    message: f.to_string(),
                },
            }
        };
        let head = self.server.seq;
        self.server
            .endpoint
            .handle_settled(self.now, id, outcome, head);
        self.drain_server();
        self.resolve_waiters();
    }

    /// Answers parked requests whose payment has an outcome (or whose wait is over).
    fn resolve_waiters(&mut self) {
        let waiting = std::mem::take(&mut self.server.waiting);
        for (deadline, who, payment) in waiting {
            match self.server.endpoint.answer(&payment) {
                PaymentDecision::Credited(_) => self.answer_waiter(who, Ok(())),
                PaymentDecision::Refused(r) => self.answer_waiter(who, Err(r)),
                PaymentDecision::Pending { .. } | PaymentDecision::Settle(_) => {
                    if deadline <= self.now {
                        self.server.pending_answers += 1;
                        let r = Refusal::new(ErrorCode::PaymentPending, "settling");
                        self.answer_waiter(who, Err(r));
                    } else {
                        self.server.waiting.push((deadline, who, payment));
                    }
                }
            }
        }
    }

    /// Sends the answer of a (paid) request.
    fn answer_waiter(&mut self, who: Waiter, result: Result<(), Refusal>) {
        match who {
            Waiter::Renew(id) => {
                let resp = match result {
                    Ok(()) => HttpResponse {
                        status: 200,
                        headers: vec![],
                        body: serde_json::to_vec(&RenewResponse {
                            session_id: "s1".into(),
                            expires_at: self.server.endpoint.expires_at("s1"),
                            slice_seconds: self.server.quote.slice_seconds,
                            slices: self.server.endpoint.slices("s1"),
                        })
                        .unwrap(),
                    },
                    Err(r) => Self::error_resp(&r),
                };
                if self.server.drop_renew_answers > 0 {
                    self.server.drop_renew_answers -= 1;
                    self.transcript
                        .push(format!("{} ! renew answer lost", self.elapsed()));
                    return;
                }
                self.reply_http(id, resp);
            }
            Waiter::Upgrade { conn, from } => match result {
                Ok(()) => self.upgrade(conn, from),
                Err(r) => self.refuse_upgrade(conn, &r),
            },
        }
    }

    /// Answers an upgrade with a refusal.
    fn refuse_upgrade(&mut self, conn: ConnId, r: &Refusal) {
        self.send_to_client(
            ToClient::Upgrade {
                conn,
                result: Err(Some(Self::error_resp(r))),
            },
            Some(conn),
        );
    }

    /// Completes an upgrade: check, 101, connect, hello, notices.
    fn upgrade(&mut self, conn: ConnId, from: Option<u64>) {
        let quote = self.server.quote.clone();
        if let Err(r) = self.server.endpoint.check_connect(self.now, &quote) {
            self.refuse_upgrade(conn, &r);
            return;
        }
        self.send_to_client(
            ToClient::Upgrade {
                conn,
                result: Ok(HttpResponse {
                    status: 101,
                    ..Default::default()
                }),
            },
            Some(conn),
        );
        let head = self.head();
        let c = match self
            .server
            .endpoint
            .connect(self.now, &quote, conn, from, head)
        {
            Ok(c) => c,
            Err(_) => {
                self.send_to_client(
                    ToClient::Closed {
                        conn,
                        code: Some(4402),
                    },
                    Some(conn),
                );
                return;
            }
        };
        self.send_to_client(
            ToClient::Msg {
                conn,
                text: ServerMessage::Hello(c.hello).to_json(),
            },
            Some(conn),
        );
        for (code, count) in [
            (ErrorCode::EventsSkipped, c.skipped),
            (ErrorCode::EventsLost, c.lost),
        ] {
            if count > 0 {
                let m = ServerMessage::Error {
                    code,
                    message: String::new(),
                    count: Some(count),
                };
                self.send_to_client(
                    ToClient::Msg {
                        conn,
                        text: m.to_json(),
                    },
                    Some(conn),
                );
            }
        }
        self.server.conns.insert(conn, c.start);
        self.drain_server();
        self.pump_events();
    }

    fn on_server(&mut self, m: ToServer) {
        match m {
            ToServer::Http {
                id,
                method: Method::Get,
                ..
            } => {
                let v = self.server.version;
                let req = self.server.requirement.clone();
                let schema = Schema {
                    protocol: "ws402".into(),
                    version: v,
                    websocket_endpoint: format!(
                        "wss://x402.test/{}/stream/btc?t={}",
                        self.server.ws_version_override.unwrap_or(v).segment(),
                        self.server.token
                    ),
                    pricing: Pricing {
                        price_per_second: 0.0,
                        currency: "USDC".into(),
                        estimated_duration: 20,
                        price_per_minute: None,
                        price_per_slice: None,
                    },
                    payment_details: PaymentDetails {
                        scheme: req.scheme.clone(),
                        network: req.network.clone(),
                        asset: req.asset.clone(),
                        pay_to: req.pay_to.clone(),
                        max_amount_required: req.amount,
                        max_timeout_seconds: req.max_timeout_seconds,
                        extra: req.extra.clone(),
                    },
                    stream: StreamInfo {
                        id: "btc".into(),
                        title: "BTC".into(),
                        description: "d".into(),
                    },
                    x402_version: None,
                    error: None,
                    accepts: None,
                };
                let resp = HttpResponse {
                    status: 402,
                    headers: vec![],
                    body: schema.to_json().into_bytes(),
                };
                self.reply_http(id, resp);
            }
            ToServer::Http {
                id,
                method: Method::Post,
                headers,
                ..
            } => match self.header(&headers).map(str::to_string) {
                None => {
                    let r = Refusal::new(ErrorCode::PaymentRequired, "pay");
                    self.reply_http(id, Self::error_resp(&r));
                }
                Some(h) => self.server_pay(&h, Waiter::Renew(id)),
            },
            ToServer::Connect { conn, url, headers } => {
                if Self::token_of(&url) != self.server.token {
                    let r = Refusal::new(ErrorCode::TokenInvalid, "bad mac");
                    self.refuse_upgrade(conn, &r);
                    return;
                }
                let from: Option<u64> = url.split("from=").nth(1).and_then(|f| f.parse().ok());
                match self.header(&headers).map(str::to_string) {
                    Some(h) => self.server_pay(&h, Waiter::Upgrade { conn, from }),
                    None => self.upgrade(conn, from),
                }
            }
            ToServer::Close { conn } => {
                self.server.endpoint.disconnect(self.now, conn);
                if self.server.conns.remove(&conn).is_some() {
                    self.send_to_client(
                        ToClient::Closed {
                            conn,
                            code: Some(1000),
                        },
                        Some(conn),
                    );
                }
            }
        }
    }

    fn reply_http(&mut self, id: RequestId, resp: HttpResponse) {
        if self.faults.drop_http_permille > 0
            && self.rand(1000) < u64::from(self.faults.drop_http_permille)
        {
            return; // lost: the client times out
        }
        self.send_to_client(ToClient::Http { id, resp }, None);
    }

    fn drain_server(&mut self) {
        while let Some(t) = self.server.endpoint.poll_transmit() {
            match t {
                ServerTransmit::Message { conn, msg } => {
                    if self.server.conns.contains_key(&conn) {
                        self.send_to_client(
                            ToClient::Msg {
                                conn,
                                text: msg.to_json(),
                            },
                            Some(conn),
                        );
                    }
                }
                ServerTransmit::Skip { conn, seq } => {
                    if let Some(next) = self.server.conns.get(&conn).copied()
                        && next < seq
                    {
                        self.server.conns.insert(conn, seq);
                        let m = ServerMessage::Error {
                            code: ErrorCode::EventsSkipped,
                            message: String::new(),
                            count: Some(seq - next),
                        };
                        self.send_to_client(
                            ToClient::Msg {
                                conn,
                                text: m.to_json(),
                            },
                            Some(conn),
                        );
                    }
                }
                ServerTransmit::Close { conn, code } => {
                    if self.server.conns.remove(&conn).is_some() {
                        self.send_to_client(
                            ToClient::Closed {
                                conn,
                                code: Some(code.code()),
                            },
                            Some(conn),
                        );
                    }
                }
            }
        }
        while let Some(job) = self.server.endpoint.poll_settle() {
            if let Some(p) = self.server.payloads.get(&job.id).cloned() {
                self.start_settle(job.id, p);
            }
        }
        while let Some(e) = self.server.endpoint.poll_event() {
            match e {
                ServerEvent::Credited { .. } => {
                    self.server.credited = self
                        .server
                        .credited
                        .checked_add(self.server.requirement.amount)
                        .unwrap();
                }
                ServerEvent::Unresolved { .. } => self.server.unresolved += 1,
                ServerEvent::Refused { .. } => {}
            }
        }
    }

    /// Sends buffered events to every live connection while paid.
    fn pump_events(&mut self) {
        let conns: Vec<ConnId> = self.server.conns.keys().copied().collect();
        for conn in conns {
            if self
                .server
                .endpoint
                .deliver_until(conn)
                .is_none_or(|t| t <= self.now)
            {
                continue;
            }
            let mut next = self.server.conns[&conn];
            let items: Vec<(u64, String)> = self
                .server
                .buffer
                .iter()
                .filter(|(s, _)| *s >= next)
                .cloned()
                .collect();
            for (s, text) in items {
                // The invariant the server must keep: delivery only within paid time (plus grace).
                let paid_end = self.server.endpoint.expires_at("s1") + 5;
                if self.unix.load(Ordering::SeqCst) > paid_end {
                    self.server.sent_after_paid += 1;
                }
                self.send_to_client(ToClient::Msg { conn, text }, Some(conn));
                next = s + 1;
            }
            self.server.conns.insert(conn, next);
        }
    }

    fn publish(&mut self) {
        let seq = self.server.seq;
        self.server.seq += 1;
        let data = serde_json::value::RawValue::from_string(format!("{{\"px\":{seq}}}")).unwrap();
        let text = ServerMessage::Event(Event {
            seq,
            data,
            ts: None,
        })
        .to_json();
        self.server.buffer.push_back((seq, text));
        while self.server.buffer.len() > self.server.buffer_cap {
            self.server.buffer.pop_front();
        }
        self.pump_events();
    }

    /// Cuts the live socket (both sides see it drop).
    pub fn cut(&mut self) {
        let conns: Vec<ConnId> = self.server.conns.keys().copied().collect();
        for conn in conns {
            self.transcript.push(format!("{} ! cut", self.elapsed()));
            self.server.conns.remove(&conn);
            self.server.endpoint.disconnect(self.now, conn);
            self.send_to_client(ToClient::Closed { conn, code: None }, Some(conn));
        }
    }

    // ----- the loop -----

    pub fn start(&mut self) {
        self.client.open(self.now).unwrap();
        self.drain_client();
    }

    fn advance(&mut self, to: Instant) {
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

    fn deliver_client(&mut self, m: ToClient) {
        let now = self.now;
        match m {
            ToClient::Http { id, resp } => {
                if self.open_http.remove(&id) {
                    self.client.handle_http_response(now, id, resp).unwrap();
                }
            }
            ToClient::Upgrade { conn, result } => {
                self.client.handle_ws_upgrade(now, conn, result).unwrap()
            }
            ToClient::Msg { conn, text } => {
                self.client.handle_ws_message(now, conn, &text).unwrap()
            }
            ToClient::Closed { conn, code } => {
                self.transcript
                    .push(format!("{} ! closed {code:?}", self.elapsed()));
                self.client
                    .handle_ws_closed(now, conn, code.map(CloseCode::from))
                    .unwrap();
            }
        }
        self.drain_client();
    }

    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    pub fn stop(&mut self) {
        self.client.stop(self.now).unwrap();
        self.drain_client();
    }

    /// The checks every run must pass.
    pub fn check_invariants(&self) {
        // Budget.
        let budget = self.policy.lifetime_budget().unwrap();
        assert!(
            self.server.settled <= budget.limit(),
            "the facilitator moved more than the budget"
        );
        // Money: nothing credited without a settlement; nothing settled left
        // uncredited once no settlement is under way.
        assert!(
            self.server.credited <= self.server.settled,
            "credited {} but settled {}",
            self.server.credited,
            self.server.settled
        );
        if self.server.endpoint.stats().settling == 0 {
            assert_eq!(
                self.server
                    .credited
                    .checked_add(self.server.stolen)
                    .unwrap(),
                self.server.settled,
                "a settled payment was not credited"
            );
        }
        assert!(budget.committed() <= budget.limit());
        // Never delivered after paid time + grace.
        assert_eq!(
            self.server.sent_after_paid, 0,
            "events sent after paid time plus grace"
        );
        // Events arrive in order, gaps only where reported.
        let mut unexplained = 0u64;
        for w in self.received.windows(2) {
            assert!(w[1] > w[0], "out of order or duplicate delivered: {:?}", w);
            unexplained += w[1] - w[0] - 1;
        }
        let resumed_missed: u64 = self
            .events
            .iter()
            .map(|e| {
                if let ClientEvent::Resumed { missed } = e {
                    *missed
                } else {
                    0
                }
            })
            .sum();
        assert!(
            unexplained <= self.reported_lost.max(resumed_missed),
            "{unexplained} events missing without a report"
        );
        // Never paid while more than a margin of paid time remained (server truth, 2 s of slack for rounding).
        let margin = self.client.renew_margin();
        assert!(
            self.max_paid_ahead_at_sign <= margin + Duration::from_secs(2),
            "paid {:?} ahead with margin {margin:?}",
            self.max_paid_ahead_at_sign
        );
    }
}
