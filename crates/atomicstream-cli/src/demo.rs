//! `atomicstream demo`: the embedded default. A real server on loopback, a
//! development wallet, real signatures, real sockets; two faults are injected
//! through the swappable transports so the demo shows the recovery paths: when
//! the first renewal is sent the socket drops and the renewal's answer is lost;
//! the client resumes without paying and retries with the same payload.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atomicstream::transport::faults::Blip;
use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmChannelPayer, EvmExactPayer, LocalSigner, Payer,
    SpendPolicy,
};
use futures::StreamExt;

use crate::{Fail, exit};

/// The local chain of `demo --chain`: anvil, the test USDC, who pays and who is paid.
struct LocalChain {
    anvil: x402_chain::anvil::Anvil,
    token: x402_chain::EvmAddress,
    payer: x402_chain::EvmAddress,
    payee: x402_chain::EvmAddress,
    /// Balances (atomic) before the demo.
    payer_start: u64,
    payee_start: u64,
}

fn chain_err(e: impl std::fmt::Display) -> Fail {
    Fail(exit::FAILURE, e.to_string())
}

impl LocalChain {
    /// Both balances in atomic units.
    async fn raw(&self) -> Result<(u64, u64), Fail> {
        let b = |v: x402_chain::EvmU256| u64::try_from(v).unwrap_or(u64::MAX);
        Ok((
            b(self
                .anvil
                .usdc_balance(self.token, self.payer)
                .await
                .map_err(chain_err)?),
            b(self
                .anvil
                .usdc_balance(self.token, self.payee)
                .await
                .map_err(chain_err)?),
        ))
    }

    async fn balances(&self) -> Result<(String, String), Fail> {
        let b = |v: x402_chain::EvmU256| {
            Amount::from(u64::try_from(v).unwrap_or(u64::MAX)).to_display(6)
        };
        Ok((
            b(self
                .anvil
                .usdc_balance(self.token, self.payer)
                .await
                .map_err(chain_err)?),
            b(self
                .anvil
                .usdc_balance(self.token, self.payee)
                .await
                .map_err(chain_err)?),
        ))
    }
}

