//! Streams: sequence counter, bounded replay buffer, live fan-out, and event sources.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::broadcast;
use x402_types::{Event, ServerMessage};

/// One published event, already encoded as its socket frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number.
    pub seq: u64,
    /// The `event` message JSON; shared (reference-counted) by every socket
    /// that sends it, never copied per subscriber.
    pub text: Utf8Bytes,
}

struct Buffer {
    next_seq: u64,
    frames: VecDeque<Frame>,
    cap: usize,
}

/// Whether a stream's source delivers events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Running (or not known to have failed: an embedding program's publisher).
    Live,
    /// Failed or finished; the stream is not sold until it publishes again.
    Down(String),
}

/// A stream's events: the replay buffer, the live channel and the source's state.
pub struct Hub {
    buf: Mutex<Buffer>,
    /// The seq after the last frame sent live (read without the lock).
    sent: std::sync::atomic::AtomicU64,
    live: broadcast::Sender<Frame>,
    source: tokio::sync::watch::Sender<SourceState>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("next_seq", &self.next_seq())
            .finish_non_exhaustive()
    }
}

/// Where a connection must start reading.
#[derive(Debug, Clone)]
pub struct Catchup {
    /// Buffered frames from the requested point.
    pub frames: Vec<Frame>,
    /// Events that were requested but already evicted.
    pub lost: u64,
    /// The seq after the last returned frame.
    pub next: u64,
}

impl Hub {
    /// A hub with a replay buffer of `cap` events and a live channel of `queue` events.
    pub fn new(cap: usize, queue: usize) -> Arc<Hub> {
        let (live, _) = broadcast::channel(queue.max(1));
        Arc::new(Hub {
            buf: Mutex::new(Buffer {
                next_seq: 0,
                frames: VecDeque::with_capacity(cap),
                cap: cap.max(1),
            }),
            sent: std::sync::atomic::AtomicU64::new(0),
            live,
            source: tokio::sync::watch::channel(SourceState::Live).0,
        })
    }

    /// The source's state.
    pub fn source_state(&self) -> SourceState {
        self.source.borrow().clone()
    }

    /// Why the stream `id` of this hub is not sold now, if its source failed.
    pub(crate) fn not_sold(&self, id: &str) -> Option<String> {
        match &*self.source.borrow() {
            SourceState::Live => None,
            SourceState::Down(reason) => Some(format!("stream {id} is not sold now: {reason}")),
        }
    }

    /// Watches the source's state (sockets tell their buyer when it fails).
    pub fn watch_source(&self) -> tokio::sync::watch::Receiver<SourceState> {
        self.source.subscribe()
    }

    /// Marks the source failed: new sales are refused (503
    /// `source_unavailable`) and open sockets are told, until it publishes again.
    pub fn source_down(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.source.send_if_modified(|s| {
            let changed = *s != SourceState::Down(reason.clone());
            if changed {
                tracing::error!(reason, "stream source down: not selling it");
                *s = SourceState::Down(reason.clone());
            }
            changed
        });
    }

    /// Clears a failure whose reason starts with `prefix` (the failed part
    /// works again, though no event has been published yet).
    pub(crate) fn source_recovered(&self, prefix: &str) {
        self.source.send_if_modified(|s| match s {
            SourceState::Down(r) if r.starts_with(prefix) => {
                *s = SourceState::Live;
                true
            }
            _ => false,
        });
    }

