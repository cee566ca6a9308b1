//! The bounded soak: hundreds of clients opening, streaming, renewing,
//! dropping and resuming at random, a share of them misbehaving; afterwards
//! the server must still serve, its memory must have come back, every paid
//! second must have been delivered or still be available, and no bad payment
//! may have been credited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atomicstream::transport::{
    ConnectError, HttpResponse, TransportError, WsConnection, WsConnector, WsFrame,
};
use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, SpendPolicy,
};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use x402_payer::Payer;
use x402_server::{EmbeddedFacilitator, Limits};

use crate::fixture::{bare_connect, quote, signer_payer, stream_cfg};

/// Cuts sockets at random moments.
struct Flaky {
    inner: atomicstream::TungsteniteConnector,
    seed: AtomicU64,
}

struct FlakyConn {
    inner: Box<dyn WsConnection>,
    cut_at: tokio::time::Instant,
}

#[async_trait]
impl WsConnection for FlakyConn {
    async fn recv(&mut self) -> Option<Result<WsFrame, TransportError>> {
        tokio::select! {
            f = self.inner.recv() => f,
            _ = tokio::time::sleep_until(self.cut_at) => None,
        }
    }
    async fn send_text(&mut self, t: String) -> Result<(), TransportError> {
        self.inner.send_text(t).await
    }
    async fn close(&mut self, c: u16) -> Result<(), TransportError> {
        self.inner.close(c).await
    }
}

