//! Payment channels on the command line: `stream --scheme batch-settlement` (one
//! deposit, then a voucher per slice, the unused deposit refunded at the end), and
//! `atomicstream channel list | refund`.

use std::path::PathBuf;
use std::sync::Arc;

use atomicstream::{Amount, Client, EvmChannelPayer, EvmExactPayer, LocalSigner, Payer};
use clap::{Args, Subcommand, ValueEnum};

use crate::args::{ConnArgs, KeyArgs};
use crate::{Fail, exit, load_key, usage};

/// The x402 scheme `stream` pays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// One on-chain transfer per slice (EIP-3009).
    Exact,
    /// A payment channel: one deposit, then an off-chain voucher per slice; no gas per
    /// slice, and the unused deposit comes back.
    BatchSettlement,
}

/// How `stream` pays.
#[derive(Debug, Args)]
pub struct PayArgs {
    /// `exact` (one on-chain transfer per slice) or `batch-settlement` (a payment
    /// channel: one deposit, then an off-chain voucher per slice; at the end the unused
    /// deposit is refunded unless --keep-channel).
    #[arg(long, value_enum, default_value_t = Scheme::Exact)]
    pub scheme: Scheme,
    #[command(flatten)]
    pub channel: ChannelFileArgs,
    /// Most to deposit into a channel, in USDC: money at risk, refundable (--budget
    /// bounds what the vouchers sign).
    #[arg(long, default_value = "0.50")]
    pub max_deposit: String,
    /// Keep the channel open at the end (a later run pays from the same deposit);
    /// `atomicstream channel refund` closes it.
    #[arg(long)]
    pub keep_channel: bool,
}

/// Where channels are kept.
#[derive(Debug, Args)]
pub struct ChannelFileArgs {
    /// The channel file (mode 0600; default $XDG_DATA_HOME/atomicstream/channels.json,
    /// else ~/.local/share/atomicstream/channels.json).
    #[arg(long, value_name = "FILE")]
    pub channel_file: Option<PathBuf>,
}

impl ChannelFileArgs {
    /// The file to use.
    pub fn path(&self) -> Result<PathBuf, Fail> {
        if let Some(p) = &self.channel_file {
            return Ok(p.clone());
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .ok_or_else(|| usage("no HOME or XDG_DATA_HOME: pass --channel-file FILE"))?;
        Ok(base.join("atomicstream").join("channels.json"))
    }
}

/// `atomicstream channel ...`.
#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    /// List the payment channels kept in the channel file (no network).
    List {
        #[command(flatten)]
        channel: ChannelFileArgs,
    },
    /// Close your channel with the seller of STREAM cooperatively: the seller claims
    /// what it charged and returns the rest of the deposit in one transaction.
    Refund {
        /// A stream of the seller (the channel is per seller, token and terms).
        stream: String,
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        channel: ChannelFileArgs,
    },
}

/// The payer `stream` uses, and the scheme's name.
pub fn payer(signer: LocalSigner, p: &PayArgs) -> Result<(Arc<dyn Payer>, &'static str), Fail> {
    match p.scheme {
        Scheme::Exact => Ok((Arc::new(EvmExactPayer::new(signer)), "exact")),
        Scheme::BatchSettlement => {
            let cap = Amount::from_display(&p.max_deposit, 6)
                .map_err(|e| usage(format!("--max-deposit: {e}")))?;
            let payer = EvmChannelPayer::new(signer, cap)
                .with_file(p.channel.path()?)
                .map_err(|e| usage(e.to_string()))?;
            Ok((Arc::new(payer), "batch-settlement"))
        }
    }
}

/// `stream`'s end with a channel: refund the unused deposit (unless kept). A sentence.
pub async fn close_at_end(client: &Client, stream: &str, p: &PayArgs) -> Option<String> {
    if p.scheme != Scheme::BatchSettlement {
        return None;
    }
    if p.keep_channel {
        return Some(
            "the channel stays open (--keep-channel): `atomicstream channel refund` closes it"
                .into(),
        );
    }
    Some(match client.refund_channel(stream).await {
        Ok(r) => format!(
            "the channel was closed: {} USDC of the deposit came back (transaction {})",
            r.amount.unwrap_or_default().to_display(6),
            r.transaction
        ),
        Err(e) => format!(
            "the channel could not be refunded now ({e}); run `atomicstream channel refund {stream}` later, \
             or withdraw after the channel's withdrawDelay"
        ),
    })
}

/// The charge a `batch-settlement` receipt names (`extra.chargedAmount`), 0 if none.
pub fn charged(receipt: &x402_types::SettleResponse) -> Amount {
    receipt
        .extra
        .as_ref()
        .and_then(|x| x.get("chargedAmount"))
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// `atomicstream channel ...`.
pub async fn run(cmd: ChannelCmd) -> Result<u8, Fail> {
    match cmd {
        ChannelCmd::List { channel } => {
            let path = channel.path()?;
            let payer = EvmChannelPayer::new(LocalSigner::random()?, Amount::ZERO)
                .with_file(&path)
                .map_err(|e| usage(e.to_string()))?;
            let list = payer.channels();
            if list.is_empty() {
                eprintln!("no channels in {}", path.display());
            }
            for c in list {
                println!(
                    "{}",
                    serde_json::json!({
                        "channelId": c.channel_id,
                        "network": c.network,
                        "payer": c.config.payer,
                        "receiver": c.config.receiver,
                        "token": c.config.token,
                        "balance": Amount::from_u128(c.balance).to_display(6),
                        "charged": Amount::from_u128(c.charged).to_display(6),
                        "refundable": Amount::from_u128(c.refundable()).to_display(6),
                        "withdrawDelay": c.config.withdraw_delay,
                    })
                );
            }
            Ok(exit::OK)
        }
        ChannelCmd::Refund {
            stream,
            conn,
            key,
            channel,
        } => {
            let signer = load_key(&key)?;
            let payer = EvmChannelPayer::new(signer, Amount::ZERO)
                .with_file(channel.path()?)
                .map_err(|e| usage(e.to_string()))?;
            let client = Client::builder()
                .base_url(&conn.base_url)
                .version(conn.protocol)
                .scheme("batch-settlement")
                .payer(Arc::new(payer))
                .policy(atomicstream::SpendPolicy::new(Amount::ZERO))
                .build()
                .map_err(|e| usage(e.to_string()))?;
            match client.refund_channel(&stream).await {
                Ok(r) => {
                    println!(
                        "{}",
                        serde_json::json!({
                            "refunded": r.amount.unwrap_or_default().to_display(6),
                            "transaction": r.transaction,
                        })
                    );
                    Ok(exit::OK)
                }
                Err(e @ atomicstream::Error::Config(_)) => Err(usage(e.to_string())),
                Err(e) => Err(Fail(exit::REFUSED, e.to_string())),
            }
        }
    }
}
