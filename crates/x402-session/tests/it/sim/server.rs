//! The server side: the real `ServerEndpoint` answering schema, renew and
//! upgrade requests, and the stream with its replay buffer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use x402_session::*;
use x402_types::*;

use super::Sim;
use super::link::{ToClient, ToServer};

/// A parked request waiting for its payment's settlement (the server's bounded wait).
#[derive(Debug)]
pub(super) enum Waiter {
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
    pub(super) settling: BTreeMap<(Instant, u64), (SettleId, PaymentPayload)>,
    /// Parked requests: deadline, who, which payment.
    pub(super) waiting: Vec<(Instant, Waiter, PaymentIn)>,
    pub unresolved: u64,
    pub pending_answers: u64,
    /// A malicious server: moves the money, then answers "payment invalid".
    pub settle_and_refuse: bool,
    pub stolen: Amount,
}

impl Sim {
    pub(super) fn requirements(&self) -> PaymentRequirements {
        match self.server.version {
            PathVersion::V1 => PaymentRequirements::V1(
                self.server
                    .requirement
                    .to_v1("wss://x402.test/v1/stream/btc", ""),
            ),
            PathVersion::V2 => PaymentRequirements::V2(self.server.requirement.to_v2()),
        }
    }

    pub(super) fn error_resp(r: &Refusal) -> HttpResponse {
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

    pub(super) fn header<'a>(&self, headers: &'a [(String, String)]) -> Option<&'a str> {
        let name = self.server.version.payment_header();
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn token_of(url: &str) -> &str {
        url.split("t=")
            .nth(1)
            .and_then(|t| t.split('&').next())
            .unwrap_or("")
    }

    pub(super) fn head(&self) -> StreamHead {
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

    /// Sends the answer of a (paid) request.
    pub(super) fn answer_waiter(&mut self, who: Waiter, result: Result<(), Refusal>) {
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
    pub(super) fn refuse_upgrade(&mut self, conn: ConnId, r: &Refusal) {
        self.send_to_client(
            ToClient::Upgrade {
                conn,
                result: Err(Some(Self::error_resp(r))),
            },
            Some(conn),
        );
    }

    /// Completes an upgrade: check, 101, connect, hello, notices.
    pub(super) fn upgrade(&mut self, conn: ConnId, from: Option<u64>) {
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

    pub(super) fn on_server(&mut self, m: ToServer) {
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
            ToServer::Ping { conn } => {
                // As the reference server: every ping on a live socket is answered.
                if self.server.conns.contains_key(&conn) {
                    self.send_keep_alive(false, conn);
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

    pub(super) fn reply_http(&mut self, id: RequestId, resp: HttpResponse) {
        if self.faults.drop_http_permille > 0
            && self.rand(1000) < u64::from(self.faults.drop_http_permille)
        {
            return; // lost: the client times out
        }
        self.send_to_client(ToClient::Http { id, resp }, None);
    }

    pub(super) fn drain_server(&mut self) {
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
        self.drain_settle();
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
                ServerEvent::Refused { .. } | ServerEvent::MeterStopped { .. } => {}
            }
        }
    }

    /// Sends buffered events to every live connection while paid.
    pub(super) fn pump_events(&mut self) {
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

    pub(super) fn publish(&mut self) {
        let seq = self.server.seq;
        self.server.seq += 1;
        let data = x402_types::EventData::from_json(format!("{{\"px\":{seq}}}")).unwrap();
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
}
