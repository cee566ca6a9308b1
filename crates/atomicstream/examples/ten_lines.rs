//! The README's "library in ten lines", as a program: buys the local server's `demo-fast`
//! stream (4-second slices at 0.004 USDC) until its 0.01 USDC budget is spent (two slices,
//! about 8 seconds), printing every event as `seq data`.
//!
//! ```sh
//! cargo run --release -- serve &                       # the local server, demo catalog
//! X402_PRIVATE_KEY=0x... cargo run -p atomicstream --example ten_lines
//! ```
//!
//! `ATOMICSTREAM_BASE_URL` points it at another server. The lines between the `README`
//! markers are the README's block word for word, less their indentation (`cargo xtask ci`
//! checks it, then runs this program against a local server).

#[rustfmt::skip]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // README begin
    use std::sync::Arc;
    use atomicstream::{Amount, Client, ClientEvent, EvmExactPayer, LocalSigner, SpendPolicy};
    use futures::StreamExt;

    let base = std::env::var("ATOMICSTREAM_BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:4021".into());
    let payer = Arc::new(EvmExactPayer::new(LocalSigner::from_env("X402_PRIVATE_KEY")?));
    let policy = SpendPolicy::new(Amount::from_display("0.01", 6)?).with_lifetime_budget(Amount::from_display("0.01", 6)?);
    let client = Client::builder().base_url(base).payer(payer).policy(policy).build()?;
    let mut session = client.open("demo-fast").await?;       // checks the policy, pays slice 1, waits for hello
    while let Some(event) = session.next().await {            // renews and resumes by itself; ends at the budget
        if let ClientEvent::Data(e) = event { println!("{} {}", e.seq, e.data); }
    }
    // README end
    Ok(())
}
