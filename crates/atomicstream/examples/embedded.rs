//! A server and a client in one program: sell a stream fed by your code, buy it back.
//!
//! ```sh
//! cargo run -p atomicstream --example embedded
//! ```
//!
//! It pays with a fresh random key (the embedded facilitator checks signatures and settles
//! nothing) and stops after two slices, or after N events with `--events N`.

use std::sync::Arc;
use std::time::Duration;

use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
use futures::StreamExt;
use x402_server::{Config, DEV_PAY_TO, ServerBuilder, SourceConfig, StreamConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut max_events: Option<u64> = None;
    while let Some(a) = args.next() {
        if a == "--events" {
            let n = args.next().ok_or("--events needs a number")?;
            max_events = Some(
                n.parse()
                    .map_err(|_| format!("--events {n}: not a number"))?,
            );
        }
    }
    let mut cfg = Config::demo("127.0.0.1:0".parse()?);
    // No `secret`: the server signs its session tokens with a random key of its own.
    cfg.streams = vec![StreamConfig {
        id: "ticks".into(),
        title: "Ticks".into(),
        description: "Counter published by this program".into(),
        price_per_minute: "0.06".into(),
        slice_seconds: 3,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 60,
        source: SourceConfig::Api,
        channel: None,
    }];
    let server = ServerBuilder::new(cfg).bind().await?;
    let base = server.http_base().to_string();
    let publisher = server.publisher("ticks").ok_or("no stream")?;
    server.spawn();
    tokio::spawn(async move {
        for i in 0u64.. {
            publisher.publish(&serde_json::json!({ "tick": i }));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let client = Client::builder()
        .base_url(base)
        .payer(Arc::new(EvmExactPayer::new(LocalSigner::random()?)))
        .policy(
            SpendPolicy::new(Amount::from_display("0.01", 6)?)
                .with_lifetime_budget(Amount::from_display("0.01", 6)?),
        )
        .max_slices(2)
        .build()?;
    let mut session = client.open("ticks").await?;
    let mut seen = 0u64;
    while let Some(ev) = session.next().await {
        match ev {
            ClientEvent::Data(e) => {
                println!("{} {}", e.seq, e.data);
                seen += 1;
                if max_events.is_some_and(|n| seen >= n) {
                    session.stop(); // the stream then ends with `Ended(Stopped)`
                }
            }
            ClientEvent::Ended(r) => {
                println!("ended: {r}, paid {} USDC", session.paid().to_display(6))
            }
            _ => {}
        }
    }
    Ok(())
}
