//! The endpoint's inputs, outputs and rules: refusals, payments and quotes,
//! decisions and settlement outcomes, socket outputs and operator events.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use x402_types::{
    Address, Amount, CloseCode, ErrorCode, FacilitatorRequest, Hello, Nonce, PathVersion,
    PaymentPayload, RenewResponse, ServerMessage,
};

use super::ConnId;

/// A definite answer refusing a request, in the shared vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The code (its [`ErrorCode::status`] is the HTTP status).
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// Identifies one payload for idempotency: its authorization nonce and signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentKey(String);

impl PaymentKey {
    /// The key as text (a store's key material).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from a store.
    pub fn from_stored(s: String) -> Self {
        PaymentKey(s)
    }
}

/// Identifies one settlement the driver runs for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SettleId(pub u64);

/// The x402 `exact` scheme (EIP-3009 on EVM).
pub const EXACT: &str = "exact";

/// What the endpoint needs of a payment (read from an `exact` EVM payload).
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentIn {
    /// The x402 scheme that pays (`exact`; the record, the decision and the
    /// settlement carry it, so another scheme plugs in beside it).
    pub scheme: String,
    /// Idempotency key of the payload.
    pub key: PaymentKey,
    /// The authorizer (`from`).
    pub payer: Address,
    /// The authorization nonce.
    pub nonce: Nonce,
    /// The amount authorized.
    pub amount: Amount,
    /// `validBefore` (unix seconds, saturated).
    pub valid_before: u64,
    /// The x402 `payment-identifier`, if the client sent one.
    pub payment_id: Option<String>,
    /// The account the payment draws on when it is not a one-off transfer: a
    /// `batch-settlement` channel id. A session paid from an account is
    /// *metered*: its paid time stops when its socket closes, and the unused
    /// rest goes back to the account ([`ServerEvent::MeterStopped`]).
    pub account: Option<String>,
    /// What to send the facilitator. The endpoint's record keeps it until
    /// the settlement is final, and every [`SettleJob`] carries it.
    pub request: Option<FacilitatorRequest>,
}

impl PaymentIn {
    /// Reads a payload; only the `exact` EVM scheme is sold.
    pub fn from_payload(p: &PaymentPayload) -> Result<Self, Refusal> {
        let evm = p.exact_evm().ok_or_else(|| {
            Refusal::new(
                ErrorCode::PaymentInvalid,
                "only the exact EVM scheme is accepted",
            )
        })?;
        let payment_id = p
            .payment_identifier()
            .map_err(|e| Refusal::new(ErrorCode::PaymentInvalid, e.to_string()))?
            .map(str::to_string);
        let a = &evm.authorization;
        Ok(PaymentIn {
            scheme: EXACT.into(),
            // Every signed field and the signature: a copy that changes any
            // of them is another payload with its own answer.
            key: PaymentKey(format!(
                "{}:{}:{}:{}:{}:{}:{}",
                a.nonce, evm.signature, a.from, a.to, a.value, a.valid_after, a.valid_before
            )),
            payer: a.from,
            nonce: a.nonce,
            amount: a.value,
            valid_before: a.valid_before.to_u64().unwrap_or(u64::MAX),
            payment_id,
            account: None,
            request: None,
        })
    }

    /// The same payment with the facilitator request to settle it.
    #[must_use]
    pub fn with_request(mut self, request: FacilitatorRequest) -> Self {
        self.request = Some(request);
        self
    }
}

/// A verified token's claims: the quote a session is bought under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Quote id; it is also the session id.
    pub id: String,
    /// Stream.
    pub stream_id: String,
    /// Path version.
    pub version: PathVersion,
    /// Unpaid quote expiry (unix seconds).
    pub expires: u64,
    /// Seconds one payment buys.
    pub slice_seconds: u64,
    /// The requirement's `maxTimeoutSeconds`: no authorization may stay
    /// valid longer than this (plus clock skew) from the moment it arrives.
    pub max_timeout_seconds: u64,
    /// Renew URL of the session (for `hello`).
    pub renew_url: String,
}

/// The endpoint's rules.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Most sessions held at once.
    pub max_sessions: usize,
    /// Most slices that may be paid ahead of now.
    pub horizon_slices: u64,
    /// Wait this long after expiry for an in-flight renewal before closing 4402.
    pub grace: Duration,
    /// Send `expiring` at most this long before expiry (and at most a third of a slice).
    pub expiring_lead: Duration,
    /// Allowed clock skew: records outlive `validBefore` by this much.
    pub skew_secs: u64,
    /// Sessions are kept this long after their paid time ends.
    pub linger_secs: u64,
    /// `Retry-After` of a pending answer (seconds).
    pub pending_retry_after: u64,
    /// Delay before asking the facilitator again about a pending or unknown settlement.
    pub settle_retry: Duration,
    /// How often idle sessions and expired records are swept.
    pub sweep_interval: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_sessions: 100_000,
            horizon_slices: 2,
            grace: Duration::from_secs(5),
            expiring_lead: Duration::from_secs(10),
            skew_secs: 60,
            linger_secs: 600,
            pending_retry_after: 2,
            settle_retry: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// A credited payment's answer, recorded so that a retry gets it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The renew answer.
    pub response: RenewResponse,
    /// The x402 settlement response header value, if the facilitator gave one.
    pub settlement: Option<String>,
}