#[async_trait]
impl WsConnector for Flaky {
    async fn connect(
        &self,
        url: &str,
        h: &[(String, String)],
    ) -> Result<(HttpResponse, Box<dyn WsConnection>), ConnectError> {
        let (r, c) = self.inner.connect(url, h).await?;
        let s = self.seed.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        let after = Duration::from_millis(2_000 + (s.wrapping_mul(2_654_435_761) % 8_000));
        Ok((
            r,
            Box::new(FlakyConn {
                inner: c,
                cut_at: tokio::time::Instant::now() + after,
            }),
        ))
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    good_sessions: AtomicU64,
    accepted_payments: AtomicU64,
    events: AtomicU64,
    unexplained_gaps: AtomicU64,
    reconnects: AtomicU64,
    bad_attempts: AtomicU64,
    bad_accepted: AtomicU64,
    failures: AtomicU64,
    /// Paid time left when a session ended for any reason but "used up" or "stopped".
    lost_paid_ms: AtomicU64,
}

async fn good_client(base: String, seed: u64, until: Instant, tally: Arc<Tally>) {
    while Instant::now() < until {
        let client = match Client::builder()
            .base_url(&base)
            .payer(Arc::new(EvmExactPayer::new(
                LocalSigner::random().unwrap_or_else(|_| unreachable!("OS randomness")),
            )))
            .policy(
                SpendPolicy::new(Amount::from(10_000))
                    .with_lifetime_budget(Amount::from(1_000_000)),
            )
            .max_slices(1 + seed % 4)
            .ws_transport(Arc::new(Flaky {
                inner: Default::default(),
                seed: AtomicU64::new(seed),
            }))
            .build()
        {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut s = match client.open("soak").await {
            Ok(s) => s,
            Err(e) => {
                if !e.is_retryable() {
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tally.good_sessions.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<u64> = None;
        let mut reported = 0u64;
        let mut gaps = 0u64;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), s.next())
                .await
                .ok()
                .flatten();
            match ev {
                Some(ClientEvent::Data(e)) => {
                    if let Some(l) = last {
                        gaps += e.seq.saturating_sub(l + 1);
                    }
                    last = Some(e.seq);
                    tally.events.fetch_add(1, Ordering::Relaxed);
                }
                Some(ClientEvent::EventsLost { count }) => reported += count,
                Some(ClientEvent::Resumed { missed }) => reported += missed,
                Some(ClientEvent::Ended(r)) => {
                    if !matches!(r, EndReason::SliceLimit | EndReason::Stopped) {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                        let left = u64::try_from(s.remaining().as_millis()).unwrap_or(u64::MAX);
                        tally.lost_paid_ms.fetch_add(left, Ordering::Relaxed);
                    }
                    break;
                }
                Some(_) => {}
                None => {
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if Instant::now() > until {
                s.stop();
            }
        }
        let p = s.progress();
        tally
            .accepted_payments
            .fetch_add(p.slices, Ordering::Relaxed);
        tally.reconnects.fetch_add(p.reconnects, Ordering::Relaxed);
        if gaps > reported {
            tally
                .unexplained_gaps
                .fetch_add(gaps - reported, Ordering::Relaxed);
        }
    }
}

async fn bad_client(base: String, kind: u64, until: Instant, tally: Arc<Tally>) {
    let http = reqwest::Client::new();
    let payer = signer_payer();
    let addr = base.trim_start_matches("http://").to_string();
    while Instant::now() < until {
        tally.bad_attempts.fetch_add(1, Ordering::Relaxed);
        match kind % 5 {
            // Garbage and oversized frames on an unpaid upgrade attempt, then on a paid one.
            0 => {
                let (schema, offer) = quote(&http, &base, "soak").await;
                if let Ok(p) = payer.pay(&offer).await {
                    // A valid payment: this one is paid for honestly, then abused.
                    if let Ok(mut ws) =
                        bare_connect(&schema.websocket_endpoint, Some(&p.to_header())).await
                    {
                        tally.accepted_payments.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.send(Message::Text("{{{{ not json".into())).await;
                        let _ = ws.send(Message::Binary(vec![0u8; 1000].into())).await;
                        let _ = ws
                            .send(Message::Text("x".repeat(2 * 1024 * 1024).into()))
                            .await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
                    }
                }
            }
            // Slowloris: headers one byte at a time.
            1 => {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await {
                    let req =
                        b"GET /v2/stream/soak?t=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
                    for b in req.iter() {
                        if tcp.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if Instant::now() > until {
                            break;
                        }
                    }
                }
            }
            // Replayed payment: accepted once (honest), then replayed on other tokens.
            2 => {
                let (schema, offer) = quote(&http, &base, "soak").await;
                if let Ok(p) = payer.pay(&offer).await {
                    let h = p.to_header();
                    if bare_connect(&schema.websocket_endpoint, Some(&h))
                        .await
                        .is_ok()
                    {
                        tally.accepted_payments.fetch_add(1, Ordering::Relaxed);
                    }
                    for _ in 0..3 {
                        let (s2, _) = quote(&http, &base, "soak").await;
                        if bare_connect(&s2.websocket_endpoint, Some(&h)).await.is_ok() {
                            tally.bad_accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // Underpaid.
            3 => {
                let (schema, offer) = quote(&http, &base, "soak").await;
                let mut r = offer.requirement();
                r.amount = Amount::from(1);
                let cheap =
                    x402_types::Offer::from_requirement(x402_types::PathVersion::V2, &r, "x", "y");
                if let Ok(p) = payer.pay(&cheap).await
                    && bare_connect(&schema.websocket_endpoint, Some(&p.to_header()))
                        .await
                        .is_ok()
                {
                    tally.bad_accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Tampered tokens and malformed headers.
            _ => {
                let (schema, offer) = quote(&http, &base, "soak").await;
                let url = schema.websocket_endpoint.replace("?t=", "?t=A");
                if let Ok(p) = payer.pay(&offer).await
                    && bare_connect(&url, Some(&p.to_header())).await.is_ok()
                {
                    tally.bad_accepted.fetch_add(1, Ordering::Relaxed);
                }
                if bare_connect(&schema.websocket_endpoint, Some("!!not base64!!"))
                    .await
                    .is_ok()
                {
                    tally.bad_accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP balancer: each connection goes to the next backend that accepts.
async fn balancer(backends: Vec<std::net::SocketAddr>) -> Option<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let addr = l.local_addr().ok()?;
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                continue;
            };
            next += 1;
            let backends = backends.clone();
            tokio::spawn(async move {
                for k in 0..backends.len() {
                    let b = backends[(next + k) % backends.len()];
                    if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                        let _ = out.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    Some(format!("127.0.0.1:{}", addr.port()))
}

/// Runs the soak: `instances` servers (several need `redis`, and then sit
/// behind a round-robin balancer sharing one Redis).
pub async fn run(secs: u64, instances: usize, redis: bool) -> i32 {
    let instances = instances.max(1);
    if instances > 1 && !redis {
        eprintln!("soak: several instances share state through Redis: add --redis");
        return 2;
    }
    let redis_child = if redis {
        match atomicstream_testkit::Redis::try_start() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("soak: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    // Ports first, so that every instance can name the balancer as its public address.
    let mut listeners = Vec::new();
    for _ in 0..instances {
        match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => listeners.push(a),
            Err(e) => {
                eprintln!("soak: no port: {e}");
                return 1;
            }
        }
    }
    let public = if instances > 1 {
        balancer(listeners.clone()).await
    } else {
        None
    };
    // Short quotes and lingering so that the sweeper's work shows within the run.
    let limits = Limits {
        max_connections_per_ip: 100_000,
        payments_per_ip_per_minute: 1_000_000,
        header_timeout_secs: 3,
        replay_buffer: 2048,
        session_linger_secs: 5,
        ..Limits::default()
    };
    let mut cfg =
        x402_server::Config::demo("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()));
    if let Some(r) = &redis_child {
        let port = r.port();
        cfg.store = x402_server::StoreConfig::Redis {
            url: format!("redis://127.0.0.1:{port}"),
            prefix: "soak:".into(),
            timeout_ms: 1000,
        };
    }
    if let Some(p) = &public {
        cfg.public_http = Some(format!("http://{p}"));
        cfg.public_ws = Some(format!("ws://{p}"));
    }
    cfg.secret = Some("soak-secret-soak-secret-soak-secret-soak".into());
    let mut sc = stream_cfg("soak", 3);
    sc.max_timeout_seconds = 30;
    sc.source = x402_server::SourceConfig::Synthetic {
        rate: 20.0,
        symbol: "SOAK".into(),
        pad: 0,
    };
    cfg.streams = vec![sc];
    cfg.limits = limits;
    // One ledger for all instances: it counts every settlement once.
    let ledger = Arc::new(EmbeddedFacilitator::default());
    let mut states = Vec::new();
    let mut base = String::new();
    for addr in &listeners {
        let mut cfg = cfg.clone();
        cfg.listen = *addr;
        let server = match x402_server::ServerBuilder::new(cfg)
            .facilitator(ledger.clone())
            .bind()
            .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("soak: cannot start server: {e}");
                return 1;
            }
        };
        base = server.http_base().to_string();
        states.push(server.state().clone());
        server.spawn();
    }
    let stats = || {
        states.iter().fold(
            atomicstream::session::EndpointStats::default(),
            |mut acc, s| {
                let e = s.endpoint_stats();
                acc.sessions += e.sessions;
                acc.records += e.records;
                acc.claims += e.claims;
                acc.settling += e.settling;
                acc.connections += e.connections;
                acc
            },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_start = rss_kib();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tally = Arc::new(Tally::default());
    let (good, bad) = (240u64, 60u64);
    let store = if redis { "Redis" } else { "memory" };
    eprintln!(
        "soak: {good} honest clients and {bad} misbehaving ones for {secs} s against {base} \
         ({instances} instance(s), state in {store})"
    );
    let mut tasks = Vec::new();
    for i in 0..good {
        tasks.push(tokio::spawn(good_client(
            base.clone(),
            i.wrapping_mul(7919) + 1,
            until,
            tally.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..bad {
        tasks.push(tokio::spawn(bad_client(
            base.clone(),
            i,
            until,
            tally.clone(),
        )));
    }
    let mut rss_peak = rss_start;
    // Warm-up: the first fifth of the run (at least 5 s). The resident set
    // after it is the level the end must come back near.
    let warm_at = started + Duration::from_secs((secs / 5).max(5));
    let mut rss_warm = None;
    let mut metrics_warm = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now_rss = rss_kib();
        rss_peak = rss_peak.max(now_rss);
        if rss_warm.is_none() && Instant::now() >= warm_at {
            rss_warm = Some(now_rss);
            metrics_warm = scrape_all(&states).await;
        }
    }
    let rss_warm = rss_warm.unwrap_or(rss_peak);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
    }
    // Let the server notice the closed sockets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sockets_left: u64 = states.iter().map(|s| s.sockets_open()).sum();
    // Still serving: a fresh honest client can buy a slice.
    let fresh = Client::builder()
        .base_url(&base)
        .payer(Arc::new(EvmExactPayer::new(
            LocalSigner::random().unwrap_or_else(|_| unreachable!()),
        )))
        .policy(SpendPolicy::new(Amount::from(10_000)))
        .build()
        .ok();
    let still_serving = match fresh {
        Some(c) => c.open("soak").await.is_ok(),
        None => false,
    };
    // Wait for the sweeper to drop the sessions whose paid time and linger passed.
    let sessions_at_end = stats().sessions;
    let mut sessions_after_sweep = sessions_at_end;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sessions_after_sweep = stats().sessions;
        if sessions_after_sweep <= instances {
            break;
        }
    }
    // Payment records and nonce claims expire once validBefore (30 s) plus
    // skew (60 s) has passed: wait for them too.
    // (The fresh client's session may be known on every instance.)
    let mut ep = stats();
    for _ in 0..120 {
        if ep.records <= instances && ep.claims <= instances {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        ep = stats();
    }
    let metrics_end = scrape_all(&states).await;
    let metrics_moving = matches!((metrics_warm, metrics_end), (Some(a), Some(b)) if b > a);
    let rss_end = rss_kib();
    let rss_bounded = rss_end * 4 <= rss_warm * 5;
    let credited = ledger.ledger().len() as u64 - u64::from(still_serving);
    let t = &tally;
    let accepted = t.accepted_payments.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "honest_sessions": t.good_sessions.load(Ordering::Relaxed),
        "events_delivered": t.events.load(Ordering::Relaxed),
        "reconnects": t.reconnects.load(Ordering::Relaxed),
        "unexplained_gaps": t.unexplained_gaps.load(Ordering::Relaxed),
        "client_failures": t.failures.load(Ordering::Relaxed),
        "paid_seconds_lost": t.lost_paid_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        "instances": instances,
        "store": store,
        "misbehaving_attempts": t.bad_attempts.load(Ordering::Relaxed),
        "bad_payments_accepted": t.bad_accepted.load(Ordering::Relaxed),
        "payments_credited": credited,
        "payments_clients_saw_accepted": accepted,
        "sockets_left_open": sockets_left,
        "sessions_at_end": sessions_at_end,
        "sessions_after_sweep": sessions_after_sweep,
        "still_serving": still_serving,
        "metrics_payments_credited": {"after_warm_up": metrics_warm, "end": metrics_end},
        "records_at_end": ep.records,
        "claims_at_end": ep.claims,
        "rss_kib": {"start": rss_start, "after_warm_up": rss_warm, "peak": rss_peak, "end": rss_end},
        "rss_end_within_25pct_of_warm_up": rss_bounded,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        "target/bench/soak.json",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    let ok = still_serving
        && t.bad_accepted.load(Ordering::Relaxed) == 0
        && t.unexplained_gaps.load(Ordering::Relaxed) == 0
        && credited <= accepted + good
        && sockets_left == 0
        && sessions_after_sweep <= instances
        && ep.records <= instances
        && ep.claims <= instances
        && t.lost_paid_ms.load(Ordering::Relaxed) == 0
        && rss_bounded
        && metrics_moving;
    if ok {
        eprintln!("soak: passed");
        0
    } else {
        eprintln!("soak: FAILED");
        1
    }
}

/// Credited payments summed over every instance's `/metrics`.
async fn scrape_all(states: &[Arc<x402_server::AppState>]) -> Option<u64> {
    let mut sum = 0;
    for s in states {
        sum += scrape_credited(&format!("http://{}", s.cfg.listen)).await?;
    }
    Some(sum)
}

/// `atomicstream_payments_credited_total` of the soak stream, read from `GET /metrics`.
async fn scrape_credited(base: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("atomicstream_payments_credited_total{stream=\"soak\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
