//! Fault injection through the swappable transports, for demos and tests.
//!
//! [`Blip`] models one short network outage at the worst moment: when the
//! first renewal is sent (a renew request, or a channel's voucher in-band on the
//! socket), every open socket drops and the renewal's answer is lost (the server
//! did receive and accept it). A correct client resumes without paying and retries
//! the renewal with the same payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    ConnectError, HttpResponse, HttpTransport, Method, TransportError, WsConnection, WsConnector,
    WsFrame,
};

/// One outage, shared by an HTTP and a WebSocket wrapper.
#[derive(Debug)]
pub struct Blip {
    fired: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Blip {
    /// A blip that has not happened yet.
    pub fn new() -> Arc<Blip> {
        let (tx, _) = watch::channel(false);
        Arc::new(Blip {
            fired: AtomicBool::new(false),
            tx,
        })
    }

    /// Whether it happened.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Wraps an HTTP transport.
    pub fn http(self: &Arc<Self>, inner: Arc<dyn HttpTransport>) -> BlipHttp {
        BlipHttp {
            blip: self.clone(),
            inner,
        }
    }

    /// Wraps a WebSocket connector.
    pub fn ws(self: &Arc<Self>, inner: Arc<dyn WsConnector>) -> BlipWs {
        BlipWs {
            blip: self.clone(),
            inner,
        }
    }
}

/// The HTTP side of a [`Blip`].
pub struct BlipHttp {
    blip: Arc<Blip>,
    inner: Arc<dyn HttpTransport>,
}

#[async_trait]
impl HttpTransport for BlipHttp {
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpResponse, TransportError> {
        let fire = url.contains("/renew/") && !self.blip.fired.swap(true, Ordering::SeqCst);
        if fire {
            tracing::warn!("[fault] network blip: sockets drop and the renewal's answer is lost");
            let _ = self.blip.tx.send(true);
        }
        let r = self.inner.request(method, url, headers).await;
        if fire {
            return Err(TransportError::timeout("answer lost (injected)"));
        }
        r
    }
}

/// The WebSocket side of a [`Blip`].
pub struct BlipWs {
    blip: Arc<Blip>,
    inner: Arc<dyn WsConnector>,
}

struct Cut {
    inner: Box<dyn WsConnection>,
    rx: Option<watch::Receiver<bool>>,
    blip: Arc<Blip>,
}

#[async_trait]
impl WsConnection for Cut {
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>> {
        // Cancel-safe: the receiver stays in place if this future is dropped.
        let Some(rx) = self.rx.as_mut() else {
            return self.inner.recv().await;
        };
        let inner = &mut self.inner;
        let frame = tokio::select! {
            f = inner.recv() => Some(f),
            _ = rx.wait_for(|v| *v) => None,
        };
        match frame {
            Some(f) => f,
            None => {
                self.rx = None;
                None // cut: the socket is gone for the client
            }
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        // A renewal carried in-band: it reaches the server, then the network blips.
        let fire =
            text.contains(r#""type":"voucher""#) && !self.blip.fired.swap(true, Ordering::SeqCst);
        let r = self.inner.send_text(text).await;
        if fire {
            tracing::warn!(
                "[fault] network blip: sockets drop and the in-band voucher's answer is lost"
            );
            let _ = self.blip.tx.send(true);
        }
        r
    }
    async fn close(&mut self, code: u16) -> Result<(), TransportError> {
        self.inner.close(code).await
    }
}

#[async_trait]
impl WsConnector for BlipWs {
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        let (resp, conn) = self.inner.connect(url, headers).await?;
        // Sockets opened after the blip are not affected.
        let rx = (!self.blip.fired()).then(|| self.blip.tx.subscribe());
        Ok((
            resp,
            Box::new(Cut {
                inner: conn,
                rx,
                blip: self.blip.clone(),
            }),
        ))
    }
}
