//! x402 networks: v1 names, CAIP-2 ids, EVM chain ids and the known USDC assets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::Address;
use crate::error::{Error, truncate};

const SOLANA_MAINNET: &str = "5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp";
const SOLANA_DEVNET: &str = "EtWTRABZaYq6iMfeYKouRu166VU2xqa1";

/// v1 network names and their EVM chain ids.
pub const EVM_NETWORKS: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("ethereum", 1),
    ("sepolia", 11155111),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
    ("arbitrum", 42161),
];

/// A payment network, normalised from either notation.
///
/// Reading accepts a v1 name (`base-sepolia`) or a CAIP-2 id
/// (`eip155:84532`); [`Network::v1_name`] and [`Network::caip2`] write either.
/// Serde uses CAIP-2; use [`serde_v1`] for the v1 notation.
///
/// ```
/// use x402_types::Network;
/// let n: Network = "base-sepolia".parse().unwrap();
/// assert_eq!(n, "eip155:84532".parse().unwrap());
/// assert_eq!(n.chain_id(), Some(84532));
/// assert_eq!(n.caip2(), "eip155:84532");
/// assert_eq!(n.v1_name(), "base-sepolia");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Network {
    /// An EVM chain (`eip155:<chain id>`).
    Evm(u64),
    /// A Solana cluster by genesis-hash prefix (`solana:<ref>`).
    Solana(String),
}

impl Network {
    /// Base mainnet.
    pub const BASE: Network = Network::Evm(8453);
    /// Base Sepolia testnet.
    pub const BASE_SEPOLIA: Network = Network::Evm(84532);

    /// The EVM chain id, if this is an EVM network.
    pub fn chain_id(&self) -> Option<u64> {
        match self {
            Network::Evm(id) => Some(*id),
            Network::Solana(_) => None,
        }
    }

    /// The CAIP-2 id (x402 v2 notation).
    pub fn caip2(&self) -> String {
        match self {
            Network::Evm(id) => format!("eip155:{id}"),
            Network::Solana(r) => format!("solana:{r}"),
        }
    }

    /// The x402 v1 name; networks without one fall back to their CAIP-2 id.
    pub fn v1_name(&self) -> String {
        match self {
            Network::Evm(id) => EVM_NETWORKS
                .iter()
                .find(|(_, c)| c == id)
                .map(|(n, _)| (*n).to_string())
                .unwrap_or_else(|| self.caip2()),
            Network::Solana(r) if r == SOLANA_MAINNET => "solana".into(),
            Network::Solana(r) if r == SOLANA_DEVNET => "solana-devnet".into(),
            Network::Solana(_) => self.caip2(),
        }
    }

    /// The notation used by an x402 wire version (1: name, 2: CAIP-2).
    pub fn for_x402_version(&self, x402_version: u8) -> String {
        if x402_version == 1 {
            self.v1_name()
        } else {
            self.caip2()
        }
    }
}

impl FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let unknown = || Error::UnknownNetwork(truncate(s));
        if let Some(id) = s.strip_prefix("eip155:") {
            if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unknown());
            }
            return id.parse().map(Network::Evm).map_err(|_| unknown());
        }
        if let Some(r) = s.strip_prefix("solana:") {
            if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(unknown());
            }
            return Ok(Network::Solana(r.to_string()));
        }
        match s {
            "solana" => return Ok(Network::Solana(SOLANA_MAINNET.into())),
            "solana-devnet" => return Ok(Network::Solana(SOLANA_DEVNET.into())),
            _ => {}
        }
        EVM_NETWORKS
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, id)| Network::Evm(*id))
            .ok_or_else(unknown)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.caip2())
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Network({})", self.caip2())
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.caip2())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "x402_types::network::serde_v1")]`: write the v1 name, read either notation.
pub mod serde_v1 {
    use super::*;

    /// Serializes the v1 name.
    pub fn serialize<S: Serializer>(n: &Network, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.v1_name())
    }

    /// Reads either notation.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        Network::deserialize(d)
    }
}

/// A token the payer knows how to sign for without `extra`: its contract,
/// decimals and EIP-712 domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAsset {
    /// The network.
    pub network: Network,
    /// The token contract (the EIP-712 `verifyingContract`).
    pub address: Address,
    /// Display symbol.
    pub symbol: &'static str,
    /// Decimals.
    pub decimals: u8,
    /// EIP-712 domain `name`.
    pub eip712_name: &'static str,
    /// EIP-712 domain `version`.
    pub eip712_version: &'static str,
}

impl KnownAsset {
    /// Parses what a person types (`"0.05"`) in this asset's units.
    ///
    /// ```
    /// let usdc = x402_types::usdc(&x402_types::Network::BASE).unwrap();
    /// assert_eq!(usdc.parse_amount("0.05").unwrap(), x402_types::Amount::from(50_000));
    /// assert_eq!(usdc.display_amount(x402_types::Amount::from(50_000)), "0.05");
    /// ```
    pub fn parse_amount(&self, human: &str) -> Result<crate::Amount, Error> {
        crate::Amount::from_display(human, self.decimals)
    }

    /// The display form of an atomic amount of this asset.
    pub fn display_amount(&self, amount: crate::Amount) -> String {
        amount.to_display(self.decimals)
    }
}

