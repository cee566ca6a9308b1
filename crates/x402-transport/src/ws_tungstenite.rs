//! The default WebSocket transport: tokio-tungstenite with rustls.

use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

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

#[async_trait]
impl WsConnector for TungsteniteConnector {
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| ConnectError::Failed(TransportError::Connection(e.to_string())))?;
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ConnectError::Failed(TransportError::Connection(e.to_string())))?;
            let value = v.parse().map_err(|_| {
                ConnectError::Failed(TransportError::Connection("bad header value".into()))
            })?;
            req.headers_mut().insert(name, value);
        }
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let fut = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Err(_) => Err(ConnectError::Failed(TransportError::Timeout(
                "WebSocket handshake".into(),
            ))),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                Err(ConnectError::Refused(response_of(&resp)))
            }
            Ok(Err(e)) => Err(ConnectError::Failed(TransportError::Connection(
                e.to_string(),
            ))),
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
                Ok(Message::Binary(_)) => Some(Err(TransportError::Frame("binary frame".into()))),
                Ok(_) => continue, // ping/pong handled by tungstenite
                Err(tungstenite::Error::Capacity(e)) => {
                    Some(Err(TransportError::Frame(e.to_string())))
                }
                Err(e) => Some(Err(TransportError::Connection(e.to_string()))),
            };
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }

    async fn close(&mut self, code: u16) -> Result<(), TransportError> {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.stream
            .close(Some(frame))
            .await
            .map_err(|e| TransportError::Connection(e.to_string()))
    }
}
