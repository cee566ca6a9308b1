//! Row family 4: fan-out to 1, 100 and 1000 paid sessions in process (optionally through Redis).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use x402_server::Limits;
use x402_types::ServerMessage;

use crate::fixture::{local_server_on, paid_socket, signer_payer, stream_cfg};
use crate::report::{Report, percentile};

pub(crate) async fn bench_fanout(r: &mut Report, sessions: usize, redis: Option<&str>) {
    let limits = Limits {
        max_connections_per_ip: 100_000,
        payments_per_ip_per_minute: 1_000_000,
        ..Limits::default()
    };
    let local = local_server_on(vec![stream_cfg("f", 3600)], limits, redis).await;
    let tag = if redis.is_some() { " (Redis)" } else { "" };
    // Through Redis the events go into the shared log, as another process would publish them.
    let shared = match redis {
        Some(url) => Some(
            x402_server::RedisStore::connect(
                url,
                &format!("bench{}:", std::process::id()),
                Duration::from_secs(1),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        ),
        None => None,
    };
    let http = reqwest::Client::new();
    let payer = signer_payer();
    let mut readers = Vec::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, f64)>();
    for _ in 0..sessions {
        let mut ws = paid_socket(&http, &payer, &local.base, "f").await;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m
                    && let Ok(ServerMessage::Event(e)) = ServerMessage::parse(t.as_str())
                {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64() * 1e3)
                        .unwrap_or(0.0);
                    let lat = now_ms - e.ts.unwrap_or(0) as f64;
                    let _ = tx.send((e.seq, lat));
                }
            }
        }));
    }
    drop(tx);
    let publisher = local
        .server_state
        .streams
        .get("f")
        .map(|e| x402_server::Publisher::new(e.hub.clone()))
        .unwrap_or_else(|| unreachable!());
    let rate = 10.0;
    let n = 50u64;
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        let data = json!({"i": i, "px": 100.0});
        match &shared {
            Some(st) => {
                let _ = st.publish("f", 1024, &data).await;
            }
            None => {
                publisher.publish(&data);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = t.elapsed().as_secs_f64();
    for h in &readers {
        h.abort();
    }
    let mut lats = Vec::new();
    let mut count = 0u64;
    while let Ok((_, l)) = rx.try_recv() {
        count += 1;
        lats.push(l);
    }
    let expected = n * sessions as u64;
    let mut l2 = lats.clone();
    let p99 = percentile(&mut l2, 0.99);
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: events delivered/s"),
        count as f64 / secs,
        "events/s",
        &format!("no loss ({count}/{expected})"),
        Some(count == expected),
    );
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: latency p50"),
        percentile(&mut lats, 0.5),
        "ms",
        "report",
        None,
    );
    r.plain(
        &format!("4. fan-out to {sessions}{tag}: latency p99"),
        p99,
        "ms",
        "p99 < 50 ms",
        Some(p99 < 50.0),
    );
}
