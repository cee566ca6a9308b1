//! Session storage: paid horizons, accepted payloads and nonces.
//!
//! The trait is narrow (get, insert-if-absent, nonce claims, sweep) so a shared
//! store can implement it for several instances behind a load balancer; the
//! in-memory store is the default.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use x402_session::{ConnId, ServerSession, ServerTransmit};
use x402_types::Nonce;

/// One session and the mailboxes of its sockets.
pub struct Slot {
    inner: Mutex<SlotInner>,
}

/// The lockable part of a [`Slot`].
pub struct SlotInner {
    /// The session machine.
    pub session: ServerSession,
    /// Quote expiry of the token (unix seconds).
    pub quote_exp: u64,
    outboxes: HashMap<ConnId, mpsc::Sender<ServerTransmit>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Slot {
    /// A slot for a new session.
    pub fn new(session: ServerSession, quote_exp: u64) -> Self {
        Slot {
            inner: Mutex::new(SlotInner {
                session,
                quote_exp,
                outboxes: HashMap::new(),
            }),
        }
    }

    /// Locks the slot (short critical sections only; never across an await).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlotInner {
    /// Registers a socket's mailbox.
    pub fn register(&mut self, conn: ConnId, tx: mpsc::Sender<ServerTransmit>) {
        self.outboxes.insert(conn, tx);
    }

    /// Forgets a socket.
    pub fn unregister(&mut self, conn: ConnId) {
        self.outboxes.remove(&conn);
        self.session.disconnect(conn);
    }

    /// Moves the session's transmits into the sockets' mailboxes.
    pub fn dispatch(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let conn = match &t {
                ServerTransmit::Message { conn, .. } | ServerTransmit::Close { conn, .. } => *conn,
            };
            if let Some(tx) = self.outboxes.get(&conn) {
                // A full mailbox means a stuck socket: it is dropped by its write timeout.
                let _ = tx.try_send(t);
            }
        }
    }
}

/// Storage of sessions and used nonces.
pub trait SessionStore: Send + Sync {
    /// The session of a quote, if any.
    fn get(&self, key: &str) -> Option<Arc<Slot>>;
    /// The session of a quote, created with `make` if absent; `None` when full.
    fn get_or_insert(&self, key: &str, make: &mut dyn FnMut() -> Slot) -> Option<Arc<Slot>>;
    /// Claims a nonce; `false` if it was already claimed.
    fn claim_nonce(&self, nonce: &Nonce) -> bool;
    /// Releases a claim whose payment was not taken.
    fn release_nonce(&self, nonce: &Nonce);
    /// Removes the session of `key` if it never bought anything and holds nothing
    /// (a failed first payment must not leave state behind).
    fn remove_if_unused(&self, key: &str, now: Instant);
    /// Number of sessions.
    fn len(&self) -> usize;
    /// Whether there are no sessions.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops sessions that hold nothing and are past `linger` seconds after their end.
    fn sweep(&self, now: Instant, unix: u64, linger: u64) -> usize;
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    max: usize,
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
    nonces: Mutex<HashSet<Nonce>>,
}

impl MemoryStore {
    /// Holding at most `max` sessions.
    pub fn new(max: usize) -> Self {
        MemoryStore {
            max,
            sessions: Mutex::new(HashMap::new()),
            nonces: Mutex::new(HashSet::new()),
        }
    }
}

impl SessionStore for MemoryStore {
    fn get(&self, key: &str) -> Option<Arc<Slot>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn get_or_insert(&self, key: &str, make: &mut dyn FnMut() -> Slot) -> Option<Arc<Slot>> {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(key) {
            return Some(s.clone());
        }
        if m.len() >= self.max {
            return None;
        }
        let s = Arc::new(make());
        m.insert(key.to_string(), s.clone());
        Some(s)
    }

    fn claim_nonce(&self, nonce: &Nonce) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*nonce)
    }

    fn release_nonce(&self, nonce: &Nonce) {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(nonce);
    }

    fn remove_if_unused(&self, key: &str, now: Instant) {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let unused = m.get(key).is_some_and(|slot| {
            let s = slot.lock();
            s.session.slices() == 0 && s.session.is_idle(now)
        });
        if unused {
            m.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn sweep(&self, now: Instant, unix: u64, linger: u64) -> usize {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = m.len();
        m.retain(|_, slot| {
            let s = slot.lock();
            let end = s
                .quote_exp
                .max(s.session.expires_at().saturating_add(linger));
            !(s.session.is_idle(now) && unix > end)
        });
        before - m.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use x402_session::ServerConfig;
    use x402_types::PathVersion;

    fn slot(now: Instant, unix: u64) -> Slot {
        let check: x402_session::TokenCheck = Arc::new(|_| Ok(()));
        let cfg = ServerConfig::new("s", PathVersion::V2, 10, "http://h/v2/renew/s?t=x", check);
        Slot::new(ServerSession::new(cfg, "q", now, unix), unix + 30)
    }

    #[test]
    fn sweep_drops_only_sessions_past_their_linger() {
        let (t0, u0) = (Instant::now(), 1_000_000);
        let store = MemoryStore::new(10);
        let paid = store.get_or_insert("paid", &mut || slot(t0, u0)).unwrap();
        paid.lock().session.complete_payment(t0, "k");
        store.get_or_insert("unpaid", &mut || slot(t0, u0)).unwrap();
        // Within the quote and the paid time: both stay.
        assert_eq!(store.sweep(t0 + Duration::from_secs(5), u0 + 5, 5), 0);
        // Quote expired (30 s) but paid time (10 s) + linger (5 s) passed too: both go.
        assert_eq!(store.sweep(t0 + Duration::from_secs(31), u0 + 31, 5), 2);
        assert!(store.is_empty());
    }

    #[test]
    fn unused_sessions_are_removed_and_full_stores_refuse() {
        let (t0, u0) = (Instant::now(), 1_000_000);
        let store = MemoryStore::new(1);
        store.get_or_insert("a", &mut || slot(t0, u0)).unwrap();
        assert!(store.get_or_insert("b", &mut || slot(t0, u0)).is_none());
        store.remove_if_unused("a", t0);
        assert!(store.is_empty());
        let n = x402_types::Nonce::default();
        assert!(store.claim_nonce(&n));
        assert!(!store.claim_nonce(&n));
        store.release_nonce(&n);
        assert!(store.claim_nonce(&n));
    }
}
