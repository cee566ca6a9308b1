//! The in-memory store: one process's sessions and payment records, with the
//! same versioned compare-and-set semantics as the Redis store (the store
//! tests run one suite against both). Several handles of one store
//! ([`MemoryStore::instance_handle`]) act as several instances, which is how
//! the property tests race endpoints against one store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use x402_session::{PaymentIn, PaymentKey, PaymentRecord, SessionState};
use x402_types::FacilitatorRequest;
use x402_types::{Address, Nonce};

use super::{
    Begin, Commit, Finish, FinishKind, Loaded, PaymentStore, StoreError, Stored, Versioned, ms,
};

#[derive(Debug, Clone)]
struct SessionRow {
    version: u64,
    state: SessionState,
    connections: u64,
    until_ms: u64,
}

#[derive(Debug, Clone)]
struct RecordRow {
    record: PaymentRecord,
    owner: String,
    /// Kept as it is; written as JSON only for a takeover.
    request: Option<FacilitatorRequest>,
    unresolved: bool,
    until_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, SessionRow>,
    records: HashMap<String, RecordRow>,
    /// `payer:nonce` and `i:{payment id}` -> (payment key, until).
    claims: HashMap<String, (String, u64)>,
    dead: HashSet<String>,
    ops: u64,
    /// `batch-settlement` channels: id -> (version, record JSON).
    channels: HashMap<String, (u64, String)>,
}

/// Sessions and records in this process. Cheap to clone (a shared handle).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    instance: String,
    clock: fn() -> u64,
}

/// The claims a payment holds: its authorization and its payment identifier.
fn claim_names(payer: &Address, nonce: &Nonce, payment_id: Option<&str>) -> Vec<String> {
    let mut names = vec![format!("{payer}:{nonce}")];
    names.extend(payment_id.map(|pid| format!("i:{pid}")));
    names
}

impl MemoryStore {
    /// A new, empty store; `instance` names this handle's owner.
    pub fn new(instance: impl Into<String>) -> Self {
        MemoryStore {
            inner: Arc::default(),
            instance: instance.into(),
            clock: crate::state::unix_ms_now,
        }
    }

    /// Another instance sharing this store (tests of several instances).
    pub fn instance_handle(&self, instance: impl Into<String>) -> Self {
        MemoryStore {
            inner: self.inner.clone(),
            instance: instance.into(),
            clock: self.clock,
        }
    }

    /// Marks `instance` dead: its settling records become orphans.
    pub fn kill(&self, instance: &str) {
        self.lock().dead.insert(instance.to_string());
    }

    /// How many records the store holds (tests).
    pub fn records(&self) -> usize {
        self.lock().records.len()
    }

