//! The command line: every subcommand, its flags and the long help (clap).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use atomicstream::PathVersion;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub const AFTER_HELP: &str = "\
Exit codes:
  0  done (stopped, slice limit, duration or your --budget reached, stream ended,
     stdout closed)
  2  usage error (bad flags, missing key, unreadable input)
  3  the spending policy refused the first payment (price above --max-per-slice,
     --budget below one slice)
  4  the server refused a payment
  5  protocol or transport failure

Start here:
  atomicstream demo                          # everything local: server, wallet, paid stream
  atomicstream serve                         # the reference server on 127.0.0.1:4021
  atomicstream keygen --out dev.key          # a development key
  atomicstream stream btc-usd --key-file dev.key --base-url http://127.0.0.1:4021

Shell completions and the manual page:
  atomicstream completions bash > ~/.local/share/bash-completion/completions/atomicstream
  atomicstream man | man -l -

Colour: --color auto (the default) colours only a terminal and honours NO_COLOR.";

/// Buy live JSON streams by the slice with x402 (HTTP 402) payments, or sell them.
#[derive(Debug, Parser)]
#[command(
    name = "atomicstream",
    version,
    propagate_version = true,
    about,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Log lines on stderr as `plain` text or `json` objects (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// When to colour output: `auto` colours a terminal unless NO_COLOR is set (non-empty).
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// When output is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless the NO_COLOR environment variable is set and not empty.
    Auto,
    /// Always, even into a pipe or a file (overrides NO_COLOR).
    Always,
    /// Never.
    Never,
}

