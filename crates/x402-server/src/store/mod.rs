//! Where sessions and payment records live: one object-safe trait,
//! [`PaymentStore`], with two implementations of the same versioned
//! compare-and-set semantics: [`MemoryStore`] (one process, the default) and
//! [`RedisStore`] (several instances of a deployment).
//!
//! The rules stay in [`x402_session::ServerEndpoint`]; a store only loads
//! what the endpoint needs and commits what it decided, all or nothing:
//!
//! - a session's state is compared and swapped by version;
//! - a payment's claim on its authorization `(payer, nonce)` and its payment
//!   identifier is set only when free (or already its own);
//! - a settlement's outcome is written only by the instance that owns it
//!   (`Lost` otherwise), except that a settlement (a fact) from a former
//!   owner still ends a record another instance took over, and replaces an
//!   unresolved answer; a former owner's refusal, unresolved answer or
//!   forget is `Lost` (the new owner's attempt may yet settle);
//! - a definitely refused record keeps its answer but frees its claims;
//! - a settling record whose owner died is listed by
//!   [`orphans`](PaymentStore::orphans) and taken over with
//!   [`adopt`](PaymentStore::adopt).
//!
//! Only the server's coordinator calls a store; request handling never
//! asks which kind it is.

mod memory;
mod redis;

use std::fmt;

use async_trait::async_trait;
use x402_session::{PaymentIn, PaymentKey, PaymentRecord, SessionState};
use x402_types::FacilitatorRequest;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// Unix seconds as the milliseconds both stores keep expiries in.
fn ms(unix_secs: u64) -> u64 {
    unix_secs.saturating_mul(1000)
}

/// A store operation failed: the store is unreachable, slow, or answered
/// something unexpected. Nothing was committed that the caller relies on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis refused or the connection failed.
    #[error("shared store: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Anything else, in words (timeouts, unreadable answers).
    #[error("shared store: {0}")]
    Other(String),
}

impl StoreError {
    /// An error described in words.
    pub(crate) fn from_text(e: impl fmt::Display) -> Self {
        StoreError::Other(e.to_string())
    }
}

/// A session's shared state and the version to compare against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned {
    /// 0 when the store has never seen the session.
    pub version: u64,
    /// The state (default when absent).
    pub state: SessionState,
    /// Whether the store holds the session.
    pub exists: bool,
}

/// A payment record as stored, with its settling owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The payment key.
    pub key: PaymentKey,
    /// The record.
    pub record: PaymentRecord,
    /// The instance settling it ("" once final).
    pub owner: String,
    /// Whether that instance is alive.
    pub owner_alive: bool,
    /// The facilitator request to settle (JSON), kept while settling so a
    /// surviving instance can take the settlement over.
    pub payload: String,
}

/// What a payment needs to know before the endpoint decides.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The session.
    pub session: Versioned,
    /// Records touching this payment: its own, and those holding its
    /// authorization or its payment identifier.
    pub records: Vec<Stored>,
    /// The authorization or identifier is held by a payload whose record is gone.
    pub orphan_claim: bool,
}

/// The answer of a compare-and-set commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Written.
    Done,
    /// Someone else changed it first: load again and decide again.
    Conflict,
    /// The record is no longer this instance's to finish (taken over).
    Lost,
}

/// A payment's claim, committed before anything is asked of the facilitator.
#[derive(Debug, Clone, Copy)]
pub struct Begin<'a> {
    /// The session.
    pub session: &'a str,
    /// The session's version when loaded.
    pub version: u64,
    /// The session afterwards (the payment in flight).
    pub state: &'a SessionState,
    /// Keep the session until this unix second.
    pub session_until: u64,
    /// The payload.
    pub key: &'a PaymentKey,
    /// Its new record (settling, owned by this instance).
    pub record: &'a PaymentRecord,
    /// The facilitator request, kept for a takeover (a shared store writes
    /// it as JSON; the in-memory one keeps it as it is).
    pub request: Option<&'a FacilitatorRequest>,
}

/// A settlement's final outcome.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    /// The session.
    pub session: &'a str,
    /// The session's version when loaded.
    pub version: u64,
    /// The session afterwards, when it changed.
    pub state: Option<&'a SessionState>,
    /// Keep the session until this unix second.
    pub session_until: u64,
    /// The payload.
    pub key: &'a PaymentKey,
    /// The record as it was while settling (its claims).
    pub before: &'a PaymentRecord,
    /// The record afterwards; `None`: forget it and free its claims.
    pub record: Option<&'a PaymentRecord>,
}

