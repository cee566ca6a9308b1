//! Row family 4b: server broadcast against a bare tokio-tungstenite broadcast server.

use std::time::Instant;

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use x402_server::Limits;

use crate::fixture::{
    Ws, bare_connect, event_frame, local_server, paid_socket, payload, signer_payer, stream_cfg,
};
use crate::report::Report;

/// A bare tokio-tungstenite broadcast server: accept, send a first frame once
/// subscribed, then every broadcast frame to every socket. No payment, no rules.
async fn bare_broadcast_server(
    frames: tokio::sync::broadcast::Sender<tokio_tungstenite::tungstenite::Utf8Bytes>,
) -> String {
    use futures::SinkExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let mut rx = frames.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if ws
                    .send(Message::Text("{\"type\":\"hello\"}".into()))
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    match rx.recv().await {
                        Ok(f) => {
                            if ws.send(Message::Text(f)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            });
        }
    });
    format!("ws://{addr}/")
}

/// Reads `n` events on each socket (after its first frame) and returns when
/// every socket has them all, or has stopped.
async fn drain_all(sockets: Vec<Ws>, n: u64) -> tokio::sync::oneshot::Receiver<u64> {
    let (ready_tx, ready) = tokio::sync::mpsc::channel::<()>(sockets.len().max(1));
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let _first = ws.next().await;
            let _ = ready_tx.send(()).await;
            let mut got = 0u64;
            while got < n {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"event\"") => {
                        got += 1
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            got
        }));
    }
    drop(ready_tx);
    let count = tasks.len() as u64;
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let mut ready = ready;
    for _ in 0..count {
        let _ = ready.recv().await;
    }
    tokio::spawn(async move {
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        let _ = done_tx.send(total);
    });
    done
}

/// Server broadcast throughput: `sockets` subscribers, `n` events of `size`
/// bytes published in a burst, ours (paid sockets on the reference server)
/// against a bare tokio-tungstenite broadcast server, same frames, same
/// client code; rounds alternate, medians with the spread of round ratios.
pub(crate) async fn bench_broadcast(
    r: &mut Report,
    sockets: usize,
    size: usize,
    n: u64,
    rounds: usize,
) {
    let limits = Limits {
        replay_buffer: n as usize + 10,
        send_queue: n as usize + 10,
        max_connections_per_ip: 100_000,
        payments_per_ip_per_minute: 1_000_000,
        ..Limits::default()
    };
    let ids: Vec<String> = (0..rounds).map(|i| format!("b{i}")).collect();
    let local = local_server(ids.iter().map(|i| stream_cfg(i, 3600)).collect(), limits).await;
    let http = reqwest::Client::new();
    let payer = signer_payer();
    let payloads: Vec<Value> = (0..n).map(|i| payload(size, i)).collect();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut delivered = (0u64, 0u64);
    for id in &ids {
        // Bare server.
        let (tx, _) = tokio::sync::broadcast::channel(n as usize + 10);
        let url = bare_broadcast_server(tx.clone()).await;
        let mut socks = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            socks.push(
                bare_connect(&url, None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let done = drain_all(socks, n).await;
        let t = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            let _ = tx.send(event_frame(i as u64, p).into());
        }
        delivered.0 += done.await.unwrap_or(0);
        bare.push((sockets as u64 * n) as f64 / t.elapsed().as_secs_f64());
        drop(tx);
        // Ours.
        let mut socks = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            socks.push(paid_socket(&http, &payer, &local.base, id).await);
        }
        let done = drain_all(socks, n).await;
        let publisher = local
            .server_state
            .streams
            .get(id.as_str())
            .map(|e| x402_server::Publisher::new(e.hub.clone()))
            .unwrap_or_else(|| unreachable!());
        let t = Instant::now();
        for p in &payloads {
            publisher.publish(p);
        }
        delivered.1 += done.await.unwrap_or(0);
        ours.push((sockets as u64 * n) as f64 / t.elapsed().as_secs_f64());
    }
    let label = if size <= 100 { "~100 B" } else { "~4 KiB" };
    let expected = (sockets * rounds) as u64 * n;
    r.plain(
        &format!("4b. server broadcast ({label}): frames delivered, ours / bare"),
        delivered.1 as f64,
        "frames",
        &format!("no loss: {} and {} of {expected}", delivered.1, delivered.0),
        Some(delivered == (expected, expected)),
    );
    r.rounds(
        &format!("4b. server broadcast to {sockets} sockets ({label}), frames/s"),
        &ours,
        "frames/s",
        "bare tokio-tungstenite broadcast server",
        &bare,
        0.9,
    );
}
