//! The spending policy: checked before every signature.

use std::fmt;
use std::sync::{Arc, Mutex};

use x402_types::{Address, Amount, Network, Requirement, known_assets};

use crate::error::{BudgetScope, PolicyError};

/// A spending limit shared across sessions and threads, with reserve-then-commit accounting.
///
/// A signature *reserves* its amount; a server's acceptance *commits* it; a
/// definite refusal *releases* it. `committed + reserved` never exceeds `limit`.
///
/// ```
/// use x402_payer::{Budget, BudgetScope};
/// use x402_types::Amount;
/// let b = Budget::new(BudgetScope::Lifetime, Amount::from(100));
/// let r = b.reserve(Amount::from(60)).unwrap();
/// assert!(b.reserve(Amount::from(60)).is_err());
/// b.release(r);
/// assert_eq!(b.available(), Amount::from(100));
/// ```
pub struct Budget {
    scope: BudgetScope,
    limit: Amount,
    state: Mutex<BudgetState>,
}

#[derive(Default, Clone, Copy)]
struct BudgetState {
    committed: Amount,
    reserved: Amount,
}

/// An amount held against a [`Budget`] until committed or released.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be committed or released"]
pub struct Held {
    amount: Amount,
}

impl Held {
    /// The amount held.
    pub fn amount(&self) -> Amount {
        self.amount
    }
}

impl Budget {
    /// A budget of `limit` atomic units.
    pub fn new(scope: BudgetScope, limit: Amount) -> Self {
        Budget {
            scope,
            limit,
            state: Mutex::new(BudgetState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // A poisoned lock only means a panic elsewhere; the counters stay consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit.
    pub fn limit(&self) -> Amount {
        self.limit
    }

    /// Committed (accepted by a server) so far.
    pub fn committed(&self) -> Amount {
        self.lock().committed
    }

    /// Reserved by signatures whose fate is unknown.
    pub fn reserved(&self) -> Amount {
        self.lock().reserved
    }

    /// What can still be reserved.
    pub fn available(&self) -> Amount {
        let s = *self.lock();
        self.limit
            .saturating_sub(s.committed)
            .saturating_sub(s.reserved)
    }

    /// Reserves `amount`, or says by how much it would exceed the limit.
    pub fn reserve(&self, amount: Amount) -> Result<Held, PolicyError> {
        let mut s = self.lock();
        let used = s
            .committed
            .checked_add(s.reserved)
            .ok_or(PolicyError::Overflow)?;
        let after = used.checked_add(amount).ok_or(PolicyError::Overflow)?;
        if after > self.limit {
            return Err(PolicyError::BudgetExceeded {
                scope: self.scope,
                limit: self.limit,
                committed: s.committed,
                reserved: s.reserved,
                requested: amount,
                excess: after.saturating_sub(self.limit),
            });
        }
        s.reserved = s
            .reserved
            .checked_add(amount)
            .ok_or(PolicyError::Overflow)?;
        Ok(Held { amount })
    }

    /// The server accepted the payment: the reserved amount becomes spent.
    pub fn commit(&self, held: Held) {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_sub(held.amount);
        s.committed = s.committed.checked_add(held.amount).unwrap_or(self.limit);
    }

    /// The server definitely refused the payment: the amount is available again.
    pub fn release(&self, held: Held) {
        let mut s = self.lock();
        s.reserved = s.reserved.saturating_sub(held.amount);
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = *self.lock();
        f.debug_struct("Budget")
            .field("scope", &self.scope)
            .field("limit", &self.limit)
            .field("committed", &s.committed)
            .field("reserved", &s.reserved)
            .finish()
    }
}

/// The approval callback: return `Err(reason)` to veto a payment.
pub type Approver = Arc<dyn Fn(&Requirement) -> Result<(), String> + Send + Sync>;

/// Limits checked before any signature. Every refusal is a typed [`PolicyError`].
///
/// Defaults are conservative: only the known USDC assets, validity windows up to
/// 600 s, and the per-payment cap you give.
///
/// ```
/// use x402_payer::SpendPolicy;
/// use x402_types::{Amount, Network};
/// let policy = SpendPolicy::new(Amount::from_display("0.05", 6).unwrap())
///     .with_lifetime_budget(Amount::from_display("1", 6).unwrap())
///     .allow_networks([Network::BASE_SEPOLIA]);
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct SpendPolicy {
    max_per_payment: Amount,
    lifetime: Option<Arc<Budget>>,
    networks: Option<Vec<Network>>,
    assets: Option<Vec<(Network, Address)>>,
    pay_to: Option<Vec<Address>>,
    max_timeout_seconds: u64,
    approver: Option<Approver>,
}

impl fmt::Debug for SpendPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendPolicy")
            .field("max_per_payment", &self.max_per_payment)
            .field("lifetime", &self.lifetime)
            .field("networks", &self.networks)
            .field("assets", &self.assets)
            .field("pay_to", &self.pay_to)
            .field("max_timeout_seconds", &self.max_timeout_seconds)
            .field("approver", &self.approver.is_some())
            .finish()
    }
}

/// Default maximum validity window of a payment.
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 600;

impl SpendPolicy {
    /// A policy with a per-payment cap, the known USDC assets, and windows up to 600 s.
    pub fn new(max_per_payment: Amount) -> Self {
        SpendPolicy {
            max_per_payment,
            lifetime: None,
            networks: None,
            assets: Some(known_assets().map(|a| (a.network, a.address)).collect()),
            pay_to: None,
            max_timeout_seconds: DEFAULT_MAX_TIMEOUT_SECONDS,
            approver: None,
        }
    }

