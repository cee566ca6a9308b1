//! Server configuration: TOML file plus flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use x402_types::{Address, Amount, Network, usdc};

use crate::error::ConfigError;

mod channel;
mod http;
mod limits;
pub use channel::{ChannelManagerConfig, ChannelOffer};
pub(crate) use http::canonical;
pub use http::{HttpConfig, MIN_METRICS_KEY_LEN};
pub use limits::Limits;

/// Where payments are verified and settled.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum FacilitatorConfig {
    /// In-process verifier and ledger: payments are verified but NOT settled on chain.
    /// Chosen only by name.
    Embedded {},
    /// A remote x402 facilitator (`/verify`, `/settle`, `/supported`).
    Http {
        /// Its base URL.
        url: String,
        /// Bearer key sent to it, if it wants one.
        #[serde(default)]
        key: Option<String>,
    },
    /// Settle on an EVM chain from a relayer key (the `x402-chain` crate; the
    /// `atomicstream` binary builds it, embedders pass
    /// `x402_chain::EvmFacilitator` to [`crate::ServerBuilder::facilitator`]).
    Evm {
        /// JSON-RPC URL of a node of `network`.
        rpc_url: String,
        /// The network (`base`, `base-sepolia`, `eip155:84532`, ...).
        network: String,
        /// File holding the relayer's hex private key (mode 0600), or...
        #[serde(default)]
        relayer_key_file: Option<PathBuf>,
        /// ...the environment variable holding it.
        #[serde(default = "default_relayer_env")]
        relayer_key_env: String,
        /// Blocks a settlement must be buried under before it counts (1 = mined).
        #[serde(default = "default_confirmations")]
        confirmations: u64,
        /// Seconds to wait for a receipt before answering "pending" (settled later).
        #[serde(default = "default_receipt_timeout")]
        receipt_timeout_secs: u64,
    },
}

fn default_relayer_env() -> String {
    "X402_RELAYER_KEY".into()
}
fn default_confirmations() -> u64 {
    1
}
fn default_receipt_timeout() -> u64 {
    20
}

impl std::fmt::Debug for FacilitatorConfig {
    // A facilitator URL may carry credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FacilitatorConfig::Embedded {} => f.write_str("Embedded"),
            FacilitatorConfig::Http { .. } => f.write_str("Http { url: <redacted> }"),
            FacilitatorConfig::Evm {
                network,
                confirmations,
                ..
            } => write!(
                f,
                "Evm {{ network: {network:?}, confirmations: {confirmations}, rpc_url: <redacted> }}"
            ),
        }
    }
}

/// What `validate` says when a config names no facilitator.
pub const NO_FACILITATOR: &str = "the config must name its facilitator: [facilitator] kind = \"http\", url = \"...\" \
(or kind = \"embedded\" for local testing: it verifies payments but settles nothing)";

/// Where sessions, payment records and events live.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// In this process (the default): one instance; a restart forgets paid time.
    #[default]
    Memory,
    /// Redis, shared by every instance of a deployment: scale out, survive restarts.
    Redis {
        /// `redis://[user:password@]host:port[/db]`.
        url: String,
        /// Prefix of every key (several deployments may share one Redis).
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Longest wait for one Redis operation, in milliseconds.
        #[serde(default = "default_store_timeout")]
        timeout_ms: u64,
    },
}

fn default_prefix() -> String {
    "x402:".into()
}
fn default_store_timeout() -> u64 {
    1000
}

impl std::fmt::Debug for StoreConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("Memory"),
            StoreConfig::Redis {
                prefix, timeout_ms, ..
            } => f
                .debug_struct("Redis")
                .field("url", &"<redacted>")
                .field("prefix", prefix)
                .field("timeout_ms", timeout_ms)
                .finish(),
        }
    }
}

