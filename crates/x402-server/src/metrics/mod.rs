//! Operator metrics in the Prometheus text format (`GET /metrics`), with
//! `prometheus-client` (the Prometheus project's Rust client).

use std::sync::atomic::AtomicU64;

mod process;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A stream label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// Stream id.
    pub stream: String,
}

/// A revenue label: the stream and the asset its price is paid in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevenueLabel {
    /// Stream id.
    pub stream: String,
    /// The asset's contract address.
    pub asset: String,
    /// The network (CAIP-2, `eip155:8453`).
    pub network: String,
}

/// A refusal label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    /// Stream id.
    pub stream: String,
    /// The refusal code.
    pub code: String,
}

/// A facilitator outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `settled`, `refused`, `pending`, `unknown`, `not_attempted`.
    pub outcome: String,
}

/// The codes a payment is refused with (the `payments_refused` series
/// shown from the start).
const REFUSALS: [&str; 7] = [
    "payment_invalid",
    "validity_too_long",
    "payment_used",
    "payment_id_conflict",
    "settlement_unknown",
    "horizon_exceeded",
    "facilitator_unavailable",
];

/// Everything `/metrics` shows.
pub struct Metrics {
    registry: Registry,
    /// Sessions held (set at scrape time).
    pub sessions: Gauge,
    /// Live sockets (set at scrape time).
    pub sockets: Gauge,
    /// Settlements under way (set at scrape time).
    pub settling: Gauge,
    /// Payments credited, per stream.
    pub credited: Family<StreamLabel, Counter>,
    /// Revenue per stream in atomic units of its asset.
    pub revenue: Family<RevenueLabel, Counter<u64, AtomicU64>>,
    /// Payments refused, per stream and code.
    pub refused: Family<RefusalLabel, Counter>,
    /// Settlements whose outcome could not be established.
    pub unresolved: Counter,
    /// Events sent on sockets.
    pub events_sent: Counter,
    /// Events a client asked for but did not get (evicted or unpaid), per kind.
    pub events_dropped: Family<OutcomeLabel, Counter>,
    /// Seconds each facilitator settlement attempt took, by outcome.
    pub settlement_seconds: Family<OutcomeLabel, Histogram>,
    /// Facilitator attempts that gave no usable answer.
    pub facilitator_errors: Counter,
    /// Shared-store (Redis) operations that failed or timed out.
    pub store_errors: Counter,
    /// Charged over `batch-settlement` channels, per stream, in atomic units.
    pub channel_charged: Family<StreamLabel, Counter<u64, AtomicU64>>,
    /// Charges given back to channels by metered sessions that stopped early, per
    /// stream, in atomic units (charged minus returned: what was delivered).
    pub channel_returned: Family<StreamLabel, Counter<u64, AtomicU64>>,
    /// Claimed on chain from channels, in atomic units.
    pub channel_claimed: Counter<u64, AtomicU64>,
    /// Seconds a claim took (broadcast to receipt).
    pub channel_claim_seconds: Histogram,
    /// Channels held with a balance not yet claimed or refunded.
    pub channels_open: Gauge,
    /// Charged and not yet claimed over every channel (what a withdrawal could take).
    pub channel_unclaimed: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        process::register(&mut root);
        let registry = root.sub_registry_with_prefix("atomicstream");
        registry.register(
            "build",
            "The running build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "protocol",
                    "ws402 v1 v2; x402 v1 v2; exact, batch-settlement (v2)",
                ),
            ]),
        );
        let m = Metrics {
            sessions: Gauge::default(),
            sockets: Gauge::default(),
            settling: Gauge::default(),
            credited: Family::default(),
            revenue: Family::default(),
            refused: Family::default(),
            unresolved: Counter::default(),
            events_sent: Counter::default(),
            events_dropped: Family::default(),
            settlement_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            facilitator_errors: Counter::default(),
            store_errors: Counter::default(),
            channel_charged: Family::default(),
            channel_returned: Family::default(),
            channel_claimed: Counter::default(),
            channel_claim_seconds: Histogram::new([0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            channels_open: Gauge::default(),
            channel_unclaimed: Gauge::default(),
            registry: Registry::default(),
        };
        // Every family shows from the start, not from its first sample:
        // dashboards and alerts see 0, not "no data".
        for outcome in ["unpaid", "evicted"] {
            let _ = m.events_dropped.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for outcome in ["settled", "refused", "pending", "unknown", "not_attempted"] {
            let _ = m.settlement_seconds.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        registry.register("sessions", "Sessions held", m.sessions.clone());
        registry.register("sockets", "Live WebSocket connections", m.sockets.clone());
        registry.register("settling", "Settlements under way", m.settling.clone());
        registry.register(
            "payments_credited",
            "Payments settled and credited, per stream",
            m.credited.clone(),
        );
        registry.register(
            "revenue_atomic",
            "Revenue per stream in atomic units of its asset",
            m.revenue.clone(),
        );
        registry.register(
            "payments_refused",
            "Payments refused, per stream and code",
            m.refused.clone(),
        );
        registry.register(
            "settlements_unresolved",
            "Settlements whose outcome could not be established (reconcile them)",
            m.unresolved.clone(),
        );
        registry.register(
            "events_sent",
            "Events sent on sockets",
            m.events_sent.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not delivered: evicted from the replay buffer or published while unpaid",
            m.events_dropped.clone(),
        );
        registry.register(
            "settlement_seconds",
            "Duration of facilitator settlement attempts, by outcome",
            m.settlement_seconds.clone(),
        );
        registry.register(
            "facilitator_errors",
            "Facilitator attempts without a usable answer",
            m.facilitator_errors.clone(),
        );
        registry.register(
            "store_errors",
            "Shared-store (Redis) operations that failed or timed out",
            m.store_errors.clone(),
        );
        registry.register(
            "channel_charged_atomic",
            "Charged over batch-settlement channels (vouchers accepted), per stream, in atomic units",
            m.channel_charged.clone(),
        );
        registry.register(
            "channel_returned_atomic",
            "Charges given back to batch-settlement channels by metered sessions that stopped before their paid time ended, per stream, in atomic units",
            m.channel_returned.clone(),
        );
        registry.register(
            "channel_claimed_atomic",
            "Claimed on chain from batch-settlement channels, in atomic units",
            m.channel_claimed.clone(),
        );
        registry.register(
            "channel_claim_seconds",
            "Duration of channel claims",
            m.channel_claim_seconds.clone(),
        );
        registry.register(
            "channels_open",
            "Channels held with a balance not yet claimed or refunded",
            m.channels_open.clone(),
        );
        registry.register(
            "channel_unclaimed_atomic",
            "Charged and not yet claimed over every channel (exposure to withdrawals), atomic units",
            m.channel_unclaimed.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// Shows a stream's series from the start: credited and revenue at 0,
    /// and a refusal count for every code a payment can be refused with.
    pub fn register_stream(&self, stream: &str, asset: &str, network: &str) {
        let label = StreamLabel {
            stream: stream.into(),
        };
        let _ = self.credited.get_or_create(&label);
        let _ = self.channel_charged.get_or_create(&label);
        let _ = self.channel_returned.get_or_create(&label);
        let _ = self.revenue.get_or_create(&RevenueLabel {
            stream: stream.into(),
            asset: asset.into(),
            network: network.into(),
        });
        for code in x402_types::ErrorCode::KNOWN
            .iter()
            .filter(|c| REFUSALS.contains(&c.as_str()))
        {
            let _ = self.refused.get_or_create(&RefusalLabel {
                stream: stream.into(),
                code: code.to_string(),
            });
        }
    }

    /// A shared-store operation failed: one log line and one count, the
    /// same for every caller (`what` says which operation).
    pub fn store_failed(&self, what: &'static str, error: &dyn std::fmt::Display) {
        self.store_errors.inc();
        tracing::warn!(operation = what, error = %error, "shared store operation failed");
    }

    /// A voucher's charge was accepted into a channel.
    pub fn channel_charged(&self, stream: &str, charge: u128) {
        self.channel_charged
            .get_or_create(&StreamLabel {
                stream: stream.into(),
            })
            .inc_by(u64::try_from(charge).unwrap_or(u64::MAX));
    }

    /// A metered session gave back `amount` of its charge.
    pub fn channel_returned(&self, stream: &str, amount: u128) {
        self.channel_returned
            .get_or_create(&StreamLabel {
                stream: stream.into(),
            })
            .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
    }

    /// A claim landed.
    pub fn channel_claimed(&self, amount: u128, took: std::time::Duration) {
        self.channel_claimed
            .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
        self.channel_claim_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
