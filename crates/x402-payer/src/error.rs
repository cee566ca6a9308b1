//! Errors of the payer crate.

use x402_types::{Amount, Network};

/// Everything the payer can refuse or fail at.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The spending policy refused; nothing was signed or spent.
    #[error("spending policy refused the payment: {0}")]
    Policy(#[from] PolicyError),
    /// No signer for this scheme and network.
    #[error("unsupported payment kind: scheme {scheme:?} on {network}")]
    Unsupported {
        /// Scheme.
        scheme: String,
        /// Network.
        network: Network,
    },
    /// The asset has no `extra` domain and is not in the known-asset table: we never guess.
    #[error("unknown asset {asset} on {network} and no EIP-712 domain in `extra`")]
    UnknownAsset {
        /// Asset.
        asset: String,
        /// Network.
        network: Network,
    },
    /// A requirement field is not valid for the scheme (bad address, ...).
    #[error("invalid requirement: {0}")]
    InvalidRequirement(String),
    /// The key material was invalid.
    #[error("invalid private key: {0}")]
    InvalidKey(&'static str),
    /// The key could not be loaded.
    #[error("cannot load key: {0}")]
    KeySource(String),
    /// The OS random generator failed.
    #[error("random generator failed: {0}")]
    Random(String),
    /// A remote signer or device failed.
    #[error("signer failed: {0}")]
    Signer(String),
}

/// `Result` with the payer [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which budget a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// The budget of one stream session.
    Session,
    /// The budget shared by every session of a client (its lifetime).
    Lifetime,
}

/// A spending-policy refusal: which limit, and by how much.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The price exceeds the per-payment cap.
    #[error("price {requested} exceeds the per-payment cap {limit} by {excess} (atomic units)")]
    PerPaymentCap {
        /// The cap.
        limit: Amount,
        /// The price asked.
        requested: Amount,
        /// `requested - limit`.
        excess: Amount,
    },
    /// The price does not fit in what remains of a budget.
    #[error(
        "{scope:?} budget {limit} has {committed} spent and {reserved} reserved; {requested} more would exceed it by {excess}"
    )]
    BudgetExceeded {
        /// Which budget.
        scope: BudgetScope,
        /// Its limit.
        limit: Amount,
        /// Spent (settled) so far.
        committed: Amount,
        /// Reserved by signatures in flight.
        reserved: Amount,
        /// The price asked.
        requested: Amount,
        /// By how much it would be exceeded.
        excess: Amount,
    },
    /// The network is not allowed.
    #[error("network {network} is not in the allow list")]
    NetworkNotAllowed {
        /// The network asked.
        network: Network,
    },
    /// The asset is not allowed.
    #[error("asset {asset} on {network} is not in the allow list")]
    AssetNotAllowed {
        /// The asset asked.
        asset: String,
        /// Its network.
        network: Network,
    },
    /// The recipient is not allowed.
    #[error("payTo {pay_to} is not in the allow list")]
    PayToNotAllowed {
        /// The recipient asked.
        pay_to: String,
    },
    /// The validity window asked is longer than allowed.
    #[error("maxTimeoutSeconds {requested} exceeds the limit {limit} by {excess}")]
    TimeoutTooLong {
        /// The limit.
        limit: u64,
        /// Asked.
        requested: u64,
        /// Excess.
        excess: u64,
    },
    /// The approval callback vetoed.
    #[error("payment vetoed by the approval callback: {reason}")]
    Vetoed {
        /// The callback's reason.
        reason: String,
    },
    /// A channel deposit above the deposit cap (a deposit is money at risk,
    /// refundable, not spent; the cap bounds it).
    #[error("a deposit of {requested} exceeds the deposit cap {limit} (atomic units)")]
    DepositCap {
        /// The cap.
        limit: Amount,
        /// The deposit the channel needs.
        requested: Amount,
    },
    /// Budget arithmetic overflowed (absurd amounts).
    #[error("amount overflow")]
    Overflow,
}

impl PolicyError {
    /// The refusal in the asset's own units when the asset is known
    /// (`0.05 USDC`), else in atomic units: what a person reads.
    ///
    /// ```
    /// use x402_payer::PolicyError;
    /// use x402_types::{Amount, Requirement};
    /// let req = Requirement {
    ///     scheme: "exact".into(),
    ///     network: "eip155:84532".parse().unwrap(),
    ///     amount: Amount::from(50_000u64),
    ///     asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
    ///     pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
    ///     max_timeout_seconds: 60,
    ///     extra: None,
    /// };
    /// let e = PolicyError::PerPaymentCap {
    ///     limit: Amount::from(10_000u64),
    ///     requested: Amount::from(50_000u64),
    ///     excess: Amount::from(40_000u64),
    /// };
    /// assert_eq!(
    ///     e.describe(&req),
    ///     "one payment of 0.05 USDC is above the per-payment cap of 0.01 USDC"
    /// );
    /// ```
    pub fn describe(&self, req: &x402_types::Requirement) -> String {
        let known = req
            .asset
            .parse::<x402_types::Address>()
            .ok()
            .and_then(|a| x402_types::known_asset(&req.network, &a));
        let money = |a: &Amount| match &known {
            Some(k) => format!("{} {}", a.to_display(k.decimals), k.symbol),
            None => format!("{a} atomic units"),
        };
        match self {
            PolicyError::PerPaymentCap {
                limit, requested, ..
            } => format!(
                "one payment of {} is above the per-payment cap of {}",
                money(requested),
                money(limit)
            ),
            PolicyError::BudgetExceeded {
                scope,
                limit,
                committed,
                reserved,
                requested,
                ..
            } => {
                let scope = match scope {
                    BudgetScope::Session => "session budget",
                    BudgetScope::Lifetime => "budget",
                };
                let used = committed.checked_add(*reserved).unwrap_or(*committed);
                format!(
                    "one more payment of {} would go past the {scope} of {} ({} already signed)",
                    money(requested),
                    money(limit),
                    money(&used)
                )
            }
            PolicyError::DepositCap { limit, requested } => format!(
                "the channel needs a deposit of {}, above the deposit cap of {}",
                money(requested),
                money(limit)
            ),
            other => other.to_string(),
        }
    }
}

/// Why a signature is unusable.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// `v` is not 0, 1, 27 or 28.
    #[error("invalid recovery byte v = {0}")]
    BadV(u8),
    /// `s` is in the upper half of the order (malleable).
    #[error("high-s (malleable) signature")]
    HighS,
    /// `r` or `s` is zero or out of range.
    #[error("malformed signature")]
    Malformed,
    /// No public key recovers from it.
    #[error("no public key recovers from this signature")]
    Unrecoverable,
}