    fn source_live(&self) {
        // Cheap on the hot path: a read, and a write only on a change.
        if *self.source.borrow() != SourceState::Live {
            self.source.send_if_modified(|s| {
                let changed = *s != SourceState::Live;
                *s = SourceState::Live;
                changed
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes an event; returns its seq.
    pub fn publish(&self, data: &Value) -> u64 {
        let raw = serde_json::value::to_raw_value(data).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".into())
                .unwrap_or_else(|_| unreachable!())
        });
        self.publish_raw(raw)
    }

    /// Publishes pre-encoded JSON.
    pub fn publish_raw(&self, data: Box<serde_json::value::RawValue>) -> u64 {
        let mut b = self.lock();
        let seq = b.next_seq;
        b.next_seq += 1;
        let frame = Frame {
            seq,
            text: event_text(seq, data).into(),
        };
        self.append(b, frame);
        seq
    }

    /// Takes a frame published elsewhere (another instance, through the
    /// shared store) with its own sequence number; older ones are ignored.
    pub fn push(&self, seq: u64, text: Utf8Bytes) {
        let mut b = self.lock();
        if seq < b.next_seq {
            return;
        }
        b.next_seq = seq + 1;
        self.append(b, Frame { seq, text });
    }

    fn append(&self, mut b: std::sync::MutexGuard<'_, Buffer>, frame: Frame) {
        self.source_live();
        if b.frames.len() >= b.cap {
            b.frames.pop_front();
        }
        b.frames.push_back(frame.clone());
        let next = frame.seq + 1;
        // Sent under the lock so live order equals seq order.
        let _ = self.live.send(frame);
        self.sent.store(next, std::sync::atomic::Ordering::Release);
    }

    /// The seq after the last frame sent on the live channel, read without
    /// the lock: a socket that just received the frame before it has nothing
    /// more to take (and skips asking the channel, whose tail is one lock
    /// shared by every subscriber).
    pub(crate) fn sent_live(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Where the stream stands: next sequence number and oldest buffered one.
    pub fn head(&self) -> x402_session::StreamHead {
        let b = self.lock();
        x402_session::StreamHead {
            next_seq: b.next_seq,
            oldest_seq: b.frames.front().map_or(b.next_seq, |f| f.seq),
        }
    }

    /// Subscribes to live frames.
    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.live.subscribe()
    }

    /// Buffered frames from `from` on, and how many before them were evicted.
    pub fn catch_up(&self, from: u64) -> Catchup {
        let b = self.lock();
        let oldest = b.frames.front().map_or(b.next_seq, |f| f.seq);
        let start = from.min(b.next_seq);
        let lost = oldest.saturating_sub(start);
        let frames: Vec<Frame> = b
            .frames
            .iter()
            .filter(|f| f.seq >= start)
            .cloned()
            .collect();
        Catchup {
            frames,
            lost,
            next: b.next_seq,
        }
    }
}

/// The `event` frame of `data` with sequence number `seq`, stamped now.
pub(crate) fn event_text(seq: u64, data: Box<serde_json::value::RawValue>) -> String {
    let ts = crate::state::unix_ms_now();
    ServerMessage::Event(Event {
        seq,
        data: data.into(),
        ts: Some(ts),
    })
    .to_json()
}

/// Where a source's events go: this instance's hub, or the shared store.
#[async_trait::async_trait]
pub(crate) trait Sink: Send {
    /// Publishes one event; `false` ends the source (the hub is gone, or
    /// this instance no longer leads the stream).
    async fn publish(&mut self, data: Box<serde_json::value::RawValue>) -> bool;
}

/// A source publishing into this instance's hub.
pub(crate) struct HubSink(pub(crate) std::sync::Weak<Hub>);

#[async_trait::async_trait]
impl Sink for HubSink {
    async fn publish(&mut self, data: Box<serde_json::value::RawValue>) -> bool {
        match self.0.upgrade() {
            Some(h) => {
                h.publish_raw(data);
                true
            }
            None => false,
        }
    }
}

/// Publishes events into a stream from the embedding program.
///
/// ```
/// # let hub = x402_server::Hub::new(16, 16);
/// let publisher = x402_server::Publisher::new(hub);
/// let seq = publisher.publish(&serde_json::json!({"price": 101.5}));
/// assert_eq!(seq, 0);
/// ```
#[derive(Debug, Clone)]
pub struct Publisher(Arc<Hub>);

impl Publisher {
    /// For a hub.
    pub fn new(hub: Arc<Hub>) -> Self {
        Publisher(hub)
    }

    /// Publishes one JSON event; returns its seq.
    pub fn publish(&self, data: &Value) -> u64 {
        self.0.publish(data)
    }
}

/// Deterministic synthetic market data (random walk), alternating trades and quotes.
#[derive(Debug, Clone)]
pub struct Synthetic {
    symbol: String,
    price: f64,
    state: u64,
    n: u64,
    pad: String,
}

impl Synthetic {
    /// For a symbol, with a seed and padding bytes.
    pub fn new(symbol: &str, seed: u64, pad: usize) -> Self {
        Synthetic {
            symbol: symbol.into(),
            price: 100.0,
            state: seed,
            n: 0,
            pad: "x".repeat(pad),
        }
    }

    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next event.
    pub fn next_event(&mut self) -> Value {
        self.n += 1;
        let step = (self.next_f64() - 0.5) * 0.002;
        self.price = (self.price * (1.0 + step)).max(0.01);
        let px = (self.price * 100.0).round() / 100.0;
        let mut v = if self.n.is_multiple_of(2) {
            let spread = 0.01 + (self.next_f64() * 0.05 * 100.0).round() / 100.0;
            serde_json::json!({"type": "quote", "symbol": self.symbol, "bid": px, "ask": ((px + spread) * 100.0).round() / 100.0})
        } else {
            let size = ((self.next_f64() * 2.0) * 10_000.0).round() / 10_000.0;
            let side = if self.next_f64() < 0.5 { "buy" } else { "sell" };
            serde_json::json!({"type": "trade", "symbol": self.symbol, "price": px, "size": size, "side": side})
        };
        if !self.pad.is_empty()
            && let Value::Object(m) = &mut v
        {
            m.insert("pad".into(), Value::String(self.pad.clone()));
        }
        v
    }
}

fn interval(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.clamp(0.001, 100_000.0))
}

/// How a source stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceEnd {
    /// Its sink refused (the hub is gone, or another instance leads).
    SinkClosed,
    /// It failed or ran out of events: the stream is not sold any more.
    Failed(String),
}