/// What [`ServerEndpoint::handle_payment`] decided.
///
/// [`ServerEndpoint::handle_payment`]: super::ServerEndpoint::handle_payment
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentDecision {
    /// A new payment: once the decision is committed, start it with
    /// [`ServerEndpoint::start_settlement`]; run each attempt
    /// [`ServerEndpoint::poll_settle`] gives (verify, then settle) and report
    /// with [`ServerEndpoint::handle_settled`].
    ///
    /// [`ServerEndpoint::start_settlement`]: super::ServerEndpoint::start_settlement
    /// [`ServerEndpoint::poll_settle`]: super::ServerEndpoint::poll_settle
    /// [`ServerEndpoint::handle_settled`]: super::ServerEndpoint::handle_settled
    Settle(SettleId),
    /// Its settlement is under way: wait for it, or answer 202
    /// `payment_pending` with `Retry-After: retry_after`.
    Pending {
        /// The settlement.
        id: SettleId,
        /// Seconds.
        retry_after: u64,
    },
    /// Settled and credited (now or before): the recorded answer.
    Credited(Credit),
    /// Refused.
    Refused(Refusal),
}

/// The facilitator's answer about a settlement, as the driver read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// The payload's signature does not verify: it can never have moved
    /// money, whatever attempt this is (a junk copy). Definite.
    Forged {
        /// Why.
        message: String,
    },
    /// The facilitator could not be asked or verification could not run:
    /// nothing can have moved (only valid on a first attempt).
    NotAttempted {
        /// Why.
        reason: String,
    },
    /// A definite refusal.
    Refused {
        /// Usually [`ErrorCode::PaymentInvalid`] or [`ErrorCode::PaymentUsed`].
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// Settled.
    Settled {
        /// The x402 settlement response header value.
        header: Option<String>,
        /// The payer the facilitator reports, if any.
        payer: Option<Address>,
        /// The amount the facilitator reports, if any.
        amount: Option<Amount>,
    },
    /// Broadcast but not final (`settlement_pending`): settle again with the same payload.
    Pending,
    /// The answer was lost (timeout, garbage, connection cut after sending):
    /// money may have moved. Settle again with the same payload.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// A settlement the driver must run: every attempt, the first included,
/// leaves the endpoint through [`ServerEndpoint::poll_settle`].
///
/// [`ServerEndpoint::poll_settle`]: super::ServerEndpoint::poll_settle
#[derive(Debug, Clone, PartialEq)]
pub struct SettleJob {
    /// The settlement.
    pub id: SettleId,
    /// The scheme whose settlement this is.
    pub scheme: String,
    /// 0 for the first attempt (verify, then settle); later attempts settle the same payload again.
    pub attempt: u32,
    /// The session it pays for.
    pub session: String,
    /// The session's stream.
    pub stream: String,
    /// What to send the facilitator (`None` when the payment came without one).
    pub request: Option<FacilitatorRequest>,
}

/// Something the driver must send on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerTransmit {
    /// Send a message.
    Message {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: ServerMessage,
    },
    /// Events before `seq` were published while the session was unpaid: skip
    /// them and tell the client how many (`events_skipped`).
    Skip {
        /// Connection.
        conn: ConnId,
        /// First paid sequence number.
        seq: u64,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
        /// Code.
        code: CloseCode,
    },
}

/// Something operators want to know (logs, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A settled payment was credited to a session.
    Credited {
        /// Session.
        session: String,
        /// Its stream.
        stream: String,
        /// Amount.
        amount: Amount,
        /// Slices bought by the session so far.
        slices: u64,
    },
    /// A payment was definitely refused.
    Refused {
        /// Session.
        session: String,
        /// Its stream.
        stream: String,
        /// Code.
        code: ErrorCode,
    },
    /// A metered session's socket closed with paid time left: its paid time
    /// is to end here, and the unused rest go back to the account it was paid
    /// from. The driver makes the cut on the shared state
    /// ([`SessionState::stop_meter`](super::SessionState::stop_meter)) when no
    /// newer connection holds the session, commits it, imports it, and then
    /// gives back [`SessionState::meter_return`](super::SessionState::meter_return).
    MeterStopped {
        /// Session.
        session: String,
        /// Its stream.
        stream: String,
        /// The account (channel id).
        account: String,
        /// Paid milliseconds left at the close (what the cut would give back).
        unused_ms: u64,
        /// When the socket closed (unix milliseconds): a driver sharing a
        /// store makes the same cut ([`SessionState::stop_meter`]) on the
        /// shared state and commits it before the money goes back, so that
        /// time is never both returned and kept.
        ///
        /// [`SessionState::stop_meter`]: super::SessionState::stop_meter
        at_ms: u64,
        /// The session's connection number the closed socket held: a store whose
        /// count is higher has a newer socket on the session, and nothing is cut.
        connection: u64,
    },
    /// A settlement's outcome could not be established: money may have moved,
    /// nothing was credited. An operator must reconcile it.
    Unresolved {
        /// Session.
        session: String,
        /// Payer.
        payer: Address,
        /// Nonce.
        nonce: Nonce,
        /// Why.
        reason: String,
    },
}

/// Where a stream's replay buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    /// Sequence number the next event will get.
    pub next_seq: u64,
    /// Oldest sequence number still in the replay buffer.
    pub oldest_seq: u64,
}

/// A connection that was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The first message.
    pub hello: Hello,
    /// Deliver from this sequence number.
    pub start: u64,
    /// Events the client asked for that the replay buffer no longer holds (`events_lost`).
    pub lost: u64,
    /// Events the client asked for that were published while it had not paid (`events_skipped`).
    pub skipped: u64,
}

/// Counts, for health checks, tests and the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Sessions held.
    pub sessions: usize,
    /// Live connections.
    pub connections: usize,
    /// Payment records held.
    pub records: usize,
    /// Nonce claims held.
    pub claims: usize,
    /// Settlements in flight.
    pub settling: usize,
}
