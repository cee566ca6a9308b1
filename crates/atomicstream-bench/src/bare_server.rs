//! The baseline of row 4c: a bare tokio-tungstenite broadcast server in its own process,
//! what a user would write without payments: accept, upgrade, subscribe to a `broadcast`
//! channel, send every frame. A ticker publishes `rate` events a second in the same
//! frame shape as our synthetic source. `atomicstream-bench bare-server RATE PORT` runs it.

use std::time::Duration;

use futures::SinkExt;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::fixture::event_frame;

/// Runs the bare server until killed.
pub(crate) async fn run(rate: f64, port: u16) {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare-server: bind {port}: {e}");
            std::process::exit(1);
        }
    };
    let (tx, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(1024);
    let ticker = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0u64;
        loop {
            tick.tick().await;
            let data = serde_json::json!({"type": "trade", "symbol": "BTC-USD",
                "price": 100.25, "size": 1.25, "side": "buy"});
            let _ = ticker.send(Utf8Bytes::from(event_frame(seq, &data)));
            seq += 1;
        }
    });
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            loop {
                match rx.recv().await {
                    Ok(frame) => {
                        if ws.send(Message::Text(frame)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }
}

/// The bare server in its own process (this binary, `bare-server`).
pub(crate) struct BareProcess {
    child: std::process::Child,
    pub(crate) url: String,
}

impl BareProcess {
    pub(crate) async fn start(rate: f64) -> Result<BareProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let child = std::process::Command::new(&exe)
            .args(["bare-server", &rate.to_string(), &port.to_string()])
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let server = BareProcess {
            child,
            url: format!("ws://127.0.0.1:{port}/"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("the bare server did not listen on {port}"))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `n` plain sockets on the bare server, `parallel` at a time, with the small
/// read buffer the paid sockets of row 4c use.
pub(crate) async fn open_bare<T>(
    url: &str,
    n: usize,
    parallel: usize,
    then: impl FnMut(crate::fixture::Ws) -> T,
) -> (Vec<T>, usize) {
    crate::process::open_many(n, parallel, then, |_| async move {
        tokio_tungstenite::connect_async_with_config(
            url,
            Some(crate::process::small_buffer()),
            true,
        )
        .await
        .ok()
        .map(|(ws, _)| ws)
    })
    .await
}