/// The standard facilitator API served by a stream server, for the operator's own servers.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilitatorApiConfig {
    /// Bearer key callers must present (`Authorization: Bearer <key>`), at least 32 bytes.
    pub key: String,
    /// Requests per second allowed (all callers together).
    #[serde(default = "default_api_rate")]
    pub requests_per_second: u32,
}

fn default_api_rate() -> u32 {
    50
}

impl std::fmt::Debug for FacilitatorApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilitatorApiConfig")
            .field("key", &"<redacted>")
            .field("requests_per_second", &self.requests_per_second)
            .finish()
    }
}

/// Where a stream's events come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum SourceConfig {
    /// Synthetic market data: trades and quotes.
    Synthetic {
        /// Events per second.
        #[serde(default = "default_rate")]
        rate: f64,
        /// Symbol.
        #[serde(default = "default_symbol")]
        symbol: String,
        /// Payload padding in bytes (benchmarks).
        #[serde(default)]
        pad: usize,
    },
    /// Replay of a JSON Lines file.
    Replay {
        /// The file.
        file: PathBuf,
        /// Events per second.
        #[serde(default = "default_rate")]
        rate: f64,
        /// Start over at the end.
        #[serde(default)]
        looping: bool,
    },
    /// Events published by the embedding program through [`crate::Publisher`].
    Api,
}

fn default_rate() -> f64 {
    10.0
}
fn default_symbol() -> String {
    "BTC-USD".into()
}

impl SourceConfig {
    /// What makes this source unable to deliver, if anything: a replay file
    /// that is missing or unreadable would sell slices with no events.
    pub fn problem(&self) -> Option<String> {
        match self {
            SourceConfig::Replay { file, .. } => std::fs::File::open(file)
                .err()
                .map(|e| format!("replay file {}: {e}", file.display())),
            _ => None,
        }
    }
}

/// One stream for sale.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Id used in URLs.
    pub id: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Price per minute in display units of the asset (`"0.01"`).
    pub price_per_minute: String,
    /// Seconds one payment buys.
    #[serde(default = "default_slice")]
    pub slice_seconds: u64,
    /// Network (`base-sepolia` or `eip155:84532`).
    #[serde(default = "default_network")]
    pub network: String,
    /// Token contract; defaults to USDC on the network.
    #[serde(default)]
    pub asset: Option<String>,
    /// Recipient.
    pub pay_to: String,
    /// Validity window asked of payments (also the unpaid quote lifetime).
    #[serde(default = "default_timeout")]
    pub max_timeout_seconds: u64,
    /// Event source.
    pub source: SourceConfig,
    /// Also sell over x402 `batch-settlement` (payment channels) on these terms.
    #[serde(default)]
    pub channel: Option<ChannelOffer>,
}

fn default_slice() -> u64 {
    300
}
fn default_network() -> String {
    "base-sepolia".into()
}
fn default_timeout() -> u64 {
    60
}

/// The whole configuration.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public HTTP base URL; defaults to `http://{listen}`.
    #[serde(default)]
    pub public_http: Option<String>,
    /// Public WebSocket base URL; defaults to `ws://{listen}`.
    #[serde(default)]
    pub public_ws: Option<String>,
    /// Token secret (hex or text); `X402_SERVER_SECRET` overrides; random if absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Facilitator (required: a config always names it).
    #[serde(default)]
    pub facilitator: Option<FacilitatorConfig>,
    /// Serve the standard facilitator API under `/facilitator` (off unless configured).
    #[serde(default)]
    pub facilitator_api: Option<FacilitatorApiConfig>,
    /// Where state lives (`[store]`; in memory unless configured).
    #[serde(default)]
    pub store: StoreConfig,
    /// Streams.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Browsers (CORS), trusted proxies and the metrics endpoint (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// When `batch-settlement` channels are claimed.
    #[serde(default)]
    pub channel_manager: ChannelManagerConfig,
}

