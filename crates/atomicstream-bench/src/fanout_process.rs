//! Row family 4c: fan-out to 10,000 paid sessions with the server in its own process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use x402_types::ServerMessage;

use crate::process::{ServerProcess, cpu_secs, open_paid, rss_kib};
use crate::report::{Report, percentile};

/// 10,000 paid sessions at 10 events/s each (100,000 events/s out of the
/// server), the server in its own process: every session must receive every
/// event of a 100-event window, in order; latency is the event's publication
/// stamp to its receipt.
/// One round of the fan-out with the server in its own process.
struct FanoutRound {
    open_secs: f64,
    failed: usize,
    count: u64,
    out_of_order: usize,
    unfinished: usize,
    p50: f64,
    p99: f64,
    /// Server (user, system) and clients (user, system) in cores.
    cpu: (f64, f64, f64, f64),
    rss_mib: f64,
}

async fn fanout_round(sessions: usize, window: u64) -> Result<FanoutRound, String> {
    let server = ServerProcess::start("f", "{ kind = \"synthetic\", rate = 10.0 }").await?;
    let t = Instant::now();
    let (sockets, failed) = open_paid(&server.base, "f", sessions, 8).await;
    let open_secs = t.elapsed().as_secs_f64();
    // The window starts a second after every socket is open.
    let latest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut readers = Vec::with_capacity(sockets.len());
    for mut ws in sockets {
        let (latest, start) = (latest.clone(), start.clone());
        readers.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut lats: Vec<f32> = Vec::with_capacity(window as usize);
            let mut next_expected: Option<u64> = None;
            let mut in_order = true;
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(ServerMessage::Event(e)) = ServerMessage::parse(t.as_str()) else {
                    continue;
                };
                let a = start.load(Relaxed);
                if e.seq < a {
                    // Only before the window: one shared atomic for 10,000 tasks.
                    latest.fetch_max(e.seq, Relaxed);
                    continue;
                }
                if e.seq >= a + window {
                    break;
                }
                if next_expected.is_some_and(|x| x != e.seq)
                    || (next_expected.is_none() && e.seq != a)
                {
                    in_order = false;
                }
                next_expected = Some(e.seq + 1);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64() * 1e3)
                    .unwrap_or(0.0);
                lats.push((now_ms - e.ts.unwrap_or(0) as f64) as f32);
            }
            (lats, in_order)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(server.pid()).unwrap_or(0);
    start.store(
        latest.load(std::sync::atomic::Ordering::Relaxed) + 3,
        std::sync::atomic::Ordering::Relaxed,
    );
    let t = Instant::now();
    let (server_cpu0, me_cpu0) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    let deadline = Duration::from_secs(window / 10 + 15);
    let mut lats: Vec<f64> = Vec::with_capacity(sessions * window as usize);
    let (mut count, mut out_of_order, mut unfinished) = (0u64, 0usize, 0usize);
    for h in readers {
        let left = deadline.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, h).await {
            Ok(Ok((l, ok))) => {
                count += l.len() as u64;
                out_of_order += usize::from(!ok);
                lats.extend(l.into_iter().map(f64::from));
            }
            _ => unfinished += 1,
        }
    }
    let rss = rss_kib(server.pid()).unwrap_or(0).max(before);
    let secs = t.elapsed().as_secs_f64();
    let (server_cpu1, me_cpu1) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    drop(server);
    let cores = |a: (f64, f64), b: (f64, f64)| ((b.0 - a.0) / secs, (b.1 - a.1) / secs);
    let (su, ss) = cores(server_cpu0, server_cpu1);
    let (cu, cs) = cores(me_cpu0, me_cpu1);
    Ok(FanoutRound {
        open_secs,
        failed,
        count,
        out_of_order,
        unfinished,
        p50: percentile(&mut lats, 0.5),
        p99: percentile(&mut lats, 0.99),
        cpu: (su, ss, cu, cs),
        rss_mib: rss as f64 / 1024.0,
    })
}

/// 10,000 paid sessions at 10 events/s each (100,000 events/s out of the
/// server), the server in its own process: every session must receive every
/// event of a 100-event window, in order; latency is the event's publication
/// stamp to its receipt. Several rounds, each with a fresh server and fresh
/// sessions; the median round is reported with the spread.
pub(crate) async fn bench_fanout_process(
    r: &mut Report,
    sessions: usize,
    window: u64,
    rounds: usize,
) {
    let mut done = Vec::new();
    for _ in 0..rounds {
        match fanout_round(sessions, window).await {
            Ok(x) => done.push(x),
            Err(e) => {
                r.plain(
                    &format!("4c. fan-out to {sessions}: {e}"),
                    f64::NAN,
                    "",
                    "server",
                    Some(false),
                );
                return;
            }
        }
    }
    let expected = sessions as u64 * window * rounds as u64;
    let count: u64 = done.iter().map(|x| x.count).sum();
    let bad: usize = done
        .iter()
        .map(|x| x.out_of_order + x.unfinished + x.failed)
        .sum();
    let col = |f: &dyn Fn(&FanoutRound) -> f64| -> Vec<f64> { done.iter().map(f).collect() };
    let med = |v: Vec<f64>| percentile(&mut v.clone(), 0.5);
    let p99s = col(&|x| x.p99);
    let p99 = med(p99s.clone());
    let (su, ss, cu, cs) = (
        med(col(&|x| x.cpu.0)),
        med(col(&|x| x.cpu.1)),
        med(col(&|x| x.cpu.2)),
        med(col(&|x| x.cpu.3)),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s (server process): opened in"),
        med(col(&|x| x.open_secs)),
        "s",
        "report (median)",
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: events delivered"),
        count as f64,
        "events",
        &format!(
            "no loss ({count}/{expected} over {rounds} rounds; {bad} sessions failed, out of order or unfinished)"
        ),
        Some(count == expected && bad == 0),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: latency p50"),
        med(col(&|x| x.p50)),
        "ms",
        "report (median of rounds)",
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: latency p99"),
        p99,
        "ms",
        &format!(
            "p99 < 100 ms (median of {rounds} rounds; round p99s {})",
            p99s.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(p99 < 100.0),
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server CPU (cores busy)"),
        su + ss,
        "cores",
        &format!(
            "report, median (user {su:.2}, system {ss:.2}; the clients: user {cu:.2}, system {cs:.2})"
        ),
        None,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server resident set"),
        done.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
        "MiB",
        "report (largest round)",
        None,
    );
}