const USDC: &[(u64, [u8; 20], &str)] = &[
    (
        8453,
        hex20("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        "USD Coin",
    ),
    (
        84532,
        hex20("036CbD53842c5426634e7929541eC2318f3dCF7e"),
        "USDC",
    ),
    (
        137,
        hex20("3c499c542cEF5E3811e1192ce70d8cC03d5c3359"),
        "USD Coin",
    ),
    (
        43114,
        hex20("B97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E"),
        "USD Coin",
    ),
    (
        43113,
        hex20("5425890298aed601595a70AB815c96711a31Bc65"),
        "USD Coin",
    ),
    (
        42161,
        hex20("af88d065e77c8cC2239327C5EDb3A432268e5831"),
        "USD Coin",
    ),
];

const fn hexval(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex literal"),
    }
}

const fn hex20(s: &str) -> [u8; 20] {
    let b = s.as_bytes();
    let mut out = [0u8; 20];
    let mut i = 0;
    while i < 20 {
        out[i] = hexval(b[2 * i]) << 4 | hexval(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Every known USDC deployment (table of `x402-facts.md`).
pub fn known_assets() -> impl Iterator<Item = KnownAsset> {
    USDC.iter().map(|(chain, addr, name)| KnownAsset {
        network: Network::Evm(*chain),
        address: Address(*addr),
        symbol: "USDC",
        decimals: 6,
        eip712_name: name,
        eip712_version: "2",
    })
}

/// The known asset at `address` on `network`, if any.
pub fn known_asset(network: &Network, address: &Address) -> Option<KnownAsset> {
    known_assets().find(|a| &a.network == network && &a.address == address)
}

/// The USDC deployment on `network`, if known.
pub fn usdc(network: &Network) -> Option<KnownAsset> {
    known_assets().find(|a| &a.network == network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ways() {
        for (name, id) in EVM_NETWORKS {
            let n: Network = name.parse().unwrap();
            assert_eq!(n.chain_id(), Some(*id));
            assert_eq!(n.v1_name(), *name);
            assert_eq!(n.caip2().parse::<Network>().unwrap(), n);
        }
        let sol: Network = "solana".parse().unwrap();
        assert_eq!(sol.caip2(), "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp");
        assert_eq!(sol.v1_name(), "solana");
        assert!("eip155:".parse::<Network>().is_err());
        assert!("eip155:01".parse::<Network>().is_err());
        assert!("eip155:99999999999999999999999".parse::<Network>().is_err());
        assert!("mars".parse::<Network>().is_err());
        assert_eq!(
            "eip155:999".parse::<Network>().unwrap().v1_name(),
            "eip155:999"
        );
    }

    #[test]
    fn usdc_table() {
        let a = usdc(&Network::BASE_SEPOLIA).unwrap();
        assert_eq!(
            a.address.to_string(),
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        );
        assert_eq!(a.eip712_name, "USDC");
        let b = usdc(&Network::BASE).unwrap();
        assert_eq!(
            b.address.to_string(),
            "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
        );
        assert_eq!(b.eip712_name, "USD Coin");
        assert_eq!(known_assets().count(), 6);
        for a in known_assets() {
            // The checksummed form in the table must be a valid EIP-55 string.
            assert_eq!(a.address.to_string().parse::<Address>().unwrap(), a.address);
        }
    }
}