impl std::fmt::Debug for Config {
    // The secret never appears; the facilitator's URL neither.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("public_http", &self.public_http)
            .field("public_ws", &self.public_ws)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("facilitator", &self.facilitator)
            .field("facilitator_api", &self.facilitator_api)
            .field("store", &self.store)
            .field("streams", &self.streams)
            .field("limits", &self.limits)
            .field("http", &self.http)
            .finish()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4021))
}

/// The development payTo address of the demo catalog (the public test key's address).
pub const DEV_PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

impl Config {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let c: Config = parse(text)?;
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML without checking it ([`Config::problems`] lists every
    /// problem of what parsed). A parse error names the key's path and, for
    /// an unknown key, the closest known one.
    pub fn from_toml_unchecked(text: &str) -> Result<Config, ConfigError> {
        parse(text)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Io(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The demo catalog: synthetic market data on base-sepolia USDC, sold by the slice
    /// (`exact`) and over channels (`batch-settlement`; its facilitator must list the
    /// scheme in `/supported`, as the embedded and the EVM facilitators do).
    pub fn demo(listen: SocketAddr) -> Config {
        let stream = |id: &str, title: &str, symbol: &str, rate: f64, slice: u64, price: &str| {
            StreamConfig {
                id: id.into(),
                title: title.into(),
                description: format!("Synthetic {symbol} trades and quotes, {rate} events/s"),
                price_per_minute: price.into(),
                slice_seconds: slice,
                network: "base-sepolia".into(),
                asset: None,
                pay_to: DEV_PAY_TO.into(),
                max_timeout_seconds: 60,
                source: SourceConfig::Synthetic {
                    rate,
                    symbol: symbol.into(),
                    pad: 0,
                },
                // Both schemes: `exact` per slice, and channels (`batch-settlement`).
                channel: Some(ChannelOffer::default()),
            }
        };
        Config {
            listen,
            public_http: None,
            public_ws: None,
            secret: None,
            facilitator: Some(FacilitatorConfig::Embedded {}),
            facilitator_api: None,
            store: StoreConfig::Memory,
            http: HttpConfig::default(),
            channel_manager: ChannelManagerConfig::default(),
            streams: vec![
                stream(
                    "btc-usd",
                    "BTC/USD market data",
                    "BTC-USD",
                    10.0,
                    300,
                    "0.01",
                ),
                stream(
                    "eth-usd",
                    "ETH/USD market data",
                    "ETH-USD",
                    10.0,
                    300,
                    "0.01",
                ),
                stream(
                    "demo-fast",
                    "Demo stream with 4-second slices",
                    "BTC-USD",
                    20.0,
                    4,
                    "0.06",
                ),
            ],
            limits: Limits::default(),
        }
    }

    /// Every problem of the configuration, each naming its field
    /// (`streams[1] (eth-usd).price_per_minute: ...`). Empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.http.problems();
        out.extend(self.limits.problems());
        out.extend(self.channel_manager.problems(&self.streams));
        if self.facilitator.is_none() {
            out.push(format!("facilitator: {NO_FACILITATOR}"));
        }
        if let Some(api) = &self.facilitator_api
            && api.key.len() < 32
        {
            out.push("facilitator_api.key: must be at least 32 bytes".into());
        }
        if let StoreConfig::Redis { url, .. } = &self.store {
            if !url.starts_with("redis://") && !url.starts_with("unix://") {
                out.push("store.url: must start with redis:// (or unix://)".into());
            }
            if self.secret.is_none() && std::env::var_os("X402_SERVER_SECRET").is_none() {
                out.push(
                    "secret: instances sharing a store must share the token secret \
                     (set `secret` or X402_SERVER_SECRET on every instance)"
                        .into(),
                );
            }
        }
        if let Some(s) = &self.secret
            && s.len() < crate::state::MIN_SECRET_LEN
        {
            out.push(format!(
                "secret: must be at least {} bytes (got {})",
                crate::state::MIN_SECRET_LEN,
                s.len()
            ));
        }
        for (field, v) in [
            ("public_http", &self.public_http),
            ("public_ws", &self.public_ws),
        ] {
            if let Some(u) = v
                && let Err(e) = x402_types::Url::parse(u)
            {
                out.push(format!("{field}: {e}"));
            }
        }
        if self.streams.is_empty() {
            out.push("streams: no stream is configured ([[streams]])".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            if !seen.insert(&s.id) {
                out.push(format!("streams[{i}].id: duplicate stream id {}", s.id));
            }
            for m in s.problems() {
                out.push(format!("streams[{i}] ({}).{m}", s.id));
            }
            if let Some(m) = s.source.problem() {
                out.push(format!("streams[{i}] ({}).source: {m}", s.id));
            }
        }
        out
    }

    /// Checks every stream.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for st in &self.streams {
            if let Some(m) = st.source.problem() {
                return Err(ConfigError::Invalid(format!(
                    "stream {}: source: {m}",
                    st.id
                )));
            }
        }
        if self.facilitator.is_none() {
            return Err(ConfigError::Invalid(NO_FACILITATOR.into()));
        }
        self.http.validate()?;
        first_problem(self.limits.problems())?;
        if let Some(api) = &self.facilitator_api
            && api.key.len() < 32
        {
            return Err(ConfigError::Invalid(
                "facilitator_api.key must be at least 32 bytes".into(),
            ));
        }
        if let Some(s) = &self.secret
            && s.len() < crate::state::MIN_SECRET_LEN
        {
            return Err(ConfigError::Invalid(format!(
                "secret must be at least {} bytes",
                crate::state::MIN_SECRET_LEN
            )));
        }
        if matches!(self.store, StoreConfig::Redis { .. })
            && self.secret.is_none()
            && std::env::var_os("X402_SERVER_SECRET").is_none()
        {
            return Err(ConfigError::Invalid(
                "[store] kind = \"redis\" needs a shared token secret: set `secret` (or \
                 X402_SERVER_SECRET) to the same value on every instance"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.streams {
            if !seen.insert(&s.id) {
                return Err(ConfigError::Invalid(format!(
                    "duplicate stream id {}",
                    s.id
                )));
            }
            s.resolve()?;
        }
        Ok(())
    }
}

/// A commented `server.toml` to start from (`atomicstream config example`).
pub const EXAMPLE: &str = r#"# atomicstream server configuration. Check it with: atomicstream serve --config server.toml --check
listen = "127.0.0.1:4021"
# What clients see, behind a TLS proxy (defaults to http://{listen} and ws://{listen}):
# public_http = "https://x402.example.com"
# public_ws = "wss://x402.example.com"
# Token secret, at least 32 bytes (or X402_SERVER_SECRET). Without one a random secret is used
# and tokens do not survive a restart.
# secret = "change me: at least thirty-two bytes of random text"

# Who verifies and settles payments. Required.
[facilitator]
kind = "embedded"                 # verifies, settles NOTHING: local testing only
# kind = "http"                   # a remote x402 facilitator
# url = "https://facilitator.example.com"
# kind = "evm"                    # settle on chain yourself (see docs/server.md)
# rpc_url = "http://127.0.0.1:8545"
# network = "base-sepolia"
# relayer_key_file = "relayer.key"
# confirmations = 1

# Where sessions, payment records and events live. Default: in this process. With Redis,
# several instances behind a load balancer share them and a restart loses no paid time
# (every instance needs the same `secret`; see docs/server.md):
# [store]
# kind = "redis"
# url = "redis://127.0.0.1:6379"
# prefix = "x402:"

# Serve /facilitator/{verify,settle,supported} for your own servers (off unless present):
# [facilitator_api]
# key = "at least thirty-two bytes, sent as Authorization: Bearer <key>"
# requests_per_second = 50

# Browsers, proxies and monitoring:
# [http]
# cors_origins = ["*"]                   # who may call from a browser page; [] = no CORS headers
# trusted_proxies = ["10.0.0.0/8"]       # believe X-Forwarded-For / PROXY headers from these only
# proxy_protocol = false                 # trusted proxies send a PROXY v1/v2 header (HAProxy send-proxy)
# metrics_listen = "127.0.0.1:9464"      # /metrics only on this address
# metrics_key = "a long scrape key"      # or: /metrics needs Authorization: Bearer <key>

[[streams]]
id = "btc-usd"                    # [A-Za-z0-9_-]+, used in URLs
title = "BTC/USD"
description = "Trades and quotes"
price_per_minute = "0.01"         # display units of the asset (USDC)
slice_seconds = 300               # what one payment buys
network = "base-sepolia"          # or "base", "eip155:8453", ...
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"   # your address
max_timeout_seconds = 60          # payment validity window and unpaid quote lifetime
source = { kind = "synthetic", rate = 10, symbol = "BTC-USD" }
# source = { kind = "replay", file = "events.jsonl", rate = 5, looping = true }
# source = { kind = "api" }       # publish from your program (x402_server::Publisher)

[limits]
# max_sessions = 100000
# max_connections_per_ip = 64
# replay_buffer = 1024
# horizon_slices = 2
# payment_wait_secs = 5
# facilitator_timeout_secs = 10
# session_linger_secs = 600
# write_batch_bytes = 16384       # raise (e.g. 262144) for large events: less CPU, more memory per socket
"#;

/// A section's first problem as the error, if it has any.
fn first_problem(problems: Vec<String>) -> Result<(), ConfigError> {
    match problems.into_iter().next() {
        Some(p) => Err(ConfigError::Invalid(p)),
        None => Ok(()),
    }
}

/// Parses TOML into a [`Config`], naming the failing key's path
/// (`streams[0].slice_secnds`) and, for an unknown key, the closest known one.
fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let hint = did_you_mean(inner.message())
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        ConfigError::Parse(format!("at `{path}`{hint}: {inner}"))
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the expected
/// name closest to `x`, if close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (given, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(given, k), k))
        .filter(|(d, k)| {
            *d <= (k.len() / 3).max(1)
                || k.starts_with(given)
                || given.starts_with(k)
                || given.ends_with(&format!("_{k}"))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_string())
}

/// Levenshtein distance over bytes (config keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// A stream's payment terms, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    /// Network.
    pub network: Network,
    /// Asset contract.
    pub asset: Address,
    /// Decimals.
    pub decimals: u8,
    /// Currency symbol.
    pub symbol: String,
    /// EIP-712 domain name/version.
    pub eip712: Option<(String, String)>,
    /// Recipient.
    pub pay_to: Address,
    /// Price per minute (atomic).
    pub per_minute: Amount,
    /// Price per slice (atomic).
    pub per_slice: Amount,
}

impl StreamConfig {
    /// Every problem of this stream, each field checked on its own (a bad
    /// `pay_to` does not hide a bad price).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.push("id: must be [A-Za-z0-9_-]+".to_string());
        }
        if self.slice_seconds == 0 {
            out.push("slice_seconds: must be > 0".into());
        }
        if let Err(e) = self.network.parse::<Network>() {
            out.push(format!("network: {e}"));
        }
        if let Some(Err(e)) = self.asset.as_ref().map(|a| a.parse::<Address>()) {
            out.push(format!("asset: {e}"));
        }
        if let Err(e) = self.pay_to.parse::<Address>() {
            out.push(format!("pay_to: {e}"));
        }
        if let Err(e) = Amount::from_display(&self.price_per_minute, 18) {
            out.push(format!("price_per_minute: {e}"));
        }
        out.extend(self.channel.iter().flat_map(ChannelOffer::problems));
        if let Some(c) = &self.channel
            && c.billing_granularity_secs > 0
            && !self
                .slice_seconds
                .is_multiple_of(c.billing_granularity_secs)
        {
            // A whole slice must bill exactly its price (returns and charges add up).
            out.push(format!(
                "channel.billing_granularity_secs: must divide slice_seconds ({})",
                self.slice_seconds
            ));
        }
        if out.is_empty()
            && let Err(ConfigError::Invalid(m)) = self.resolve()
        {
            // What depends on several fields (asset on its network, the
            // price of a slice in the asset's decimals).
            let prefix = format!("stream {}: ", self.id);
            out.push(m.strip_prefix(&prefix).unwrap_or(&m).to_string());
        }
        out
    }

    /// Resolves network, asset and prices.
    pub fn resolve(&self) -> Result<Terms, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("stream {}: {m}", self.id));
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("id must be [A-Za-z0-9_-]+".into()));
        }
        if self.slice_seconds == 0 {
            return Err(bad("slice_seconds must be > 0".into()));
        }
        let network: Network = self.network.parse().map_err(|e| bad(format!("{e}")))?;
        let known = usdc(&network);
        let asset: Address = match &self.asset {
            Some(a) => a.parse().map_err(|e| bad(format!("asset: {e}")))?,
            None => known
                .as_ref()
                .map(|k| k.address)
                .ok_or_else(|| bad("no asset and no known USDC on this network".into()))?,
        };
        let k = x402_types::known_asset(&network, &asset);
        let decimals = k.as_ref().map_or(6, |k| k.decimals);
        let pay_to: Address = self
            .pay_to
            .parse()
            .map_err(|e| bad(format!("pay_to: {e}")))?;
        let per_minute = Amount::from_display(&self.price_per_minute, decimals)
            .map_err(|e| bad(format!("price: {e}")))?;
        let per_slice = per_minute
            .atomic()
            .checked_mul_u64(self.slice_seconds)
            .and_then(|v| v.div_rem_u64(60))
            .map(|(q, _)| Amount(q))
            .ok_or_else(|| bad("price overflow".into()))?;
        if per_slice.atomic().is_zero() {
            return Err(bad("price per slice rounds to zero".into()));
        }
        Ok(Terms {
            network,
            asset,
            decimals,
            symbol: k.as_ref().map_or("TOKEN", |k| k.symbol).to_string(),
            eip712: k.map(|k| (k.eip712_name.to_string(), k.eip712_version.to_string())),
            pay_to,
            per_minute,
            per_slice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file() {
        let c = Config::from_toml(
            r#"
listen = "127.0.0.1:0"
public_http = "https://x402.example.com"
secret = "0123456789abcdef0123456789abcdef"
[facilitator]
kind = "http"
url = "https://facilitator.example.com"
[[streams]]
id = "btc"
title = "BTC"
price_per_minute = "0.012"
slice_seconds = 300
network = "eip155:84532"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
source = { kind = "synthetic", rate = 5 }
[limits]
max_sessions = 10
"#,
        )
        .unwrap();
        assert_eq!(c.limits.max_sessions, 10);
        assert_eq!(c.limits.replay_buffer, 1024);
        let t = c.streams[0].resolve().unwrap();
        assert_eq!(t.per_minute, Amount::from(12_000));
        assert_eq!(t.per_slice, Amount::from(60_000));
        assert_eq!(t.eip712, Some(("USDC".into(), "2".into())));
    }

    /// A misspelt key in any section is an error naming it (with the keys
    /// the section has), never a silent default.
    #[test]
    fn unknown_keys_are_errors_in_every_section() {
        let base = r#"
secret = "0123456789abcdef0123456789abcdef"
[facilitator]
kind = "embedded"
[[streams]]
id = "btc"
title = "BTC"
price_per_minute = "0.012"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
source = { kind = "synthetic", rate = 5 }
"#;
        assert!(Config::from_toml(base).is_ok());
        for (typo, field) in [
            (
                base.replace("price_per_minute", "slice_secnds = 4\nprice_per_minute"),
                "slice_secnds",
            ),
            (format!("{base}[limit]\nmax_sessions = 1\n"), "limit"),
            (base.replace("rate = 5", "rat = 5"), "rat"),
            (
                format!(
                    "{base}[facilitator_api]\napi_key = \"0123456789abcdef0123456789abcdef\"\n"
                ),
                "api_key",
            ),
            (format!("{base}[limits]\nmax_sesions = 1\n"), "max_sesions"),
            (
                base.replace("kind = \"embedded\"", "kind = \"embedded\"\nurl = \"x\""),
                "url",
            ),
        ] {
            let e = Config::from_toml(&typo)
                .err()
                .unwrap_or_else(|| panic!("{field} accepted"));
            assert!(
                e.to_string().contains(&format!("unknown field `{field}`")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn a_replay_file_that_is_missing_fails_the_check_and_the_start() {
        let mut c = Config::demo(default_listen());
        c.streams[0].source = SourceConfig::Replay {
            file: "/nonexistent/events.jsonl".into(),
            rate: 5.0,
            looping: false,
        };
        let p = c.problems();
        assert!(
            p.iter().any(|m| m
                .starts_with("streams[0] (btc-usd).source: replay file /nonexistent/events.jsonl")),
            "{p:?}"
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn refuses_bad_streams() {
        let base = Config::demo(default_listen());
        let mut c = base.clone();
        c.streams[0].price_per_minute = "-1".into();
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.streams[0].network = "mars".into();
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.streams[1].id = c.streams[0].id.clone();
        assert!(c.validate().is_err());
        let mut c = base;
        c.streams[0].id = "../x".into();
        assert!(c.validate().is_err());
        assert!(Config::from_toml("listen = 5").is_err());
    }

    #[test]
    fn the_example_is_valid_and_problems_name_their_fields() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        let typo = EXAMPLE.replace("slice_seconds = 300", "slice_secnds = 300");
        let e = Config::from_toml(&typo).unwrap_err().to_string();
        assert!(
            e.contains("`streams[0].slice_secnds`") && e.contains("did you mean `slice_seconds`"),
            "{e}"
        );
        let e = Config::from_toml(&EXAMPLE.replace("[limits]", "[limit]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `limits`"), "{e}");
        let e = Config::from_toml(&format!("{EXAMPLE}\n[facilitator_api]\napi_key = \"k\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `key`"), "{e}");
        let e = Config::from_toml(&EXAMPLE.replace("[limits]", "[zzzzzz]"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let mut bad = c.clone();
        bad.facilitator = None;
        bad.secret = Some("short".into());
        bad.streams[0].price_per_minute = "-1".into();
        bad.streams[0].pay_to = "0x12".into();
        bad.streams.push(bad.streams[0].clone());
        let p = bad.problems();
        // Each field on its own: the bad pay_to does not hide the bad price.
        assert!(
            p.iter()
                .any(|m| m.starts_with("streams[0] (btc-usd).pay_to: ")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.starts_with("facilitator: ")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("secret: ")), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("streams[0] (btc-usd).price_per_minute: ")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("streams[1].id: duplicate")),
            "{p:?}"
        );
    }

    #[test]
    fn a_config_must_name_its_facilitator_and_keeps_secrets_out_of_debug() {
        let no_facilitator = r#"
[[streams]]
id = "btc"
price_per_minute = "0.01"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
source = { kind = "synthetic" }
"#;
        assert_eq!(
            Config::from_toml(no_facilitator),
            Err(ConfigError::Invalid(NO_FACILITATOR.into()))
        );
        let short_secret =
            format!("secret = \"short\"\n[facilitator]\nkind = \"embedded\"\n{no_facilitator}");
        assert!(Config::from_toml(&short_secret).is_err());
        let c = Config::from_toml(&format!(
            "secret = \"{}\"\n[facilitator]\nkind = \"http\"\nurl = \"https://user:pw@f.example\"\n{no_facilitator}",
            "k".repeat(40)
        ))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("kkkk") && !dbg.contains("pw@"), "{dbg}");
    }
}
