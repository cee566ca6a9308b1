//! Row family 2: the client receive path against a bare tokio-tungstenite client.

use std::sync::Arc;
use std::time::Instant;

use atomicstream::ClientEvent;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use x402_server::Limits;
use x402_types::ServerMessage;

use crate::fixture::{
    Local, bench_client, event_frame, local_server, paid_socket, payload, signer_payer, stream_cfg,
};
use crate::report::{Report, percentile};

/// The receive rows move up to 1.5 GB/s through memory, where single rounds
/// spread most on this machine: more (short) rounds for their medians.
const RECEIVE_ROUNDS: usize = 9;

/// The `n` event frames of `size` bytes the receive rows publish, encoded
/// beforehand: publishing them costs the server no encoding, so the rows
/// measure the clients rather than the publisher (which, encoding 64 KiB
/// payloads on the same two cores, was the bottleneck both clients waited on).
fn frames(size: usize, n: u64) -> Arc<Vec<x402_server::Utf8Bytes>> {
    Arc::new(
        (0..n)
            .map(|i| event_frame(i, &payload(size, i)).into())
            .collect(),
    )
}

/// Publishes the frames into stream `id` (a fresh one: sequence numbers from 0)
/// as fast as possible.
fn burst(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> tokio::task::JoinHandle<()> {
    let hub = local.server_state.streams.get(id).map(|e| e.hub.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(hub) = hub {
            for (seq, f) in frames.iter().enumerate() {
                hub.push(seq as u64, f.clone());
            }
        }
    })
}

async fn receive_bare(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> Received {
    let n = frames.len() as u64;
    let http = reqwest::Client::new();
    let mut ws = paid_socket(&http, &signer_payer(), &local.base, id).await;
    let _hello = ws.next().await;
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    let pubt = burst(local, id, frames);
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                // What a bare client does with a frame: parse it into a Value.
                if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                    && v.get("type").and_then(Value::as_str) == Some("event")
                {
                    got += 1;
                    bytes += t.len() as u64;
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    let r = Received::since(t, cpu, got, bytes);
    let _ = pubt.await;
    r
}

async fn receive_ours(
    local: &Local,
    id: &str,
    frames: Arc<Vec<x402_server::Utf8Bytes>>,
) -> Received {
    let n = frames.len() as u64;
    let client = bench_client(local);
    let mut s = client.open(id).await.unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    let pubt = burst(local, id, frames);
    let (mut got, mut bytes) = (0u64, 0u64);
    let mut envelope = None;
    while got < n {
        match s.next().await {
            Some(ClientEvent::Data(e)) => {
                got += 1;
                // The frame's size on the wire: the data plus the event envelope
                // (measured once; serializing every event again would bill the
                // measurement to our client).
                let data = e.data.get().len() as u64;
                let env = *envelope
                    .get_or_insert_with(|| ServerMessage::Event(e).to_json().len() as u64 - data);
                bytes += data + env;
            }
            Some(ClientEvent::Ended(_)) | None => break,
            _ => {}
        }
    }
    let r = Received::since(t, cpu, got, bytes);
    let _ = pubt.await;
    r
}

/// CPU time (user and system, nanoseconds) the calling thread has used, from
/// `/proc/thread-self/schedstat` (exact, where `stat` counts 10 ms ticks).
/// `None` where the kernel does not keep it (the CPU row then reads NaN).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
}

/// One client's round: its rates and its thread's CPU per event.
struct Received {
    events_per_sec: f64,
    bytes_per_sec: f64,
    /// Microseconds; NaN where the thread's CPU time is not known.
    cpu_us: f64,
}

impl Received {
    /// `events` and `bytes` received since `start`, when the thread had used
    /// `cpu` ([`thread_cpu_ns`]).
    fn since(start: Instant, cpu: Option<u64>, events: u64, bytes: u64) -> Received {
        let secs = start.elapsed().as_secs_f64();
        let cpu_us = match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e3 / events.max(1) as f64,
            _ => f64::NAN,
        };
        Received {
            events_per_sec: events as f64 / secs,
            bytes_per_sec: bytes as f64 / secs,
            cpu_us,
        }
    }
}

/// Runs a client on a thread of its own, on a single-thread runtime of its
/// own (its tasks, such as our driver, run there too), and waits for it.
fn client_thread<F, Fut, T>(name: &str, client: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(s, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a client runtime")
                    .block_on(client())
            })
            .expect("a client thread")
            .join()
            .expect("the client thread")
    })
}

pub(crate) async fn bench_receive(r: &mut Report, size: usize, n: u64) {
    let limits = Limits {
        replay_buffer: n as usize + 10,
        send_queue: 4096,
        max_frame_bytes: 1 << 20,
        // The server as an operator of large events sets it up: several
        // frames to a write. With the default 16 KiB, each ~64 KiB frame is a
        // write of its own, and the one socket's task (about 48 us of server
        // CPU per event) is slower than either client (25-35 us): the row then
        // measures the server, both clients wait on it, and it sits at parity
        // whatever the clients cost. Both clients read the same server.
        write_batch_bytes: 256 * 1024,
        ..Limits::default()
    };
    let ids: Vec<String> = (0..2 * RECEIVE_ROUNDS).map(|i| format!("r{i}")).collect();
    let local = local_server(ids.iter().map(|i| stream_cfg(i, 3600)).collect(), limits).await;
    let frames = frames(size, n);
    // Alternate the two clients round by round; report medians and the
    // spread of the per-round ratios (machine noise moves single rounds).
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for round in 0..RECEIVE_ROUNDS {
        // Each client runs on a thread of its own with its own single-thread
        // runtime, as a client process would: the server's runtime workers
        // serve the server only. (Before, our driver shared those workers with
        // the server's socket tasks while the bare client had the main thread
        // to itself.)
        let (b, o) = (&ids[2 * round], &ids[2 * round + 1]);
        bare.push(client_thread("bare client", || {
            receive_bare(&local, b, frames.clone())
        }));
        ours.push(client_thread("our client", || {
            receive_ours(&local, o, frames.clone())
        }));
    }
    let label = match size {
        0..=100 => "~100 B",
        101..=8192 => "~4 KiB",
        _ => "~64 KiB",
    };
    let base_name = "bare tokio-tungstenite client parsing into serde_json::Value";
    let target = if size > 100 { 1.0 } else { 0.9 };
    let col = |v: &[Received], f: fn(&Received) -> f64| -> Vec<f64> { v.iter().map(f).collect() };
    r.rounds(
        &format!("2. client receive, events/s ({label})"),
        &col(&ours, |x| x.events_per_sec),
        "events/s",
        base_name,
        &col(&bare, |x| x.events_per_sec),
        target,
    );
    r.rounds(
        &format!("2. client receive, bytes/s ({label})"),
        &col(&ours, |x| x.bytes_per_sec),
        "B/s",
        base_name,
        &col(&bare, |x| x.bytes_per_sec),
        target,
    );
    // The CPU each client's thread used per event: what the throughput rows
    // cost, without the scheduling noise of two cores shared with the server.
    // Target: within 5% of the bare client's (its spread between runs).
    r.cost_ratio(
        &format!("2. client CPU per event, us ({label})"),
        percentile(&mut col(&ours, |x| x.cpu_us), 0.5),
        "us",
        &format!("{base_name}, its thread"),
        percentile(&mut col(&bare, |x| x.cpu_us), 0.5),
        1.05,
    );
}
