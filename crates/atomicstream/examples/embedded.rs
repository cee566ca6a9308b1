//! A server and a client in one program: sell a stream fed by your code, buy it back.
//!
//! ```sh
//! cargo run -p atomicstream --example embedded
//! ```

use std::sync::Arc;
use std::time::Duration;

use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
use futures::StreamExt;
use x402_server::{Config, DEV_PAY_TO, ServerBuilder, SourceConfig, StreamConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::demo("127.0.0.1:0".parse()?);
    cfg.secret = Some("example-secret".into());
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
    while let Some(ev) = session.next().await {
        match ev {
            ClientEvent::Data(e) => println!("{} {}", e.seq, e.data),
            ClientEvent::Ended(r) => {
                println!("ended: {r:?}, paid {} USDC", session.paid().to_display(6))
            }
            _ => {}
        }
    }
    Ok(())
}