pub async fn run(slices: u64, all: bool, on_chain: bool, channel: bool) -> Result<u8, Fail> {
    crate::init_logs("warn", false);
    if channel && !on_chain {
        return Err(crate::usage(
            "--scheme batch-settlement needs --chain: the embedded facilitator moves no money, and a channel is money on chain",
        ));
    }
    let started = Instant::now();
    let mut cfg = x402_server::Config::demo(([127, 0, 0, 1], 0).into());
    cfg.streams.retain(|s| s.id == "demo-fast");
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    cfg.secret = Some(hex_string(&secret));
    let wallet = LocalSigner::random()?;
    let mut builder = x402_server::ServerBuilder::new(cfg.clone());
    let chain = if on_chain {
        use x402_chain::anvil::{Anvil, DEV_KEYS};
        let anvil = Anvil::start(84532).map_err(chain_err)?;
        let token = anvil.install_test_usdc().await.map_err(chain_err)?;
        if channel {
            anvil.install_batch_settlement().await.map_err(chain_err)?;
        }
        let payer: x402_chain::EvmAddress = wallet.to_string().parse().map_err(chain_err)?;
        // The payee is anvil's third account; the relayer (gas) its second.
        let payee: x402_chain::EvmAddress = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
            .parse()
            .map_err(chain_err)?;
        anvil
            .mint(token, payer, 1_000_000)
            .await
            .map_err(chain_err)?;
        let f = x402_chain::EvmFacilitator::connect(x402_chain::EvmConfig::new(
            anvil.url(),
            x402_types::Network::BASE_SEPOLIA,
            DEV_KEYS[1],
        ))
        .await
        .map_err(chain_err)?;
        eprintln!(
            "demo: local chain {} (anvil, chain id 84532), test USDC at {token}",
            anvil.url()
        );
        eprintln!("demo: {}", x402_server::Facilitator::describe(&f));
        let mut cfg = cfg;
        cfg.streams[0].pay_to = payee.to_string();
        if channel {
            cfg.streams[0].channel = Some(x402_server::ChannelOffer::default());
            cfg.channel_manager.interval_secs = 1;
        }
        builder = x402_server::ServerBuilder::new(cfg).facilitator(Arc::new(f));
        let mut c = LocalChain {
            anvil,
            token,
            payer,
            payee,
            payer_start: 0,
            payee_start: 0,
        };
        (c.payer_start, c.payee_start) = c.raw().await?;
        Some(c)
    } else {
        None
    };
    let server = builder.bind().await?;
    let base = server.http_base().to_string();
    let state = server.state().clone();
    server.spawn();
    match &chain {
        Some(c) => {
            let (p, q) = c.balances().await?;
            eprintln!("demo: server on {base}, settling on the local chain");
            eprintln!(
                "demo: before: payer {} has {p} USDC, payee {} has {q} USDC",
                c.payer, c.payee
            );
        }
        None => eprintln!(
            "demo: server on {base} (embedded facilitator: real EIP-712 checks, nothing settled on chain)"
        ),
    }
    eprintln!("demo: development wallet {wallet}");
    // With a channel, the payer's own book says what was charged.
    let mut channel_payer = None;
    let (payer, scheme): (Arc<dyn Payer>, &str) = if channel {
        let p = Arc::new(EvmChannelPayer::new(
            wallet,
            Amount::from_display("0.10", 6)?,
        ));
        channel_payer = Some(p.clone());
        (p, "batch-settlement")
    } else {
        (Arc::new(EvmExactPayer::new(wallet)), "exact")
    };
    let charged_total = || {
        channel_payer
            .as_ref()
            .and_then(|p| p.channels().first().map(|c| Amount::from_u128(c.charged)))
            .unwrap_or_default()
    };
    let policy = SpendPolicy::new(Amount::from_display("0.01", 6)?)
        .with_lifetime_budget(Amount::from_display("0.10", 6)?);
    let blip = Blip::new();
    let client = Client::builder()
        .base_url(&base)
        .scheme(scheme)
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
        "demo: stream demo-fast costs {} USDC per {}-second slice; buying {slices} slices with {scheme}",
        info.price_per_slice, info.estimated_slice_seconds
    );
    let mut session = client
        .open("demo-fast")
        .await
        .map_err(|e| Fail(crate::error_code(&e), e.to_string()))?;
    let mut events = 0u64;
    let mut told_channel = !channel;
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
                    // `demo | head`: a reader that left is no reason to panic.
                    let _ = writeln!(
                        std::io::stdout(),
                        "{{\"seq\":{},\"data\":{}}}",
                        e.seq,
                        e.data.get()
                    );
                }
            }
            ClientEvent::Ended(r) => break r,
            ClientEvent::Hello(_) if !told_channel => {
                eprintln!("demo: {}", crate::ui::describe(&ev));
                if let Some(c) = channel_payer.as_ref().and_then(|p| p.channels().pop()) {
                    told_channel = true;
                    eprintln!(
                        "demo: deposited {} USDC once into channel {} (gasless: the facilitator relayed the payer's ERC-3009 authorization); slice 1 charged {} USDC",
                        Amount::from_u128(c.balance).to_display(6),
                        c.channel_id,
                        Amount::from_u128(c.charged).to_display(6)
                    );
                }
            }
            ClientEvent::PaymentAccepted {
                slice,
                settlement: Some(s),
            } if channel => {
                let c = crate::channels::charged(&s);
                match s.transaction.as_str() {
                    "" => eprintln!(
                        "demo: slice {slice} paid by an off-chain voucher: charged {} USDC, {} USDC in all",
                        c.to_display(6),
                        charged_total().to_display(6)
                    ),
                    tx => eprintln!(
                        "demo: slice {slice}: deposited {} USDC into a channel in transaction {tx}, charged {} USDC",
                        s.amount.unwrap_or_default().to_display(6),
                        c.to_display(6)
                    ),
                }
            }
            ClientEvent::PaymentAccepted {
                slice,
                settlement: Some(s),
            } if !s.transaction.is_empty() => {
                eprintln!(
                    "demo: slice {slice} settled on chain in transaction {}",
                    s.transaction
                );
            }
            other => eprintln!("demo: {}", crate::ui::describe(&other)),
        }
    };
    let p = session.progress();
    eprintln!();
    eprintln!("demo summary");
    eprintln!("  slices bought     {}", p.slices);
    if channel {
        eprintln!(
            "  vouchers signed   {} USDC ({} atomic units; billed per second, what went unused came back: see charged)",
            p.paid.to_display(6),
            p.paid
        );
    } else {
        eprintln!(
            "  amount paid       {} USDC ({} atomic units)",
            p.paid.to_display(6),
            p.paid
        );
    }
    eprintln!("  events received   {events}");
    if channel {
        eprintln!(
            "  renewals          {} ({} vouchers sent in-band on the socket; retried with the same payload: {})",
            p.renewals, p.in_band_payments, p.renew_retries
        );
    } else {
        eprintln!(
            "  renewals          {} (retried with the same payload: {})",
            p.renewals, p.renew_retries
        );
    }
    if channel {
        // A dropped socket ends a metered session's paid time: the resume buys a slice.
        eprintln!(
            "  reconnects        {} (resumed on the same channel, no new deposit)",
            p.reconnects
        );
    } else {
        eprintln!(
            "  reconnects        {} (resumed without paying)",
            p.reconnects
        );
    }
    eprintln!("  server credited   {} payments", state.credited_payments());
    eprintln!(
        "  ended             {} after {:.1}s",
        crate::explain_end(&reason, &p.paid, &Amount::from_display("0.10", 6)?),
        started.elapsed().as_secs_f64()
    );
    let mut exact_loss = true;
    if let Some(c) = &chain {
        let (p0, q0) = (c.payer_start, c.payee_start);
        // What the seller claimed in all: the metered charge.
        let mut claimed = None;
        if channel {
            // Close the channel: the seller claims what it charged and returns the rest.
            let r = client.refund_channel("demo-fast").await?;
            claimed = r.claimed.map(Amount::from_u128);
            eprintln!(
                "  refund            {} USDC of the deposit came back in transaction {}",
                r.amount.unwrap_or_default().to_display(6),
                r.transaction
            );
        }
        // Settlements of the last slices may still be landing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (p2, q2) = c.balances().await?;
        if !channel {
            let txs = c
                .anvil
                .settlements_of(c.token, c.payer)
                .await
                .map_err(chain_err)?;
            eprintln!("  transactions      {} settlements on chain:", txs.len());
            for t in &txs {
                eprintln!("                    {t}");
            }
        }
        eprintln!(
            "  on chain          payer {} now has {p2} USDC, payee {} has {q2} USDC",
            c.payer, c.payee
        );
        if channel {
            let (p1, q1) = c.raw().await?;
            let lost = p0.saturating_sub(p1);
            let gained = q1.saturating_sub(q0);
            // Billed per second: what the seller claimed, not the vouchers' total.
            let charged = claimed.unwrap_or_else(charged_total);
            // Billed per second: the paid time left when a socket dropped went back.
            let per_slice = info
                .offer
                .requirement()
                .amount
                .atomic()
                .to_u128()
                .unwrap_or(1)
                .max(1);
            let seconds = charged.atomic().to_u128().unwrap_or(0)
                * u128::from(info.estimated_slice_seconds)
                / per_slice;
            eprintln!(
                "  charged           {} USDC for {seconds} s of stream; the payer lost {} USDC, the payee gained {} USDC",
                charged.to_display(6),
                Amount::from(lost).to_display(6),
                Amount::from(gained).to_display(6)
            );
            exact_loss = Amount::from(lost) == charged && lost == gained;
        }
    }
    // The lost renewal answer is recovered either by retrying with the same
    // payload or, when the settlement is still landing (on a chain), by the
    // server's `renewed` on the resumed socket: both are correct, and which one
    // comes first is timing. What must hold: every slice bought once, a resume.
    let ok = matches!(reason, EndReason::SliceLimit | EndReason::Stopped)
        && p.slices == slices
        && p.reconnects >= 1
        && exact_loss;
    Ok(if ok { exit::OK } else { exit::FAILURE })
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
