//! Spending policy: every limit, and budgets that no sequence of payments exceeds.

use std::sync::Arc;

use proptest::prelude::*;
use x402_payer::*;
use x402_types::{Amount, Network, Requirement};

fn req(amount: u64) -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(amount),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        max_timeout_seconds: 60,
        extra: None,
    }
}

#[test]
fn per_payment_cap_says_by_how_much() {
    let p = SpendPolicy::new(Amount::from(10_000));
    assert!(p.check(&req(10_000)).is_ok());
    assert_eq!(
        p.check(&req(10_001)),
        Err(PolicyError::PerPaymentCap {
            limit: Amount::from(10_000),
            requested: Amount::from(10_001),
            excess: Amount::from(1)
        })
    );
}

#[test]
fn allow_lists_and_timeout_and_veto() {
    let p = SpendPolicy::new(Amount::from(1_000_000)).allow_networks([Network::BASE]);
    assert!(matches!(
        p.check(&req(1)),
        Err(PolicyError::NetworkNotAllowed { .. })
    ));

    let p = SpendPolicy::new(Amount::from(1_000_000));
    let mut r = req(1);
    r.asset = "0x0000000000000000000000000000000000000001".into();
    assert!(matches!(
        p.check(&r),
        Err(PolicyError::AssetNotAllowed { .. })
    ));
    assert!(p.clone().allow_any_asset().check(&r).is_ok());

    let p = SpendPolicy::new(Amount::from(1_000_000)).allow_pay_to([
        "0x0000000000000000000000000000000000000002"
            .parse()
            .unwrap(),
    ]);
    assert!(matches!(
        p.check(&req(1)),
        Err(PolicyError::PayToNotAllowed { .. })
    ));
    let p = SpendPolicy::new(Amount::from(1_000_000)).allow_pay_to([
        "0x209693bc6afc0c5328ba36faf03c514ef312287c"
            .parse()
            .unwrap(),
    ]);
    assert!(p.check(&req(1)).is_ok());

    let p = SpendPolicy::new(Amount::from(1_000_000)).max_timeout_seconds(30);
    assert_eq!(
        p.check(&req(1)),
        Err(PolicyError::TimeoutTooLong {
            limit: 30,
            requested: 60,
            excess: 30
        })
    );

    let p = SpendPolicy::new(Amount::from(1_000_000)).with_approver(|r| {
        if r.amount > Amount::from(5) {
            Err("too rich for me".into())
        } else {
            Ok(())
        }
    });
    assert!(p.check(&req(5)).is_ok());
    assert_eq!(
        p.check(&req(6)),
        Err(PolicyError::Vetoed {
            reason: "too rich for me".into()
        })
    );
}

#[test]
fn refusal_reserves_nothing() {
    let p = SpendPolicy::new(Amount::from(100)).with_lifetime_budget(Amount::from(250));
    let session = Arc::new(Budget::new(BudgetScope::Session, Amount::from(150)));
    let a = p.authorize(&req(100), Some(&session)).unwrap();
    // Session budget refuses; the lifetime reservation made on the way is undone.
    let e = p.authorize(&req(100), Some(&session)).unwrap_err();
    assert!(
        matches!(e, PolicyError::BudgetExceeded { scope: BudgetScope::Session, excess, .. } if excess == Amount::from(50))
    );
    assert_eq!(p.lifetime_budget().unwrap().reserved(), Amount::from(100));
    // Cap refusal touches no budget.
    assert!(p.authorize(&req(101), Some(&session)).is_err());
    assert_eq!(session.reserved(), Amount::from(100));
    a.commit();
    assert_eq!(session.committed(), Amount::from(100));
    assert_eq!(session.reserved(), Amount::ZERO);
    let b = p.authorize(&req(50), Some(&session)).unwrap();
    b.release();
    assert_eq!(session.available(), Amount::from(50));
    assert_eq!(p.lifetime_budget().unwrap().available(), Amount::from(150));
}

#[derive(Debug, Clone)]
enum Op {
    Pay(u64),
    Accept,
    Refuse,
}

proptest! {
    #[test]
    fn budgets_are_never_exceeded(limit in 0u64..1_000, ops in proptest::collection::vec(
        prop_oneof![(0u64..300).prop_map(Op::Pay), Just(Op::Accept), Just(Op::Refuse)], 0..60)) {
        let p = SpendPolicy::new(Amount::from(200)).with_lifetime_budget(Amount::from(limit));
        let session = Arc::new(Budget::new(BudgetScope::Session, Amount::from(limit / 2 + 100)));
        let mut pending: Vec<Reservation> = Vec::new();
        let mut accepted = Amount::ZERO;
        for op in ops {
            match op {
                Op::Pay(a) => {
                    if let Ok(r) = p.authorize(&req(a), Some(&session)) {
                        pending.push(r);
                    }
                }
                Op::Accept => if let Some(r) = pending.pop() {
                    accepted = accepted.checked_add(r.amount()).unwrap();
                    r.commit();
                },
                Op::Refuse => if let Some(r) = pending.pop() { r.release(); },
            }
            let life = p.lifetime_budget().unwrap();
            let used = life.committed().checked_add(life.reserved()).unwrap();
            prop_assert!(used <= Amount::from(limit));
            prop_assert!(session.committed().checked_add(session.reserved()).unwrap() <= session.limit());
            prop_assert_eq!(life.committed(), accepted);
        }
    }

    #[test]
    fn shared_budget_holds_across_threads(limit in 0u64..500, amounts in proptest::collection::vec(1u64..50, 1..40)) {
        let budget = Arc::new(Budget::new(BudgetScope::Lifetime, Amount::from(limit)));
        let handles: Vec<_> = amounts.into_iter().map(|a| {
            let b = budget.clone();
            std::thread::spawn(move || b.reserve(Amount::from(a)).map(|h| b.commit(h)).is_ok())
        }).collect();
        for h in handles { let _ = h.join(); }
        prop_assert!(budget.committed() <= Amount::from(limit));
    }
}
