//! The default WebSocket transport: tokio-tungstenite with rustls.

use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::Kind;
use crate::{ConnectError, HttpResponse, TransportError, WsConnection, WsConnector, WsFrame};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// tokio-tungstenite with a connect timeout and the protocol's 1 MiB frame limit.
#[derive(Debug, Clone)]
pub struct TungsteniteConnector {
    connect_timeout: Duration,
    max_message: usize,
}

impl Default for TungsteniteConnector {
    fn default() -> Self {
        TungsteniteConnector {
            connect_timeout: Duration::from_secs(10),
            max_message: x402_types::MAX_FRAME_BYTES,
        }
    }
}

impl TungsteniteConnector {
    /// With a connect (handshake) timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        TungsteniteConnector {
            connect_timeout,
            ..Default::default()
        }
    }
}

fn response_of(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> HttpResponse {
    HttpResponse {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        body: resp.body().clone().unwrap_or_default(),
    }
}

/// A failure of the connector's own (before any byte was sent).
fn failed(e: TransportError) -> ConnectError {
    ConnectError::Failed(e)
}

/// Resolves `host` and connects to the first address that answers, each
/// step's failure kept apart: a name that does not resolve is [`Kind::Dns`],
/// a closed port [`Kind::Refused`].
async fn tcp_connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, TransportError> {
    // `[::1]` in a URL is `::1` to the resolver.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| TransportError::from_cause(Kind::Dns, e).with_kind(Kind::Dns))?
        .collect();
    let mut last = TransportError::new(Kind::Dns, format!("{host} has no address"));
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                // Small frames (pings, renew notices) go out at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = TransportError::from_cause(Kind::Connect, e),
        }
    }
    Err(last)
}

#[async_trait]
impl WsConnector for TungsteniteConnector {
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| failed(TransportError::from_cause(Kind::Connection, e)))?;
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| failed(TransportError::from_cause(Kind::Connection, e)))?;
            let value = v
                .parse()
                .map_err(|_| failed(TransportError::connection("bad header value")))?;
            req.headers_mut().insert(name, value);
        }
        let host = req.uri().host().unwrap_or_default().to_string();
        let port = match (req.uri().port_u16(), req.uri().scheme_str()) {
            (Some(p), _) => p,
            (None, Some("wss")) => 443,
            (None, _) => 80,
        };
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        // Connecting first, on its own: a failure there sent nothing.
        let socket = match tokio::time::timeout_at(deadline, tcp_connect(&host, port)).await {
            Err(_) => return Err(failed(TransportError::new(Kind::ConnectTimeout, ""))),
            Ok(Err(e)) => return Err(failed(e)),
            Ok(Ok(s)) => s,
        };
        let fut = tokio_tungstenite::client_async_tls_with_config(req, socket, Some(cfg), None);
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => Err(failed(TransportError::timeout("WebSocket handshake"))),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                Err(ConnectError::Refused(response_of(&resp)))
            }
            // A TLS failure (tungstenite's Tls, or rustls' error inside an
            // I/O error while the TLS session is set up) happens before the
            // upgrade request is written: nothing was sent.
            Ok(Err(e)) => Err(failed(TransportError::from_cause(Kind::Connection, e))),
            Ok(Ok((stream, resp))) => Ok((
                response_of(&resp.map(|_| None)),
                Box::new(TungsteniteConnection { stream }),
            )),
        }
    }
}

struct TungsteniteConnection {
    stream: Stream,
}

#[async_trait]
impl WsConnection for TungsteniteConnection {
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>> {
        loop {
            return match self.stream.next().await? {
                // The frame's own buffer, not a copy.
                Ok(Message::Text(t)) => Some(Ok(WsFrame::Text(t.into()))),
                Ok(Message::Close(c)) => Some(Ok(WsFrame::Closed(c.map(|f| u16::from(f.code))))),
                Ok(Message::Binary(_)) => Some(Err(TransportError::frame("binary frame"))),
                Ok(_) => continue, // ping/pong handled by tungstenite
                Err(tungstenite::Error::Capacity(e)) => {
                    Some(Err(TransportError::frame(e.to_string())))
                }
                Err(e) => Some(Err(TransportError::from_cause(Kind::Connection, e))),
            };
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| TransportError::from_cause(Kind::Connection, e))
    }

    async fn close(&mut self, code: u16) -> Result<(), TransportError> {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.stream
            .close(Some(frame))
            .await
            .map_err(|e| TransportError::from_cause(Kind::Connection, e))
    }
}