    /// A lifetime budget shared by every session using this policy (and its clones).
    pub fn with_lifetime_budget(mut self, limit: Amount) -> Self {
        self.lifetime = Some(Arc::new(Budget::new(BudgetScope::Lifetime, limit)));
        self
    }

    /// Uses an existing shared budget as the lifetime budget.
    pub fn with_shared_budget(mut self, budget: Arc<Budget>) -> Self {
        self.lifetime = Some(budget);
        self
    }

    /// Only these networks.
    pub fn allow_networks(mut self, nets: impl IntoIterator<Item = Network>) -> Self {
        self.networks = Some(nets.into_iter().collect());
        self
    }

    /// Only these assets (replaces the default known-asset list).
    pub fn allow_assets(mut self, assets: impl IntoIterator<Item = (Network, Address)>) -> Self {
        self.assets = Some(assets.into_iter().collect());
        self
    }

    /// Any asset (the signer still refuses assets without a known EIP-712 domain).
    pub fn allow_any_asset(mut self) -> Self {
        self.assets = None;
        self
    }

    /// Only these recipients.
    pub fn allow_pay_to(mut self, addrs: impl IntoIterator<Item = Address>) -> Self {
        self.pay_to = Some(addrs.into_iter().collect());
        self
    }

    /// Maximum `maxTimeoutSeconds`.
    pub fn max_timeout_seconds(mut self, secs: u64) -> Self {
        self.max_timeout_seconds = secs;
        self
    }

    /// An approval callback that can veto any payment.
    pub fn with_approver(
        mut self,
        f: impl Fn(&Requirement) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.approver = Some(Arc::new(f));
        self
    }

    /// The per-payment cap.
    pub fn max_per_payment(&self) -> Amount {
        self.max_per_payment
    }

    /// The lifetime budget, if any.
    pub fn lifetime_budget(&self) -> Option<&Arc<Budget>> {
        self.lifetime.as_ref()
    }

    /// Checks every static limit (no budget change).
    pub fn check(&self, req: &Requirement) -> Result<(), PolicyError> {
        if req.amount > self.max_per_payment {
            return Err(PolicyError::PerPaymentCap {
                limit: self.max_per_payment,
                requested: req.amount,
                excess: req.amount.saturating_sub(self.max_per_payment),
            });
        }
        if let Some(nets) = &self.networks
            && !nets.contains(&req.network)
        {
            return Err(PolicyError::NetworkNotAllowed {
                network: req.network.clone(),
            });
        }
        if let Some(assets) = &self.assets {
            let asset: Option<Address> = req.asset.parse().ok();
            if !assets
                .iter()
                .any(|(n, a)| n == &req.network && Some(a) == asset.as_ref())
            {
                return Err(PolicyError::AssetNotAllowed {
                    asset: req.asset.clone(),
                    network: req.network.clone(),
                });
            }
        }
        if let Some(allowed) = &self.pay_to {
            let to: Option<Address> = req.pay_to.parse().ok();
            if !allowed.iter().any(|a| Some(a) == to.as_ref()) {
                return Err(PolicyError::PayToNotAllowed {
                    pay_to: req.pay_to.clone(),
                });
            }
        }
        if req.max_timeout_seconds > self.max_timeout_seconds {
            return Err(PolicyError::TimeoutTooLong {
                limit: self.max_timeout_seconds,
                requested: req.max_timeout_seconds,
                excess: req.max_timeout_seconds - self.max_timeout_seconds,
            });
        }
        if let Some(f) = &self.approver {
            f(req).map_err(|reason| PolicyError::Vetoed { reason })?;
        }
        Ok(())
    }

    /// Checks every limit and reserves the amount in the session budget (if
    /// given) and the lifetime budget. On any refusal nothing stays reserved.
    pub fn authorize(
        &self,
        req: &Requirement,
        session: Option<&Arc<Budget>>,
    ) -> Result<Reservation, PolicyError> {
        self.check(req)?;
        let life = match &self.lifetime {
            Some(b) => Some((b.clone(), b.reserve(req.amount)?)),
            None => None,
        };
        let sess = match session {
            Some(b) => match b.reserve(req.amount) {
                Ok(h) => Some((b.clone(), h)),
                Err(e) => {
                    if let Some((b, h)) = life {
                        b.release(h);
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(Reservation {
            amount: req.amount,
            holds: [life, sess].into_iter().flatten().collect(),
        })
    }
}

/// What [`SpendPolicy::authorize`] reserved; commit it when the server accepts
/// the payment, release it on a definite refusal. Dropping it keeps the amount
/// reserved (the safe side: the signed payment may still be used).
#[derive(Debug)]
#[must_use = "commit or release the reservation"]
pub struct Reservation {
    amount: Amount,
    holds: Vec<(Arc<Budget>, Held)>,
}

impl Reservation {
    /// The amount reserved.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// An empty reservation (no budgets configured), for tests and free streams.
    pub fn none(amount: Amount) -> Self {
        Reservation {
            amount,
            holds: Vec::new(),
        }
    }

    /// The payment was accepted.
    pub fn commit(self) {
        for (b, h) in self.holds {
            b.commit(h);
        }
    }

    /// The payment was definitely refused.
    pub fn release(self) {
        for (b, h) in self.holds {
            b.release(h);
        }
    }
}
