//! Payment channels on the command line: `stream --scheme batch-settlement` (one
//! deposit, then a voucher per slice, the unused deposit refunded at the end), and
//! `atomicstream channel list | refund | withdraw`.

use std::path::PathBuf;
use std::sync::Arc;

use atomicstream::{Amount, Client, EvmChannelPayer, EvmExactPayer, LocalSigner, Payer};
use clap::{Args, Subcommand, ValueEnum};
use x402_payer::{ClientChannel, DigestSigner};
use x402_types::Network;

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
    /// Take the unclaimed rest of a channel's deposit back without the seller (the timed
    /// withdrawal), when `channel refund` gets no answer.
    ///
    /// The escape hatch works without the seller, in two steps. Each is a transaction sent
    /// from your key straight to the channel contract, so the key pays the gas: it needs a
    /// little ETH on the channel's network (not USDC).
    ///
    /// First run: it starts the withdrawal of everything the seller has not claimed yet,
    /// and says when the channel's withdrawal delay (its withdrawDelay: 15 minutes to 30
    /// days, fixed when the channel was opened) is over.
    ///
    /// After that time, the same command again pays the money out to your address and
    /// updates the channel file. Run before then, it only says how long is left and sends
    /// nothing.
    ///
    /// The delay protects the seller: until it runs out the seller can still claim what it
    /// charged you (up to the vouchers you signed), and you get back exactly the rest of
    /// the deposit. A cooperative `channel refund` is quicker and costs you no gas: use this
    /// when the seller is gone.
    ///
    /// Prints one JSON object on stdout (`action`: `initiated`, `pending`, `finalized` or
    /// `nothing`) and a sentence on stderr. Exit 0 when done or waiting; 2 for an unknown
    /// channel, a key that is not the channel's payer or a node of another network; 4 when
    /// the chain refuses (such as no ETH for gas); 5 when the RPC endpoint fails.
    Withdraw {
        /// The channel's id (see `atomicstream channel list`), or a unique prefix of it.
        channel_id: String,
        /// JSON-RPC URL of a node of the channel's network (for base-sepolia, e.g.
        /// https://sepolia.base.org).
        #[arg(long, value_name = "URL")]
        rpc_url: String,
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
            "the channel was closed: {} USDC of the deposit came back{}",
            r.amount.unwrap_or_default().to_display(6),
            if r.transaction.is_empty() {
                String::new()
            } else {
                format!(" (transaction {})", r.transaction)
            }
        ),
        // Nothing was ever signed on a channel with this seller: nothing to close.
        Err(atomicstream::Error::Config(atomicstream::ConfigError::NoChannel { .. })) => {
            return None;
        }
        Err(e) => format!(
            "the channel could not be refunded now ({e}); run `atomicstream channel refund {stream}` later, \
             or take the rest back yourself with `atomicstream channel withdraw` (see `atomicstream channel list`)"
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
        ChannelCmd::Withdraw {
            channel_id,
            rpc_url,
            key,
            channel,
        } => withdraw(&channel_id, &rpc_url, &key, &channel).await,
    }
}

/// USDC in atomic units, for display (the channels' tokens have 6 decimals).
fn usdc(v: u128) -> String {
    Amount::from_u128(v).to_display(6)
}

