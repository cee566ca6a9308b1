//! `atomicstream demo`: the embedded default. A real server on loopback, a
//! development wallet, real signatures, real sockets; two faults are injected
//! through the swappable transports so the demo shows the recovery paths: the
//! answer of the first renewal is lost (the client retries with the same
//! payload), and the first socket is cut (the client resumes without paying).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atomicstream::transport::{
    ConnectError, HttpResponse, Method, TransportError, WsConnection, WsFrame,
};
use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, SpendPolicy,
};
use futures::StreamExt;

use crate::{Fail, exit};

/// Performs every request, but reports the first renewal's answer as lost.
struct LoseFirstRenewAnswer {
    inner: atomicstream::ReqwestTransport,
    lost: AtomicBool,
}

#[async_trait]
impl atomicstream::HttpTransport for LoseFirstRenewAnswer {
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpResponse, TransportError> {
        let r = self.inner.request(method, url, headers).await;
        if url.contains("/renew/") && !self.lost.swap(true, Ordering::SeqCst) {
            eprintln!("demo: [fault] the answer of the first renewal is lost on the way back");
            return Err(TransportError::Timeout("answer lost (injected)".into()));
        }
        r
    }
}

/// Cuts the first socket after `after`.
struct CutFirstSocket {
    inner: atomicstream::TungsteniteConnector,
    after: Duration,
    cut: Arc<AtomicBool>,
}

struct Cutting {
    inner: Box<dyn WsConnection>,
    at: Option<tokio::time::Instant>,
}

#[async_trait]
impl WsConnection for Cutting {
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>> {
        match self.at {
            Some(at) => tokio::select! {
                f = self.inner.recv() => f,
                _ = tokio::time::sleep_until(at) => {
                    eprintln!("demo: [fault] the connection drops");
                    None
                }
            },
            None => self.inner.recv().await,
        }
    }
    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        self.inner.send_text(text).await
    }
    async fn close(&mut self, code: u16) -> Result<(), TransportError> {
        self.inner.close(code).await
    }
}

#[async_trait]
impl atomicstream::WsConnector for CutFirstSocket {
    async fn connect(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        let (resp, conn) = self.inner.connect(url, headers).await?;
        let first = !self.cut.swap(true, Ordering::SeqCst);
        let at = first.then(|| tokio::time::Instant::now() + self.after);
        Ok((resp, Box::new(Cutting { inner: conn, at })))
    }
}

pub async fn run(slices: u64, all: bool) -> Result<u8, Fail> {
    crate::init_logs("warn");
    let started = Instant::now();
    let mut cfg = x402_server::Config::demo(([127, 0, 0, 1], 0).into());
    cfg.streams.retain(|s| s.id == "demo-fast");
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    cfg.secret = Some(hex_string(&secret));
    let slice = cfg.streams.first().map_or(4, |s| s.slice_seconds);
    let server = x402_server::ServerBuilder::new(cfg).bind().await?;
    let base = server.http_base().to_string();
    let state = server.state().clone();
    server.spawn();
    let wallet = LocalSigner::random()?;
    eprintln!(
        "demo: server on {base} (embedded facilitator: real EIP-712 checks, nothing settled on chain)"
    );
    eprintln!("demo: development wallet {wallet}");
    let payer = Arc::new(EvmExactPayer::new(wallet));
    let policy = SpendPolicy::new(Amount::from_display("0.01", 6)?)
        .with_lifetime_budget(Amount::from_display("0.10", 6)?);
    let client = Client::builder()
        .base_url(&base)
        .payer(payer)
        .policy(policy)
        .max_slices(slices)
        .http_transport(Arc::new(LoseFirstRenewAnswer {
            inner: atomicstream::ReqwestTransport::default(),
            lost: AtomicBool::new(false),
        }))
        .ws_transport(Arc::new(CutFirstSocket {
            inner: atomicstream::TungsteniteConnector::default(),
            after: Duration::from_millis(slice * 1000 + slice * 500),
            cut: Arc::new(AtomicBool::new(false)),
        }))
        .build()?;
    let info = client.schema("demo-fast").await?;
    eprintln!(
        "demo: stream demo-fast costs {} USDC per {}-second slice; buying {slices} slices",
        info.price_per_slice, info.estimated_slice_seconds
    );
    let mut session = client
        .open("demo-fast")
        .await
        .map_err(|e| Fail(crate::error_code(&e), e.to_string()))?;
    let mut events = 0u64;
    let reason = loop {
        let Some(ev) = tokio::time::timeout(Duration::from_secs(20), session.next())
            .await
            .ok()
            .flatten()
        else {
            break EndReason::ConnectionLost { attempts: 0 };
        };
        match ev {
            ClientEvent::Data(e) => {
                events += 1;
                if all || e.seq % 10 == 0 {
                    println!("{{\"seq\":{},\"data\":{}}}", e.seq, e.data.get());
                }
            }
            ClientEvent::Ended(r) => break r,
            other => eprintln!("demo: {}", crate::describe(&other)),
        }
    };
    let p = session.progress();
    eprintln!();
    eprintln!("demo summary");
    eprintln!("  slices bought     {}", p.slices);
    eprintln!(
        "  amount paid       {} USDC ({} atomic units)",
        p.paid.to_display(6),
        p.paid
    );
    eprintln!("  events received   {events}");
    eprintln!(
        "  renewals          {} (retried with the same payload: {})",
        p.renewals, p.renew_retries
    );
    eprintln!(
        "  reconnects        {} (resumed without paying)",
        p.reconnects
    );
    eprintln!(
        "  server credited   {} payments",
        state.stats.payments.load(Ordering::Relaxed)
    );
    eprintln!(
        "  ended             {reason:?} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let ok = matches!(reason, EndReason::SliceLimit | EndReason::Stopped)
        && p.slices == slices
        && p.reconnects >= 1
        && p.renew_retries >= 1;
    Ok(if ok { exit::OK } else { exit::FAILURE })
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
