//! The reservation book: what a client has signed and what became of it.
//! Sans-IO: every method takes the time (unix seconds) it is called at.
//!
//! A signed payment stays reserved in the budget until its fate is known:
//! committed when the server accepts it, committed for good when money may
//! have moved, and held until its `validBefore` (plus clock skew) when it was
//! refused, because whoever holds the signature could still settle it until
//! then. A budget therefore bounds what the client has *signed*, whatever a
//! server answers.

use std::collections::HashMap;

use x402_types::Amount;

use crate::Reservation;

/// How long past its `validBefore` a refused authorization stays counted
/// (the clocks of the client, the server and the chain may disagree).
pub const HOLD_SKEW_SECS: u64 = 60;

/// Signed payments by slice, and refused ones held until they can no longer
/// be settled.
///
/// ```
/// use x402_payer::{Budget, BudgetScope, ReservationBook, SpendPolicy};
/// use x402_types::Amount;
/// # let req = x402_types::Requirement {
/// #     scheme: "exact".into(), network: "eip155:84532".parse().unwrap(),
/// #     amount: Amount::from(10u64), asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
/// #     pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(), max_timeout_seconds: 60, extra: None };
/// let policy = SpendPolicy::new(Amount::from(10u64)).with_lifetime_budget(Amount::from(30u64));
/// let budget = policy.lifetime_budget().unwrap();
/// let mut book = ReservationBook::default();
/// book.signed(1, policy.authorize(&req, None).unwrap(), 1_000);
/// book.refused(1, false, 900); // held until 1_000 + 60
/// assert_eq!(budget.reserved(), Amount::from(10u64));
/// book.release_expired(1_061);
/// assert_eq!(budget.reserved(), Amount::ZERO);
/// ```
#[derive(Debug, Default)]
pub struct ReservationBook {
    /// Signed, fate unknown: by slice, with `validBefore`.
    open: HashMap<u64, (Reservation, u64)>,
    /// Refused: released at the unix second given.
    held: Vec<(u64, Reservation)>,
}

impl ReservationBook {
    /// A payment for `slice` was signed, valid until `valid_before` (unix s).
    pub fn signed(&mut self, slice: u64, r: Reservation, valid_before: u64) {
        if let Some((old, _)) = self.open.insert(slice, (r, valid_before)) {
            // Never two signatures for one slice; if a caller does it anyway,
            // both stay counted (the safe side).
            old.commit();
        }
    }

    /// The server accepted `slice`'s payment: it is spent. Its amount, if
    /// the book held it.
    pub fn accepted(&mut self, slice: u64) -> Option<Amount> {
        self.open.remove(&slice).map(|(r, _)| {
            let a = r.amount();
            r.commit();
            a
        })
    }

    /// The server refused `slice`'s payment. If money may have moved it is
    /// spent for good; otherwise it is held until `validBefore` + skew.
    pub fn refused(&mut self, slice: u64, maybe_spent: bool, now: u64) {
        let Some((r, valid_before)) = self.open.remove(&slice) else {
            return;
        };
        if maybe_spent {
            r.commit();
        } else {
            let until = valid_before.saturating_add(HOLD_SKEW_SECS).max(now);
            self.held.push((until, r));
        }
    }

    /// Payments signed but never sent (the server could not be reached):
    /// released.
    pub fn release_unsent(&mut self) {
        for (_, (r, _)) in self.open.drain() {
            r.release();
        }
    }

    /// Releases held payments whose time has passed at `now`.
    pub fn release_expired(&mut self, now: u64) {
        let (dead, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(until, _)| *until <= now);
        self.held = live;
        for (_, r) in dead {
            r.release();
        }
    }

    /// The held payments with the unix second each may be released at, for
    /// a caller that outlives the session. Payments still open (fate
    /// unknown) stay reserved for good.
    pub fn into_held(self) -> Vec<(u64, Reservation)> {
        drop(self.open);
        self.held
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::SpendPolicy;
    use x402_types::Requirement;

    fn req(amount: u64) -> Requirement {
        Requirement {
            scheme: "exact".into(),
            network: "eip155:84532".parse().unwrap(),
            amount: Amount::from(amount),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            max_timeout_seconds: 60,
            extra: None,
        }
    }

    #[test]
    fn each_fate_moves_the_budget_as_it_should() {
        let policy =
            SpendPolicy::new(Amount::from(10u64)).with_lifetime_budget(Amount::from(100u64));
        let b = policy.lifetime_budget().unwrap();
        let mut book = ReservationBook::default();
        for slice in 1..=4 {
            book.signed(slice, policy.authorize(&req(10), None).unwrap(), 500);
        }
        assert_eq!(b.reserved(), Amount::from(40u64));
        assert_eq!(book.accepted(1), Some(Amount::from(10u64)));
        book.refused(2, true, 100); // money may have moved: spent for good
        book.refused(3, false, 100); // held until 560
        book.release_unsent(); // slice 4 never left
        assert_eq!(b.committed(), Amount::from(20u64));
        assert_eq!(b.reserved(), Amount::from(10u64));
        book.release_expired(559);
        assert_eq!(
            b.reserved(),
            Amount::from(10u64),
            "not before validBefore + skew"
        );
        book.release_expired(560);
        assert_eq!(b.reserved(), Amount::ZERO);
        assert_eq!(book.accepted(1), None, "once");
    }

    #[test]
    fn what_outlives_the_session_is_held_or_kept() {
        let policy =
            SpendPolicy::new(Amount::from(10u64)).with_lifetime_budget(Amount::from(100u64));
        let b = policy.lifetime_budget().unwrap();
        let mut book = ReservationBook::default();
        book.signed(1, policy.authorize(&req(10), None).unwrap(), 500);
        book.signed(2, policy.authorize(&req(10), None).unwrap(), 500);
        book.refused(2, false, 100);
        let held = book.into_held();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, 560);
        // Slice 1's fate is unknown: it stays reserved even after the book is gone.
        for (_, r) in held {
            r.release();
        }
        assert_eq!(b.reserved(), Amount::from(10u64));
    }
}
