//! Several instances on one store: the background tasks that keep an
//! instance in step with the others.
//!
//! - a heartbeat (`alive:{instance}`), so others can take over the
//!   settlements of an instance that died;
//! - change notices: a session renewed or reconnected elsewhere reaches the
//!   socket held here (`renewed`, or a 4409 close);
//! - events: each stream's source runs on one instance at a time (a lease,
//!   taken over when its holder dies) and appends to a Redis Stream with the
//!   sequence number as entry id; every instance reads that stream into its
//!   local hub, so any instance delivers live events and resumes from any
//!   sequence the stream still holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde_json::value::RawValue;

use crate::config::SourceConfig;
use crate::hub::{Hub, Sink};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::RedisStore;

/// How long a heartbeat or a source lease lasts without renewal.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// How often they are renewed.
const BEAT: Duration = Duration::from_secs(1);
/// How long one `XREAD` of the event reader blocks in Redis when nothing new
/// arrives.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Keeps this instance marked alive.
pub(crate) async fn heartbeat(store: RedisStore, metrics: Arc<Metrics>) {
    loop {
        if let Err(e) = store.heartbeat(LEASE).await {
            metrics.store_failed("heartbeat", &e);
        }
        tokio::time::sleep(BEAT).await;
    }
}

/// Applies other instances' changes to the sessions whose sockets are here.
pub(crate) async fn notices(state: Arc<AppState>, store: RedisStore) {
    loop {
        match store.subscribe().await {
            Ok(mut ps) => {
                let mut msgs = ps.on_message();
                while let Some(m) = msgs.next().await {
                    let Ok(session) = m.get_payload::<String>() else {
                        continue;
                    };
                    if state.has_connection(&session) {
                        state.refresh(&session).await;
                    }
                }
                tracing::warn!("change notices interrupted; subscribing again");
            }
            Err(e) => state
                .metrics
                .store_failed("subscribe to change notices", &e),
        }
        tokio::time::sleep(BEAT).await;
    }
}

fn seq_of(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

fn frame_of(
    map: &mut std::collections::HashMap<String, redis::Value>,
) -> Option<axum::extract::ws::Utf8Bytes> {
    match map.remove("f")? {
        redis::Value::BulkString(b) => axum::extract::ws::Utf8Bytes::try_from(b).ok(),
        _ => None,
    }
}

/// Pushes a stream entry's frame into the hub; returns its id (where the
/// next read starts).
fn push_entry(hub: &Hub, mut e: redis::streams::StreamId) -> String {
    if let (Some(seq), Some(text)) = (seq_of(&e.id), frame_of(&mut e.map)) {
        hub.push(seq, text);
    }
    e.id
}

/// Why a stream is down while its shared log cannot be read.
const LOG_UNREADABLE: &str = "the shared event log cannot be read";

/// Reads a stream's events from the store into this instance's hub.
pub(crate) async fn read_events(
    store: RedisStore,
    hub: Arc<Hub>,
    stream: String,
    cap: usize,
    metrics: Arc<Metrics>,
) {
    let key = store.events_key(&stream);
    loop {
        if let Err(e) = read_events_once(&store, &hub, &key, cap).await {
            metrics.store_failed("read events", &e);
            hub.source_down(format!("{LOG_UNREADABLE}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_events_once(
    store: &RedisStore,
    hub: &Hub,
    key: &str,
    cap: usize,
) -> Result<(), crate::store::StoreError> {
    let mut conn = store.dedicated(READ_BLOCK).await?;
    // What the stream holds newer than this hub: the replay buffer.
    let recent: StreamRangeReply = conn.xrevrange_count(key, "+", "-", cap).await?;
    hub.source_recovered(LOG_UNREADABLE);
    let mut last = "0-0".to_string();
    for e in recent.ids.into_iter().rev() {
        last = push_entry(hub, e);
    }
    let block_ms = usize::try_from(READ_BLOCK.as_millis()).unwrap_or(1000);
    let opts = StreamReadOptions::default().block(block_ms).count(1024);
    loop {
        let reply: Option<StreamReadReply> = conn.xread_options(&[key], &[&last], &opts).await?;
        for k in reply.map(|r| r.keys).unwrap_or_default() {
            for e in k.ids {
                last = push_entry(hub, e);
            }
        }
    }
}

/// Runs a stream's source while this instance holds its lease.
pub(crate) async fn lead(
    store: RedisStore,
    hub: std::sync::Weak<Hub>,
    stream: String,
    source: SourceConfig,
    cap: usize,
    metrics: Arc<Metrics>,
) {
    if matches!(source, SourceConfig::Api) {
        return;
    }
    loop {
        match store.lease(&stream, LEASE).await {
            Ok(true) => {
                tracing::info!(stream, "running the stream's source here");
                let leading = Arc::new(AtomicBool::new(true));
                let keeper =
                    tokio::spawn(keep_lease(store.clone(), stream.clone(), leading.clone()));
                let sink = StoreSink {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    stream: stream.clone(),
                    next: None,
                    cap,
                    leading: leading.clone(),
                };
                let end = crate::run_source(sink, source.clone()).await;
                if let crate::hub::SourceEnd::Failed(reason) = end {
                    // This instance's buyers learn of it (the other instances
                    // see the shared log go quiet: docs/server.md). The lease
                    // is kept, so no instance runs a failed or finished
                    // source again, until this one stops.
                    if let Some(hub) = hub.upgrade() {
                        hub.source_down(reason);
                    }
                    let _ = keeper.await;
                    return;
                }
                leading.store(false, Ordering::Relaxed);
                keeper.abort();
                tracing::info!(stream, "no longer running the stream's source");
            }
            Ok(false) => {}
            Err(e) => metrics.store_failed("take the source lease", &e),
        }
        tokio::time::sleep(BEAT).await;
    }
}

async fn keep_lease(store: RedisStore, stream: String, leading: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(BEAT).await;
        if !matches!(store.lease(&stream, LEASE).await, Ok(true)) {
            leading.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// Appends a leading source's events to the stream in the store.
struct StoreSink {
    metrics: Arc<Metrics>,
    store: RedisStore,
    stream: String,
    /// The next sequence number, once known: an append that finds another
    /// number means another instance published meanwhile (it leads now).
    next: Option<u64>,
    cap: usize,
    leading: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Sink for StoreSink {
    async fn publish(&mut self, data: Box<RawValue>) -> bool {
        if !self.leading.load(Ordering::Relaxed) {
            return false;
        }
        match self
            .store
            .append(&self.stream, self.cap, data, self.next)
            .await
        {
            Ok(Some(seq)) => {
                self.next = Some(seq + 1);
                true
            }
            Ok(None) => {
                tracing::warn!(stream = %self.stream, "another instance published: giving up the source");
                false
            }
            Err(e) => {
                self.metrics.store_failed("append an event", &e);
                tracing::warn!(stream = %self.stream, "event not appended; giving up the source");
                false
            }
        }
    }
}
