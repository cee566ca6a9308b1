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
    /// A keep-alive `ping` on the socket.
    Ping {
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
        if conn.is_some_and(|c| self.silent.contains(&c)) {
            return; // a half-open socket: lost
        }
        let key = self.arrival(conn);
        self.to_client.insert(key, m);
    }

    /// Sends a keep-alive frame (`ping` to the server, `pong` back) at the
    /// base latency, in order on its socket. No jitter is drawn: the link's
    /// random sequence, hence every other message's timing, is the same as
    /// without keep-alive.
    pub(super) fn send_keep_alive(&mut self, to_server: bool, conn: ConnId) {
        if !to_server && self.silent.contains(&conn) {
            return;
        }
        let last = self.conn_last.get(&conn).copied().unwrap_or(self.now);
        let at = (self.now + Duration::from_millis(self.faults.latency_ms)).max(last);
        self.conn_last.insert(conn, at);
        self.msg_counter += 1;
        let key = (at, self.msg_counter);
        if to_server {
            self.to_server.insert(key, ToServer::Ping { conn });
        } else {
            let text = ServerMessage::Pong.to_json();
            self.to_client.insert(key, ToClient::Msg { conn, text });
        }
    }

    /// The live socket goes half-open: the server still holds it and keeps
    /// writing, but nothing it sends reaches the client any more (no events,
    /// no `pong`, no close). Only the client's idle rule can notice.
    pub fn silence(&mut self) {
        let conns: Vec<ConnId> = self.server.conns.keys().copied().collect();
        for conn in conns {
            self.transcript.push(format!("{} ! silent", self.elapsed()));
            self.silent.insert(conn);
        }
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