/// How [`Finish`] ends a record (the scripts' vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishKind {
    /// Nothing moved: forget the payload.
    Forget,
    /// Settled and credited.
    Credit,
    /// Unresolved: claim kept; a later settlement may replace it.
    Unresolved,
    /// Definitely refused: the answer kept, the claims freed.
    Refused,
}

impl FinishKind {
    pub(crate) fn of(record: Option<&PaymentRecord>) -> Self {
        use x402_session::PaymentStatus;
        match record.map(|r| &r.status) {
            None => FinishKind::Forget,
            Some(PaymentStatus::Credited(_)) => FinishKind::Credit,
            Some(_) if record.is_some_and(PaymentRecord::holds_claim) => FinishKind::Unresolved,
            Some(_) => FinishKind::Refused,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FinishKind::Forget => "forget",
            FinishKind::Credit => "credit",
            FinishKind::Unresolved => "unresolved",
            FinishKind::Refused => "refused",
        }
    }
}

/// Sessions and payment records shared by the instances of a deployment
/// (or held by one process). Object safe: the server holds an
/// `Arc<dyn PaymentStore>`.
///
/// ```
/// use std::sync::Arc;
/// use x402_server::store::{MemoryStore, PaymentStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn PaymentStore> = Arc::new(MemoryStore::new("a"));
/// let loaded = store.load("some-session", None).await.unwrap();
/// assert!(!loaded.session.exists);
/// # });
/// ```
#[async_trait]
pub trait PaymentStore: Send + Sync + fmt::Debug {
    /// This instance's name (the owner of the settlements it runs).
    fn instance(&self) -> &str;

    /// Loads a session and, for a payment, its record and the records
    /// holding its authorization and its payment identifier.
    async fn load(&self, session: &str, payment: Option<&PaymentIn>) -> Result<Loaded, StoreError>;

    /// Claims a payment: the session moves from `version` to `state`, the
    /// record is created owned by this instance, and the authorization (and
    /// identifier) point to it; all or nothing. `Conflict` when anything
    /// changed since loading.
    async fn begin(&self, b: Begin<'_>) -> Result<Commit, StoreError>;

    /// Finishes a settlement (see the module's rules).
    async fn finish(&self, f: Finish<'_>) -> Result<Commit, StoreError>;

    /// Takes over the settlement of a record whose owner `dead` died.
    /// `true` when this instance now owns it.
    async fn adopt(&self, key: &PaymentKey, dead: &str) -> Result<bool, StoreError>;

    /// Settling records whose owner is dead, and those this instance owns
    /// (one whose commit answer was lost has no task here): the sweep
    /// adopts the first and restarts the second unless it runs them.
    async fn orphans(&self) -> Result<Vec<Stored>, StoreError>;

    /// Counts a new connection of a session; its number (the latest holds
    /// the session), or `None` when the store does not hold the session.
    async fn connect_session(&self, session: &str) -> Result<Option<u64>, StoreError>;

    /// Tells every instance that a session changed.
    async fn notify(&self, session: &str) -> Result<(), StoreError>;

    /// Whether the store answers now (for `/readyz`); in memory, always.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes a session's state if its version is still `version` and its
    /// connection count still `connections` (it must exist), kept until `until`
    /// (unix seconds); `Conflict` otherwise. A metered session's stop is committed
    /// this way before its unused time goes back to its channel: a socket opened
    /// on the session meanwhile (its count moved) keeps the time.
    async fn commit_session(
        &self,
        session: &str,
        version: u64,
        connections: u64,
        state: &SessionState,
        until: u64,
    ) -> Result<Commit, StoreError>;

    /// Loads a `batch-settlement` channel's record (JSON, written by the server's
    /// channel path) and its version; `(0, None)` when absent.
    async fn load_channel(&self, id: &str) -> Result<(u64, Option<String>), StoreError>;

    /// Writes a channel's record if its version is still `version` (0: it must
    /// not exist yet); `Conflict` otherwise. Channel records never expire: they
    /// hold what the receiver may still claim.
    async fn commit_channel(
        &self,
        id: &str,
        version: u64,
        record: &str,
    ) -> Result<Commit, StoreError>;

    /// The ids of every channel record held (the channel manager's rounds).
    async fn channels(&self) -> Result<Vec<String>, StoreError>;

    /// Loads only a session.
    async fn load_session(&self, session: &str) -> Result<Versioned, StoreError> {
        Ok(self.load(session, None).await?.session)
    }
}
