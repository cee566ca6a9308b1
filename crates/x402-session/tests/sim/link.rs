//! The link: latency, jitter and ordering of messages between the two sides,
//! and cutting the socket.

use std::time::{Duration, Instant};

use x402_session::*;
use x402_types::*;

use super::Sim;

#[derive(Debug)]
pub(super) enum ToServer {
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
pub(super) enum ToClient {
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

impl Sim {
    pub(super) fn rand(&mut self, n: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if n == 0 { 0 } else { z % n }
    }

    pub(super) fn elapsed(&self) -> String {
        format!("{:>7.3}", self.now.duration_since(self.t0).as_secs_f64())
    }

    pub(super) fn delay(&mut self) -> Duration {
        let j = self.rand(self.faults.jitter_ms + 1);
        Duration::from_millis(self.faults.latency_ms + j)
    }

    /// When a message sent now arrives, and its tie-break counter. One socket is
    /// ordered: a frame never arrives before the previous frame of its socket.
    pub(super) fn arrival(&mut self, conn: Option<ConnId>) -> (Instant, u64) {
        let mut at = self.now + self.delay();
        if let Some(c) = conn {
            let last = self.conn_last.get(&c).copied().unwrap_or(self.now);
            at = at.max(last);
            self.conn_last.insert(c, at);
        }
        self.msg_counter += 1;
        (at, self.msg_counter)
    }

    pub(super) fn send_to_server(&mut self, m: ToServer, conn: Option<ConnId>) {
        let key = self.arrival(conn);
        self.to_server.insert(key, m);
    }

    pub(super) fn send_to_client(&mut self, m: ToClient, conn: Option<ConnId>) {
        let key = self.arrival(conn);
        self.to_client.insert(key, m);
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

    pub(super) fn deliver_client(&mut self, m: ToClient) {
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
}
