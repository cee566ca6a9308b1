//! Buy up to two slices of a stream from a running server and print the events.
//!
//! ```sh
//! cargo run --release -- serve &                       # the local server
//! X402_PRIVATE_KEY=0x... cargo run -p atomicstream --example stream -- http://127.0.0.1:4021 demo-fast
//! ```
//!
//! Arguments: `[BASE_URL] [STREAM] [--events N]`. The base URL defaults to
//! `ATOMICSTREAM_BASE_URL`, then `http://127.0.0.1:4021`; the stream to `demo-fast`;
//! `--events N` stops cleanly after N events.

use std::sync::Arc;

use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let mut max_events: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--events" {
            let n = args.next().ok_or("--events needs a number")?;
            max_events = Some(
                n.parse()
                    .map_err(|_| format!("--events {n}: not a number"))?,
            );
        } else {
            positional.push(a);
        }
    }
    let mut positional = positional.into_iter();
    let base = positional
        .next()
        .or_else(|| std::env::var("ATOMICSTREAM_BASE_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:4021".into());
    let stream = positional.next().unwrap_or_else(|| "demo-fast".into());

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
                eprintln!("ended: {r}; paid {} USDC", session.paid().to_display(6))
            }
            other => eprintln!("{other}"),
        }
    }
    Ok(())
}