/// The channel whose id is `wanted` or starts with it (case and `0x` optional).
fn find_channel(
    list: &[ClientChannel],
    wanted: &str,
    path: &std::path::Path,
) -> Result<ClientChannel, Fail> {
    let norm = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        s.strip_prefix("0x").map(str::to_string).unwrap_or(s)
    };
    let want = norm(wanted);
    let ids = || {
        list.iter()
            .map(|c| c.channel_id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if list.is_empty() {
        return Err(usage(format!(
            "no channels in {}: there is nothing to withdraw from (--channel-file names another file)",
            path.display()
        )));
    }
    let hits: Vec<&ClientChannel> = list
        .iter()
        .filter(|c| !want.is_empty() && norm(&c.channel_id.to_string()).starts_with(&want))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(usage(format!(
            "no channel `{wanted}` in {}; it holds: {} (`atomicstream channel list`)",
            path.display(),
            ids()
        ))),
        many => Err(usage(format!(
            "`{wanted}` matches {} channels in {}: {}; give more of the id",
            many.len(),
            path.display(),
            many.iter()
                .map(|c| c.channel_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// An RPC URL as it may be shown: a path, query or credentials (often an API key) hidden.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let hidden = u.path().len() > 1
                || u.query().is_some()
                || !u.username().is_empty()
                || u.password().is_some();
            format!(
                "{}://{host}{port}{}",
                u.scheme(),
                if hidden { "/…" } else { "" }
            )
        }
        Err(_) => "the --rpc-url given".into(),
    }
}

/// The time `wait` seconds from now on this machine's clock, with the wait:
/// `2026-05-14 15:47:03 +02:00 (in 15 min)`. (The chain's clock decides; `wait` is
/// measured on it.)
fn local_after(wait: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let at = now.saturating_add(wait);
    let clock = i64::try_from(at)
        .ok()
        .and_then(|t| chrono::TimeZone::timestamp_opt(&chrono::Local, t, 0).single())
        .map_or_else(
            || format!("unix time {at}"),
            |t| t.format("%Y-%m-%d %H:%M:%S %:z").to_string(),
        );
    format!("{clock} (in {})", x402_chain::withdraw::span(wait))
}

/// A chain error as the command's failure: what went wrong, what to do, the exit code.
fn chain_fail(e: x402_chain::ChainError, rpc_url: &str, network: &Network) -> Fail {
    use x402_chain::ChainError as E;
    let url = shown_url(rpc_url);
    match e {
        E::Unreachable(why) => Fail(
            exit::FAILURE,
            format!(
                "the RPC endpoint {url} did not answer ({why}); check --rpc-url and the network"
            ),
        ),
        E::Rpc(why) => Fail(
            exit::FAILURE,
            format!("the RPC endpoint {url} failed: {why}"),
        ),
        E::WrongChain { expected, found } => usage(format!(
            "--rpc-url {url} serves chain {found}, but the channel is on {} (chain {expected}): \
             give a node of that network",
            network.caip2()
        )),
        E::Config(why) => usage(why),
        e @ E::NotPayer { .. } => usage(format!("{e}: pass the payer's --key-file")),
        e @ E::NoContract { .. } => Fail(
            exit::FAILURE,
            format!("{e}: is --rpc-url a node of the channel's network?"),
        ),
        e @ E::ReceiptTimeout { .. } => Fail(exit::FAILURE, e.to_string()),
        e => Fail(exit::REFUSED, e.to_string()),
    }
}

/// `atomicstream channel withdraw`: see [`ChannelCmd::Withdraw`].
async fn withdraw(
    wanted: &str,
    rpc_url: &str,
    key: &KeyArgs,
    file: &ChannelFileArgs,
) -> Result<u8, Fail> {
    let path = file.path()?;
    let signer = load_key(key)?;
    let key_hex = signer.to_hex_secret();
    let me = signer.address();
    let payer = EvmChannelPayer::new(signer, Amount::ZERO)
        .with_file(&path)
        .map_err(|e| usage(e.to_string()))?;
    let ch = find_channel(&payer.channels(), wanted, &path)?;
    let id = ch.channel_id;
    if me != ch.config.payer && me != ch.config.payer_authorizer {
        return Err(usage(format!(
            "the key's address {me} is not the payer of channel {id} ({}): pass the payer's \
             --key-file (or X402_PRIVATE_KEY)",
            ch.config.payer
        )));
    }
    let network: Network = ch
        .network
        .parse()
        .map_err(|e| usage(format!("channel {id} in {}: {e}", path.display())))?;
    let fail = |e| chain_fail(e, rpc_url, &network);
    let status = x402_chain::channel_status(rpc_url, &network, &ch.config)
        .await
        .map_err(fail)?;
    if status.channel_id != id {
        return Err(Fail(
            exit::FAILURE,
            format!(
                "the channel file says {id}, but its configuration is channel {} on chain {}: \
                 the file is damaged",
                status.channel_id, status.chain_id
            ),
        ));
    }
    // The command to run again, with the flags given this time.
    let again = {
        let mut c = format!(
            "atomicstream channel withdraw {} --rpc-url {}",
            &id.to_string()[..10],
            if shown_url(rpc_url).ends_with('…') {
                "URL"
            } else {
                rpc_url.trim()
            }
        );
        if let Some(k) = &key.key_file {
            c.push_str(&format!(" --key-file {}", k.display()));
        }
        if let Some(f) = &file.channel_file {
            c.push_str(&format!(" --channel-file {}", f.display()));
        }
        c
    };
    match status.pending {
        None if status.unclaimed() == 0 => {
            payer
                .set_balance(&id, status.balance)
                .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
            println!(
                "{}",
                serde_json::json!({
                    "channelId": id,
                    "action": "nothing",
                    "balance": usdc(status.balance),
                    "claimed": usdc(status.total_claimed),
                })
            );
            eprintln!(
                "nothing to withdraw: channel {id} holds {} USDC on chain, all of it claimed by the seller",
                usdc(status.balance)
            );
            Ok(exit::OK)
        }
        None => {
            let amount = status.unclaimed();
            let tx = x402_chain::initiate_withdraw(rpc_url, &network, &key_hex, &ch.config, amount)
                .await
                .map_err(fail)?;
            // When it may be finalized: as the chain recorded it, else from the delay.
            let delay = ch.config.withdraw_delay;
            let (after, wait) =
                match x402_chain::channel_status(rpc_url, &network, &ch.config).await {
                    Ok(s) => match (s.pending, s.wait_secs()) {
                        (Some(p), Some(w)) => (p.finalize_after, w),
                        _ => (status.now.saturating_add(delay), delay),
                    },
                    Err(_) => (status.now.saturating_add(delay), delay),
                };
            let local = local_after(wait);
            println!(
                "{}",
                serde_json::json!({
                    "channelId": id,
                    "action": "initiated",
                    "amount": usdc(amount),
                    "transaction": tx,
                    "finalizeAfter": after,
                    "waitSeconds": wait,
                })
            );
            eprintln!(
                "started withdrawing {} USDC (all the seller has not claimed) from channel {id} in \
                 transaction {tx}; after {local} run `{again}` to receive it (until then the seller \
                 can still claim what it charged, {} USDC by your channel file, and you get the rest)",
                usdc(amount),
                usdc(ch.charged)
            );
            Ok(exit::OK)
        }
        Some(p) if !status.due() => {
            let wait = status.wait_secs().unwrap_or_default();
            let local = local_after(wait);
            println!(
                "{}",
                serde_json::json!({
                    "channelId": id,
                    "action": "pending",
                    "amount": usdc(p.amount),
                    "unclaimed": usdc(status.unclaimed()),
                    "finalizeAfter": p.finalize_after,
                    "waitSeconds": wait,
                })
            );
            eprintln!(
                "a withdrawal is under way on channel {id}: you get what the seller has not claimed \
                 by then ({} USDC now; it claimed {} of {} USDC); it can be finalized after {local}: \
                 run `{again}` then (nothing was sent now)",
                usdc(status.unclaimed().min(p.amount)),
                usdc(status.total_claimed),
                usdc(status.balance)
            );
            Ok(exit::OK)
        }
        Some(_) => {
            let (tx, paid) = x402_chain::finalize_withdraw(rpc_url, &network, &key_hex, &ch.config)
                .await
                .map_err(fail)?;
            let (balance, claimed) =
                match x402_chain::channel_status(rpc_url, &network, &ch.config).await {
                    Ok(s) => (s.balance, s.total_claimed),
                    Err(_) => (status.balance.saturating_sub(paid), status.total_claimed),
                };
            let saved = payer.set_balance(&id, balance);
            println!(
                "{}",
                serde_json::json!({
                    "channelId": id,
                    "action": "finalized",
                    "withdrawn": usdc(paid),
                    "transaction": tx,
                    "balance": usdc(balance),
                    "claimed": usdc(claimed),
                })
            );
            eprintln!(
                "withdrew {} USDC from channel {id} to {} in transaction {tx}; the seller claimed {} USDC{}",
                usdc(paid),
                ch.config.payer,
                usdc(claimed),
                match saved {
                    Ok(_) => format!("; {} is updated", path.display()),
                    Err(e) => format!("; the channel file could not be updated ({e})"),
                }
            );
            Ok(exit::OK)
        }
    }
}
