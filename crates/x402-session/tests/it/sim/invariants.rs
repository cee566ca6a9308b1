//! The invariants every simulated run must keep: budget, money, paid-time
//! delivery, ordering, and when payments are signed.

use std::time::Duration;

use x402_session::*;

use super::Sim;

impl Sim {
    /// The checks every run must pass.
    pub fn check_invariants(&self) {
        // Budget.
        let budget = self.policy.lifetime_budget().unwrap();
        assert!(
            self.server.settled <= budget.limit(),
            "the facilitator moved more than the budget"
        );
        // Money: nothing credited without a settlement; nothing settled left
        // uncredited once no settlement is under way.
        assert!(
            self.server.credited <= self.server.settled,
            "credited {} but settled {}",
            self.server.credited,
            self.server.settled
        );
        if self.server.endpoint.stats().settling == 0 {
            assert_eq!(
                self.server
                    .credited
                    .checked_add(self.server.stolen)
                    .unwrap(),
                self.server.settled,
                "a settled payment was not credited"
            );
        }
        assert!(budget.committed() <= budget.limit());
        // Never delivered after paid time + grace.
        assert_eq!(
            self.server.sent_after_paid, 0,
            "events sent after paid time plus grace"
        );
        // Events arrive in order, gaps only where reported.
        let mut unexplained = 0u64;
        for w in self.received.windows(2) {
            assert!(w[1] > w[0], "out of order or duplicate delivered: {:?}", w);
            unexplained += w[1] - w[0] - 1;
        }
        let resumed_missed: u64 = self
            .events
            .iter()
            .map(|e| {
                if let ClientEvent::Resumed { missed } = e {
                    *missed
                } else {
                    0
                }
            })
            .sum();
        assert!(
            unexplained <= self.reported_lost.max(resumed_missed),
            "{unexplained} events missing without a report"
        );
        // Keep-alive: on each socket, one ping per period, never faster.
        let mut last_ping = std::collections::HashMap::new();
        for (at, conn) in &self.pings {
            if let Some(prev) = last_ping.insert(*conn, *at) {
                assert_eq!(
                    at.duration_since(prev),
                    DEFAULT_KEEP_ALIVE,
                    "pings on {conn:?} not one period apart"
                );
            }
        }
        // Never paid while more than a margin of paid time remained (server truth, 2 s of slack for rounding).
        let margin = self.client.renew_margin();
        assert!(
            self.max_paid_ahead_at_sign <= margin + Duration::from_secs(2),
            "paid {:?} ahead with margin {margin:?}",
            self.max_paid_ahead_at_sign
        );
    }
}
