//! Per-second billing of sessions bought through a `batch-settlement` channel.
//!
//! A voucher buys a slice of credit (the most a client is ever ahead). The session's
//! paid time runs only while its socket is open: when the socket closes, the core cuts
//! the session's paid time at that instant ([`x402_session::SessionState::stop_meter`])
//! and reports [`ServerEvent::MeterStopped`](x402_session::ServerEvent::MeterStopped).
//! Here the cut is made again on the shared session state and committed (so the time
//! cannot be both returned and kept, whichever instance the client comes back to),
//! and only then is the unused rest of the charge given back to the channel's
//! record: its charged total falls to the metered charge, so the next voucher, a
//! claim and a refund all see what was delivered, rounded once per session.
//!
//! A process dying between the two commits keeps the unused charge (at most one
//! slice, the receiver's gain, never a credit twice); the next voucher of the
//! channel is judged against the charged total as recorded.

use std::sync::Arc;

use x402_session::channel::{ChannelRecord, Meter};

use crate::channels::parse_record;
use crate::state::AppState;
use crate::store::Commit;

/// A metered session's stop, waiting for its money to go back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MeterStop {
    pub session: String,
    pub stream: String,
    pub account: String,
    pub at_ms: u64,
    /// The connection number of the socket that closed.
    pub connection: u64,
}

/// Tries of a compare-and-set before giving up (each one re-reads).
const TRIES: usize = 16;

impl AppState {
    /// Gives back the unused charge of `session`'s stop, if its socket's close was
    /// one (the core reported it). The socket's task awaits this before it answers
    /// the client's close, so a client that refunds its channel after closing sees
    /// the metered total. Only its own session's: another socket's stays for that
    /// socket's task.
    pub(crate) async fn return_unused(self: &Arc<Self>, session: &str) {
        let stops: Vec<MeterStop> = {
            let mut all = self.meter_stops.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, rest) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|s| s.session == session);
            *all = rest;
            mine
        };
        for stop in stops {
            self.return_one(&stop).await;
        }
    }

    async fn return_one(self: &Arc<Self>, stop: &MeterStop) {
        let Some(entry) = self.streams.get(&stop.stream) else {
            return;
        };
        let Some(terms) = &entry.channel else {
            return;
        };
        let slice_seconds = entry.cfg.slice_seconds;
        let meter = Meter::new(
            entry
                .terms
                .per_slice
                .atomic()
                .to_u128()
                .unwrap_or(u128::MAX),
            slice_seconds,
            terms.granularity_secs,
        );
        let Some(amount) = self.cut_session(stop, slice_seconds, &meter).await else {
            return;
        };
        if amount > 0 {
            self.return_to_channel(stop, amount).await;
        }
    }

    /// Cuts the shared session state at the stop and commits it; the amount to give
    /// back (`None`: nothing to give, or the store could not be written).
    async fn cut_session(
        self: &Arc<Self>,
        stop: &MeterStop,
        slice_seconds: u64,
        meter: &Meter,
    ) -> Option<u128> {
        let store = self.store.clone();
        for _ in 0..TRIES {
            let loaded = match store.load_session(&stop.session).await {
                Ok(l) => l,
                Err(e) => {
                    self.metrics.store_failed("load_session", &e);
                    return None;
                }
            };
            // A newer socket holds the session (a reconnect, here or elsewhere): the
            // time is in use, nothing is cut. Nor is a session paid from elsewhere.
            if !loaded.exists
                || loaded.state.connections != stop.connection
                || loaded.state.account.as_deref() != Some(stop.account.as_str())
            {
                return None;
            }
            let mut state = loaded.state;
            let unused = state.stop_meter(stop.at_ms);
            if unused == 0 {
                // Cut already (another instance), or nothing was left.
                return None;
            }
            let amount = state.meter_return(unused, slice_seconds, meter);
            let (unix, linger) =
                self.with_core(|ep, now| (ep.unix_now(now), ep.config().linger_secs));
            let until = state.retain_until(unix, linger);
            match store
                .commit_session(
                    &stop.session,
                    loaded.version,
                    stop.connection,
                    &state,
                    until,
                )
                .await
            {
                Ok(Commit::Done) => {
                    let session = stop.session.clone();
                    self.with_core(|ep, now| ep.import_session(now, &session, None, state));
                    if let Err(e) = store.notify(&stop.session).await {
                        self.metrics
                            .store_failed("announce a metered stop to other instances", &e);
                    }
                    return Some(amount);
                }
                Ok(_) => continue,
                Err(e) => {
                    self.metrics.store_failed("commit_session", &e);
                    return None;
                }
            }
        }
        None
    }

    /// Lowers the channel's charged total by `amount` (never below what was claimed).
    async fn return_to_channel(self: &Arc<Self>, stop: &MeterStop, amount: u128) {
        for _ in 0..TRIES {
            let (version, json) = match self.store.load_channel(&stop.account).await {
                Ok(x) => x,
                Err(e) => {
                    self.metrics.store_failed("load_channel", &e);
                    return;
                }
            };
            let mut rec: ChannelRecord = match parse_record(json) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(m) => {
                    tracing::error!(message = %m, "channel record");
                    return;
                }
            };
            let before = rec.returned;
            rec.return_unused(amount);
            let back = rec.returned - before;
            if back == 0 {
                return;
            }
            let Ok(json) = serde_json::to_string(&rec) else {
                return;
            };
            match self
                .store
                .commit_channel(&stop.account, version, &json)
                .await
            {
                Ok(Commit::Done) => {
                    self.metrics.channel_returned(&stop.stream, back);
                    tracing::info!(channel = %stop.account, returned = back,
                        claimable = rec.claimable(), "metered session stopped: unused charge returned");
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    self.metrics.store_failed("commit_channel", &e);
                    return;
                }
            }
        }
    }
}
