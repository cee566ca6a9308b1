//! Buy two slices of a stream from a running server and print the events.
//!
//! ```sh
//! cargo run --release -- serve &                       # the local server
//! X402_PRIVATE_KEY=0x... cargo run -p atomicstream --example stream -- http://127.0.0.1:4021 demo-fast
//! ```

use std::sync::Arc;

use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:4021".into());
    let stream = args.next().unwrap_or_else(|| "demo-fast".into());
    let signer = LocalSigner::from_env("X402_PRIVATE_KEY")?;
    let client = Client::builder()
        .base_url(base)
        .payer(Arc::new(EvmExactPayer::new(signer)))
        .policy(
            SpendPolicy::new(Amount::from_display("0.05", 6)?)
                .with_lifetime_budget(Amount::from_display("0.20", 6)?),
        )
        .max_slices(2)
        .build()?;
    let info = client.schema(&stream).await?;
    eprintln!(
        "{}: {} USDC per slice",
        info.schema.stream.title, info.price_per_slice
    );
    let mut session = client.open(&stream).await?;
    while let Some(ev) = session.next().await {
        match ev {
            ClientEvent::Data(e) => println!("{} {}", e.seq, e.data),
            ClientEvent::Ended(r) => {
                eprintln!("ended: {r:?}; paid {} USDC", session.paid().to_display(6))
            }
            other => eprintln!("{other:?}"),
        }
    }
    Ok(())
}