/// Runs a synthetic source until its sink refuses.
pub(crate) async fn run_synthetic(
    mut sink: impl Sink,
    symbol: String,
    rate: f64,
    pad: usize,
) -> SourceEnd {
    let mut source = Synthetic::new(&symbol, 402, pad);
    let mut tick = tokio::time::interval(interval(rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Ok(raw) = serde_json::value::to_raw_value(&source.next_event()) else {
            continue;
        };
        if !sink.publish(raw).await {
            return SourceEnd::SinkClosed;
        }
    }
}

/// Runs a JSON Lines replay until the file ends (or forever when looping).
pub(crate) async fn run_replay(
    mut sink: impl Sink,
    path: std::path::PathBuf,
    rate: f64,
    looping: bool,
) -> SourceEnd {
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) => {
            return SourceEnd::Failed(format!(
                "the replay file {} cannot be read: {e}",
                path.display()
            ));
        }
    };
    let events: Vec<Box<serde_json::value::RawValue>> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(|(i, l)| match serde_json::from_str(l) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping invalid JSON line");
                None
            }
        })
        .collect();
    if events.is_empty() {
        return SourceEnd::Failed(format!("the replay file {} has no events", path.display()));
    }
    let mut tick = tokio::time::interval(interval(rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        for e in &events {
            tick.tick().await;
            if !sink.publish(e.clone()).await {
                return SourceEnd::SinkClosed;
            }
        }
        if !looping {
            return SourceEnd::Failed(format!(
                "the replay of {} has ended (looping = false)",
                path.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_evicts_and_reports_loss() {
        let hub = Hub::new(4, 8);
        for i in 0..10 {
            assert_eq!(hub.publish(&serde_json::json!({"i": i})), i);
        }
        let c = hub.catch_up(3);
        assert_eq!(c.lost, 3); // 3, 4, 5 evicted
        assert_eq!(
            c.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![6, 7, 8, 9]
        );
        let c = hub.catch_up(8);
        assert_eq!((c.lost, c.frames.len(), c.next), (0, 2, 10));
        let c = hub.catch_up(99);
        assert_eq!((c.lost, c.frames.len()), (0, 0));
    }

    #[test]
    fn synthetic_events_are_valid_market_data() {
        let mut g = Synthetic::new("BTC-USD", 1, 0);
        let a = g.next_event();
        let b = g.next_event();
        assert_eq!(a["type"], "trade");
        assert_eq!(b["type"], "quote");
        assert!(b["ask"].as_f64().unwrap() > b["bid"].as_f64().unwrap());
    }
}