impl ColorWhen {
    /// Whether to colour a stream that is (or is not) a terminal, given NO_COLOR's value
    /// (<https://no-color.org>: any non-empty value disables colour).
    pub fn enabled(self, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List the streams a server sells, with their prices (no payment).
    Streams {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show a stream's pricing and payment terms (no payment).
    Schema {
        /// Stream id (see `GET /streams`).
        stream: String,
        #[command(flatten)]
        conn: ConnArgs,
        /// Print the schema JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Pay for a stream and print its events as JSON Lines on stdout, renewing automatically.
    Stream {
        /// Stream id (with --resume, the file's).
        #[arg(required_unless_present = "resume")]
        stream: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        limits: PolicyArgs,
        #[command(flatten)]
        pay: crate::channels::PayArgs,
        /// Stop after this many slices.
        #[arg(long)]
        slices: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        #[command(flatten)]
        session: SessionArgs,
        #[command(flatten)]
        show: ShowArgs,
    },
    /// Read a 402 answer (schema JSON, v1 body, or v2 PAYMENT-REQUIRED value) and print the payment header.
    Pay {
        /// File to read, or `-` for stdin.
        input: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        limits: PolicyArgs,
    },
    /// Run the reference stream server (demo catalog without --config).
    Serve {
        /// TOML configuration (see docs/server.md).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Only check the configuration: report every problem with its field, then exit
        /// (0 when valid, 2 otherwise).
        #[arg(long)]
        check: bool,
    },
    /// Payment channels (x402 batch-settlement) kept by `stream --scheme batch-settlement`.
    Channel {
        #[command(subcommand)]
        cmd: crate::channels::ChannelCmd,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Run only the x402 facilitator API (/verify, /settle, /supported), for other x402
    /// servers, v1 and v2. With --evm it settles on chain from a relayer key; without, the
    /// embedded verifier settles nothing. A bearer key is required off loopback, and with
    /// --evm unless --insecure-no-key. Requests from web pages (an Origin header), POST
    /// bodies that are not application/json, and a Host other than the listen address
    /// (DNS rebinding) are refused unless allowed.
    Facilitator {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:4022")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        evm: EvmArgs,
        /// Bearer key callers must send (`Authorization: Bearer <key>`), at least 32 bytes.
        /// Required off loopback, and with --evm.
        #[arg(long, env = "X402_FACILITATOR_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// With --evm on loopback, serve without a key: anyone who can reach the port
        /// can make the relayer spend its gas.
        #[arg(long)]
        insecure_no_key: bool,
        /// Also answer to this Host (a name behind a proxy; `name` or `name:port`). Repeatable.
        #[arg(long = "allow-host", value_name = "HOST")]
        allow_hosts: Vec<String>,
        /// Accept requests from web pages of this origin (`https://app.example`). Repeatable.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        /// Requests per second allowed (all callers together).
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
    /// Create a development key file (mode 0600) and print its address.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = "atomicstream.key")]
        out: PathBuf,
    },
    /// Everything local: server, development wallet, a paid stream that renews, retries and resumes.
    /// With --chain, on a local anvil chain with real USDC settlement (needs `cargo xtask tools`).
    Demo {
        /// Settle on a local anvil chain and show the transactions and balances.
        #[arg(long)]
        chain: bool,
        /// Slices to buy.
        #[arg(long, default_value_t = 4)]
        slices: u64,
        /// Print every event (default: every 10th).
        #[arg(long)]
        all: bool,
        /// `exact` (one transfer per slice) or, with --chain, `batch-settlement` (one
        /// deposit, a voucher per slice, the rest refunded at the end).
        #[arg(long, value_enum, default_value_t = crate::channels::Scheme::Exact)]
        scheme: crate::channels::Scheme,
    },
    /// Print a shell completion script: `atomicstream completions bash`, `zsh`, `fish`,
    /// `powershell` or `elvish` (see the crate README for where to put it).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `atomicstream man | man -l -`.
    Man,
}

/// Parses the command line. `--color` is read before clap's own parsing so that the help
/// and usage errors follow it too (clap itself honours NO_COLOR).
pub fn parse() -> Result<Cli, clap::Error> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    if let Some(c) = color_flag(&argv) {
        cmd = cmd.color(match c {
            ColorWhen::Auto => clap::ColorChoice::Auto,
            ColorWhen::Always => clap::ColorChoice::Always,
            ColorWhen::Never => clap::ColorChoice::Never,
        });
    }
    let m = cmd.try_get_matches_from(argv)?;
    Cli::from_arg_matches(&m)
}

/// The last `--color WHEN` / `--color=WHEN` before a `--`, if it is valid.
fn color_flag(argv: &[OsString]) -> Option<ColorWhen> {
    use clap::ValueEnum;
    let mut found = None;
    let mut it = argv.iter().skip(1).map(|a| a.to_str());
    while let Some(a) = it.next() {
        let value = match a {
            Some("--") => break,
            Some("--color") => it.next().flatten(),
            Some(a) => a.strip_prefix("--color="),
            None => None,
        };
        if let Some(c) = value.and_then(|v| ColorWhen::from_str(v, false).ok()) {
            found = Some(c);
        }
    }
    found
}

/// `atomicstream completions SHELL`: the script for `shell`. Built in memory (the
/// generator panics on a failed write), so a closed stdout is an error, not a panic.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "atomicstream", &mut out);
    out
}

/// `atomicstream man`: one manual page (roff) with every command and its options,
/// then the exit codes and first commands of `--help`.
pub fn man() -> std::io::Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    top.render_title(&mut out)?;
    top.render_name_section(&mut out)?;
    top.render_synopsis_section(&mut out)?;
    top.render_description_section(&mut out)?;
    top.render_options_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        man_command(sub, &mut out)?;
    }
    out.extend_from_slice(b".SH \"EXIT STATUS AND EXAMPLES\"\n.nf\n");
    for line in AFTER_HELP.lines() {
        out.extend_from_slice(roff_text(line).as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b".fi\n");
    top.render_version_section(&mut out)?;
    Ok(out)
}

/// One command's subsection: its synopsis, description and options (the section
/// headings clap_mangen writes for a page of its own become paragraph breaks).
fn man_command(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let name = cmd.get_bin_name().unwrap_or_else(|| cmd.get_name());
    out.extend_from_slice(format!(".SS \"{}\"\n", roff_text(name)).as_bytes());
    // The global options, --help and --version are described once, at the top.
    let own = cmd.clone().mut_args(|a| {
        let common = a.is_global_set() || ["help", "version"].contains(&a.get_id().as_str());
        a.hide(common)
    });
    let page = clap_mangen::Man::new(own.clone());
    let mut parts = Vec::new();
    page.render_synopsis_section(&mut parts)?;
    page.render_description_section(&mut parts)?;
    if own.get_arguments().any(|a| !a.is_hide_set()) {
        page.render_options_section(&mut parts)?;
    }
    for line in String::from_utf8_lossy(&parts).lines() {
        if line.starts_with(".SH ") {
            out.extend_from_slice(b".PP\n");
        } else if !(line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    for sub in cmd.get_subcommands() {
        man_command(sub, out)?;
    }
    Ok(())
}

/// Text as a roff line: backslashes and hyphens escaped, no control character first.
fn roff_text(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Writes a generated text to stdout; a reader that left is not an error worth a message.
pub fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `atomicstream config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print a commented server.toml to start from.
    Example,
}

/// Keeping a `stream` session to use its paid time later.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Keep the session resumable in FILE (mode 0600): its token, server, stream,
    /// protocol, paid-until and next event, rewritten whenever they change and at the
    /// end (Ctrl-C, --duration, --budget). The token holds the paid time: keep the file
    /// private.
    #[arg(long, value_name = "FILE")]
    pub session_file: Option<PathBuf>,
    /// Take up the session saved in FILE by --session-file (stream, --base-url and
    /// --protocol come from the file): reconnects with its token from the next event,
    /// paying nothing while its paid time lasts, then renews within --budget and
    /// --max-per-slice. If its paid time is over, the next slice is bought on it within
    /// those flags; --slices N counts slices bought in this run (--slices 0: only the
    /// paid time left). FILE keeps being updated.
    #[arg(long, value_name = "FILE", conflicts_with = "session_file")]
    pub resume: Option<PathBuf>,
}

/// What `stream` shows on stderr (events always go to stdout, one JSON object per line).
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Show nothing on stderr but the end.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write status changes and session events as JSON lines on stderr (for programs and agents).
    #[arg(long)]
    pub status_json: bool,
    /// Show amounts in atomic units too.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Settling on an EVM chain.
#[derive(Debug, Args)]
pub struct EvmArgs {
    /// Settle on chain (transferWithAuthorization from the relayer key).
    #[arg(long, requires = "rpc_url")]
    pub evm: bool,
    /// JSON-RPC URL of a node of --network.
    #[arg(long)]
    pub rpc_url: Option<String>,
    /// Network settled on.
    #[arg(long, default_value = "base-sepolia")]
    pub network: String,
    /// File holding the relayer's hex private key (it pays the gas).
    #[arg(long)]
    pub relayer_key_file: Option<PathBuf>,
    /// Environment variable holding the relayer key (when no file is given).
    #[arg(long, default_value = "X402_RELAYER_KEY")]
    pub relayer_key_env: String,
    /// Blocks a settlement must be buried under before it is reported (1 = mined).
    #[arg(long, default_value_t = 1)]
    pub confirmations: u64,
}

#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Server base URL (the protocol's default; a local `atomicstream serve`
    /// is http://127.0.0.1:4021, or set ATOMICSTREAM_BASE_URL once).
    #[arg(
        long,
        default_value = "https://x402.atomicstream.net",
        env = "ATOMICSTREAM_BASE_URL"
    )]
    pub base_url: String,
    /// Protocol: v1 (legacy x402 v1) or v2. (`--version` prints the tool's version.)
    #[arg(long = "protocol", default_value = "v2", value_parser = parse_version)]
    pub protocol: PathVersion,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// File holding the hex private key (else the X402_PRIVATE_KEY environment variable).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Most to pay for one slice, in USDC.
    #[arg(long, default_value = "0.05")]
    pub max_per_slice: String,
    /// Most to pay in total, in USDC.
    #[arg(long, default_value = "1.00")]
    pub budget: String,
}

pub fn parse_version(s: &str) -> Result<PathVersion, String> {
    s.parse()
        .map_err(|_| format!("expected v1 or v2, got {s:?}"))
}
