#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod faults;
#[cfg(feature = "reqwest")]
mod http_reqwest;
#[cfg(feature = "tungstenite")]
mod ws_tungstenite;

use async_trait::async_trait;

pub use error::{Cause, Kind as TransportErrorKind, TransportError, classify};
#[cfg(feature = "reqwest")]
pub use http_reqwest::ReqwestTransport;
#[cfg(feature = "tungstenite")]
pub use ws_tungstenite::TungsteniteConnector;
pub use x402_session::{HttpResponse, Method};

/// One HTTP exchange.
#[async_trait]
pub trait HttpTransport: Send + Sync {
    /// Performs a request with no body; any status is an answer.
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpResponse, TransportError>;
}

/// Why a WebSocket could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The server answered the upgrade with a non-101 status.
    Refused(HttpResponse),
    /// No answer.
    Failed(TransportError),
}

/// What a WebSocket delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(WsText),
    /// The peer closed, with its code if any.
    Closed(Option<u16>),
}

/// A text frame's payload (UTF-8). The tokio-tungstenite adapter hands over
/// the frame's own buffer, so receiving does not copy it; other transports
/// give a `String`.
///
/// ```
/// let t = x402_transport::WsText::from(r#"{"type":"pong"}"#.to_string());
/// assert_eq!(t.as_str(), r#"{"type":"pong"}"#);
/// ```
#[derive(Debug, Clone)]
pub struct WsText(TextRepr);

#[derive(Debug, Clone)]
enum TextRepr {
    Owned(String),
    #[cfg(feature = "tungstenite")]
    Tungstenite(tokio_tungstenite::tungstenite::Utf8Bytes),
}

impl WsText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            TextRepr::Owned(s) => s,
            #[cfg(feature = "tungstenite")]
            TextRepr::Tungstenite(b) => b.as_str(),
        }
    }
}

impl std::ops::Deref for WsText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for WsText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for WsText {}

impl From<String> for WsText {
    fn from(s: String) -> Self {
        WsText(TextRepr::Owned(s))
    }
}

impl From<&str> for WsText {
    fn from(s: &str) -> Self {
        WsText(TextRepr::Owned(s.to_string()))
    }
}

#[cfg(feature = "tungstenite")]
impl From<tokio_tungstenite::tungstenite::Utf8Bytes> for WsText {
    fn from(b: tokio_tungstenite::tungstenite::Utf8Bytes) -> Self {
        WsText(TextRepr::Tungstenite(b))
    }
}

/// An open WebSocket.
#[async_trait]
pub trait WsConnection: Send {
    /// The next frame; `None` when the connection is gone.
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>>;
    /// Sends a text frame.
    async fn send_text(&mut self, text: String) -> Result<(), TransportError>;
    /// Closes with a code.
    async fn close(&mut self, code: u16) -> Result<(), TransportError>;
}

/// Opens WebSockets.
#[async_trait]
pub trait WsConnector: Send + Sync {
    /// Opens `url` with extra upgrade headers; on success returns the 101 answer and the socket.
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError>;
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<Box<dyn HttpTransport>>();
    assert_send_sync::<Box<dyn WsConnector>>();
};
