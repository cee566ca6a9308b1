//! `atomicstream demo`: the embedded default. A real server on loopback, a
//! development wallet, real signatures, real sockets; two faults are injected
//! through the swappable transports so the demo shows the recovery paths: when
//! the first renewal is sent the socket drops and the renewal's answer is lost;
//! the client resumes without paying and retries with the same payload.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use atomicstream::transport::faults::Blip;
use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, SpendPolicy,
};
use futures::StreamExt;

use crate::{Fail, exit};

pub async fn run(slices: u64, all: bool) -> Result<u8, Fail> {
    crate::init_logs("warn");
    let started = Instant::now();
    let mut cfg = x402_server::Config::demo(([127, 0, 0, 1], 0).into());
    cfg.streams.retain(|s| s.id == "demo-fast");
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    cfg.secret = Some(hex_string(&secret));
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
    let blip = Blip::new();
    let client = Client::builder()
        .base_url(&base)
        .payer(payer)
        .policy(policy)
        .max_slices(slices)
        .http_transport(Arc::new(
            blip.http(Arc::new(atomicstream::ReqwestTransport::standard()?)),
        ))
        .ws_transport(Arc::new(
            blip.ws(Arc::new(atomicstream::TungsteniteConnector::default())),
        ))
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