    /// Slices credited over every session the store holds (tests).
    pub fn credited_slices(&self) -> u64 {
        self.lock().sessions.values().map(|s| s.state.slices).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alive(inner: &Inner, owner: &str) -> bool {
        !owner.is_empty() && !inner.dead.contains(owner)
    }

    /// Drops what has expired (every 256 operations; Redis does it by TTL).
    fn expire(&self, inner: &mut Inner) {
        inner.ops += 1;
        if !inner.ops.is_multiple_of(256) {
            return;
        }
        let now = (self.clock)();
        inner.sessions.retain(|_, s| s.until_ms >= now);
        inner.records.retain(|_, r| r.until_ms >= now);
        inner.claims.retain(|_, (_, until)| *until >= now);
    }

    /// Forgets these entries if they have expired, as Redis would have by
    /// now: every operation sees only live entries (the periodic sweep in
    /// [`expire`](Self::expire) only bounds memory).
    fn purge(&self, inner: &mut Inner, session: &str, record: &str, claims: &[String]) {
        let now = (self.clock)();
        if inner
            .sessions
            .get(session)
            .is_some_and(|s| s.until_ms < now)
        {
            inner.sessions.remove(session);
        }
        if inner.records.get(record).is_some_and(|r| r.until_ms < now) {
            inner.records.remove(record);
        }
        for c in claims {
            if inner.claims.get(c).is_some_and(|(_, until)| *until < now) {
                inner.claims.remove(c);
            }
        }
    }

    fn stored(inner: &Inner, key: &str) -> Option<Stored> {
        let r = inner.records.get(key)?;
        Some(Stored {
            key: PaymentKey::from_stored(key.to_string()),
            record: r.record.clone(),
            owner: r.owner.clone(),
            owner_alive: Self::alive(inner, &r.owner),
            payload: r
                .request
                .as_ref()
                .and_then(|q| serde_json::to_string(q).ok())
                .unwrap_or_default(),
        })
    }

    fn free_claims(inner: &mut Inner, key: &str, record: &PaymentRecord) {
        for n in claim_names(&record.payer, &record.nonce, record.payment_id.as_deref()) {
            if inner.claims.get(&n).is_some_and(|(k, _)| k == key) {
                inner.claims.remove(&n);
            }
        }
    }
}

#[async_trait]
impl PaymentStore for MemoryStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn load(&self, session: &str, payment: Option<&PaymentIn>) -> Result<Loaded, StoreError> {
        let mut inner = self.lock();
        let own = payment.map_or("", |p| p.key.as_str());
        let names = payment.map_or_else(Vec::new, |p| {
            claim_names(&p.payer, &p.nonce, p.payment_id.as_deref())
        });
        self.purge(&mut inner, session, own, &names);
        let mut out = Loaded::default();
        if let Some(s) = inner.sessions.get(session) {
            let mut state = s.state.clone();
            state.connections = s.connections;
            out.session = Versioned {
                version: s.version,
                state,
                exists: true,
            };
        }
        if payment.is_some() {
            out.records.extend(Self::stored(&inner, own));
            for n in names {
                let Some((k, _)) = inner.claims.get(&n).cloned() else {
                    continue;
                };
                if k == own {
                    continue;
                }
                self.purge(&mut inner, "", &k, &[]);
                match Self::stored(&inner, &k) {
                    Some(r) => out.records.push(r),
                    None => out.orphan_claim = true,
                }
            }
        }
        Ok(out)
    }

    async fn begin(&self, b: Begin<'_>) -> Result<Commit, StoreError> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let key = b.key.as_str();
        let r = b.record;
        let names = claim_names(&r.payer, &r.nonce, r.payment_id.as_deref());
        self.purge(&mut inner, b.session, key, &names);
        let version = inner.sessions.get(b.session).map_or(0, |s| s.version);
        if version != b.version || inner.records.contains_key(key) {
            return Ok(Commit::Conflict);
        }
        if names
            .iter()
            .any(|n| inner.claims.get(n).is_some_and(|(k, _)| k != key))
        {
            return Ok(Commit::Conflict);
        }
        let until = ms(b.record.expires);
        let connections = inner.sessions.get(b.session).map_or(0, |s| s.connections);
        inner.sessions.insert(
            b.session.to_string(),
            SessionRow {
                version: version + 1,
                state: b.state.clone(),
                connections,
                until_ms: ms(b.session_until),
            },
        );
        inner.records.insert(
            key.to_string(),
            RecordRow {
                record: b.record.clone(),
                owner: self.instance.clone(),
                request: b.request.cloned(),
                unresolved: false,
                until_ms: until,
            },
        );
        for n in names {
            inner.claims.insert(n, (key.to_string(), until));
        }
        Ok(Commit::Done)
    }

    async fn finish(&self, f: Finish<'_>) -> Result<Commit, StoreError> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let key = f.key.as_str();
        let kind = FinishKind::of(f.record);
        self.purge(&mut inner, f.session, key, &[]);
        let Some(row) = inner.records.get(key) else {
            return Ok(Commit::Lost);
        };
        if row.owner != self.instance {
            // Not (or no longer) ours: only a settlement may still be written
            // (see the module rules).
            if kind != FinishKind::Credit || (row.owner.is_empty() && !row.unresolved) {
                return Ok(Commit::Lost);
            }
        }
        if let Some(state) = f.state {
            let (version, connections) = inner
                .sessions
                .get(f.session)
                .map_or((0, 0), |s| (s.version, s.connections));
            if version != f.version {
                return Ok(Commit::Conflict);
            }
            inner.sessions.insert(
                f.session.to_string(),
                SessionRow {
                    version: version + 1,
                    state: state.clone(),
                    connections,
                    until_ms: ms(f.session_until),
                },
            );
        }
        match f.record {
            None => {
                inner.records.remove(key);
                Self::free_claims(&mut inner, key, f.before);
            }
            Some(record) => {
                let until = ms(record.expires);
                inner.records.insert(
                    key.to_string(),
                    RecordRow {
                        record: record.clone(),
                        owner: String::new(),
                        request: None,
                        unresolved: kind == FinishKind::Unresolved,
                        until_ms: until,
                    },
                );
                if kind == FinishKind::Refused {
                    Self::free_claims(&mut inner, key, f.before);
                } else {
                    let r = f.before;
                    for n in claim_names(&r.payer, &r.nonce, r.payment_id.as_deref()) {
                        if let Some(c) = inner.claims.get_mut(&n) {
                            c.1 = until;
                        }
                    }
                }
            }
        }
        Ok(Commit::Done)
    }

    async fn adopt(&self, key: &PaymentKey, dead: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        self.purge(&mut inner, "", key.as_str(), &[]);
        if !inner.dead.contains(dead) {
            return Ok(false);
        }
        match inner.records.get_mut(key.as_str()) {
            Some(r) if r.owner == dead => {
                r.owner = self.instance.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn orphans(&self) -> Result<Vec<Stored>, StoreError> {
        let now = (self.clock)();
        let inner = self.lock();
        let keys: Vec<&String> = inner
            .records
            .iter()
            .filter(|(_, r)| {
                r.until_ms >= now
                    && !r.owner.is_empty()
                    && (r.owner == self.instance || inner.dead.contains(&r.owner))
            })
            .map(|(k, _)| k)
            .collect();
        Ok(keys
            .into_iter()
            .filter_map(|k| Self::stored(&inner, k))
            .collect())
    }

    async fn connect_session(&self, session: &str) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        self.purge(&mut inner, session, "", &[]);
        Ok(inner.sessions.get_mut(session).map(|s| {
            s.connections += 1;
            s.connections
        }))
    }

    async fn notify(&self, _session: &str) -> Result<(), StoreError> {
        // One process: every endpoint on this store loads before it decides.
        Ok(())
    }

    async fn channels(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().channels.keys().cloned().collect())
    }

    async fn commit_session(
        &self,
        session: &str,
        version: u64,
        connections: u64,
        state: &SessionState,
        until: u64,
    ) -> Result<Commit, StoreError> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        match inner.sessions.get_mut(session) {
            Some(row) if row.version == version && row.connections == connections => {
                row.version += 1;
                row.state = state.clone();
                row.until_ms = ms(until);
                Ok(Commit::Done)
            }
            _ => Ok(Commit::Conflict),
        }
    }

    async fn load_channel(&self, id: &str) -> Result<(u64, Option<String>), StoreError> {
        Ok(self
            .lock()
            .channels
            .get(id)
            .map_or((0, None), |(v, j)| (*v, Some(j.clone()))))
    }

    async fn commit_channel(
        &self,
        id: &str,
        version: u64,
        record: &str,
    ) -> Result<Commit, StoreError> {
        let mut inner = self.lock();
        let current = inner.channels.get(id).map_or(0, |(v, _)| *v);
        if current != version {
            return Ok(Commit::Conflict);
        }
        inner
            .channels
            .insert(id.to_string(), (version + 1, record.to_string()));
        Ok(Commit::Done)
    }
}
